"""Atomic writes and the clean-up of temporaries that killed writers leave behind."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from liverseg.io.atomic import atomic_output, read_json, remove_stale_temporaries, write_json


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
