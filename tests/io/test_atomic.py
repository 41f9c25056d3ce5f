"""Atomic writes and the clean-up of temporaries that killed writers leave behind."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from liverseg.io.atomic import atomic_output, read_json, remove_stale_temporaries, save_figure, write_json


def test_atomic_output_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("killed")
    assert read_json(target) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = tmp_path / f".tmp{int(finished.stdout)}_checkpoint_latest.pt"
    mine = tmp_path / f".tmp{os.getpid()}_checkpoint_best.pt"
    other = tmp_path / "notes.txt"
    for path in (dead, mine, other):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])


def test_save_figure_writes_a_png_and_closes_the_figure_even_when_writing_fails(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1], [1, 0])
    written = save_figure(figure, tmp_path / "plot.png", dpi=50)
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.number not in plt.get_fignums()
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]

    broken = plt.figure(figsize=(2, 2))
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(OSError):
        save_figure(broken, tmp_path / "a_file" / "plot.png")
    assert broken.number not in plt.get_fignums()
