"""docs/getting_started.md, run as written on tiny data: phantom -> plan -> train -> predict -> evaluate.

The ```bash blocks of the sections in :data:`RUN` are executed line by line, in document order, by
each command's own ``main(argv)`` (the function its console script calls) in a temporary folder with
the three stores of the ``stores`` fixture. Changed on the way, and nothing else:

- :data:`SMALLER`: the dataset size, to tiny phantoms (the document says ``--size tiny`` is for
  tests) and fewer cases;
- :data:`QUICK`: training flags appended for a run of seconds; the first ones are what the document
  itself gives for a check that everything runs, the ``--continue`` line asks for one more epoch
  so that the resumption is seen to continue the run.

Sections with shell blocks that are not run are listed in :data:`NOT_RUN` with the reason (their
command lines are still parsed by test_documented_commands.py).
"""
from __future__ import annotations

import configparser
import importlib
import logging
import os
import re
import shlex
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from liverseg.io.atomic import read_json

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = REPO / "docs" / "getting_started.md"

RUN = ["First run on synthetic data", "Train, predict, evaluate"]
NOT_RUN = {
    "Install": "installs the package; the test runs in the installed environment",
    "Where files go": "sets the stores; the stores fixture points them at temporary folders",
    "Your own data": "needs the ATLAS download and days of training",
    "The demo: everything in one command": "takes ten minutes; tests/demo runs liverseg_demo on tiny phantoms",
}
#: (as written, as run): tiny phantoms and fewer cases. Each must occur in the document.
SMALLER = [("-n 20 --size small", "-n 4 --size tiny"), ("-n 5 --size small", "-n 3 --size tiny")]
#: Appended to the training lines: (line contains, flags).
QUICK = [("--continue", "--epochs 2 --iters-per-epoch 2"), ("liverseg_train", "--epochs 1 --iters-per-epoch 2")]


def shell_blocks(text: str) -> dict[str, list[str]]:
    """Section heading (##) -> the lines of its ```bash blocks (comments and blank lines dropped)."""
    blocks: dict[str, list[str]] = {}
    section, fence = "", None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        elif fence == "bash":
            if shlex.split(line, comments=True):
                blocks.setdefault(section, []).append(line)
        elif fence is None and line.startswith("## "):
            section = line[3:].strip()
    return blocks


def expand(line: str) -> list[str]:
    """The words of a shell line with ``$VAR`` taken from the environment (the stores)."""
    def value(match: re.Match) -> str:
        assert match.group(1) in os.environ, f"getting_started.md uses ${match.group(1)}, which the test does not set"
        return os.environ[match.group(1)]
    return shlex.split(re.sub(r"\$\{?(\w+)\}?", value, line), comments=True)


def as_run(line: str) -> str:
    """The documented line with the substitutions of :data:`SMALLER` and the flags of :data:`QUICK`."""
    line = line.split(" #")[0].rstrip()
    for written, run in SMALLER:
        line = line.replace(written, run)
    for contains, flags in QUICK:
        if contains in line:
            return f"{line} {flags}"
    return line


def console_scripts() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    entries = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.split(":")[0].strip() for name, target in (e.split("=") for e in entries)}


def test_every_section_with_commands_is_run_or_says_why_not():
    blocks = shell_blocks(DOCUMENT.read_text(encoding="utf-8"))
    assert set(blocks) == set(RUN) | set(NOT_RUN)
    text = "\n".join(line for section in RUN for line in blocks[section])
    for written, _ in SMALLER:
        assert written in text, f"'{written}' is no longer in the document: update SMALLER"


def test_getting_started_runs_as_written(stores, tmp_path, monkeypatch, capsys):
    blocks = shell_blocks(DOCUMENT.read_text(encoding="utf-8"))
    lines = [line for section in RUN for line in blocks[section]]
    scripts = console_scripts()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    root, handlers, threads = logging.getLogger(), logging.getLogger().handlers[:], torch.get_num_threads()
    try:
        for line in lines:
            program, *argv = expand(as_run(line))
            assert program in scripts, f"getting_started.md runs {program}, not a console script of setup.cfg"
            code = importlib.import_module(scripts[program]).main(argv)
            assert code == 0, f"`{as_run(line)}` exited with {code}"
    finally:  # what the commands set for their process: logging handlers, torch threads (liverseg_predict)
        root.handlers[:] = handlers
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out

    raw = stores["raw"] / "Phantom"
    assert len(list((raw / "imagesTr").glob("*_0000.nii.gz"))) == 4 and (raw / "preview.png").is_file()
    for name in ("fingerprint.json", "plans.json", "splits.json"):
        assert (stores["preprocessed"] / "Phantom" / name).is_file(), name
    for model in ("liver", "tumour"):
        fold = stores["results"] / "Phantom" / "dual_binary" / model / "fold_0"
        checkpoint = torch.load(fold / "checkpoint_latest.pt", map_location="cpu", weights_only=False)
        assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2, model
        assert "continuing from" in (fold / "log.txt").read_text(encoding="utf-8")

    images = sorted((work / "heldout" / "PhantomTest" / "imagesTr").glob("*_0000.nii.gz"))
    cases = [p.name[: -len("_0000.nii.gz")] for p in images]
    assert len(cases) == 3
    for folder in ("preds", "preds_raw"):
        for case, image_path in zip(cases, images):
            image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(work / folder / f"{case}.nii.gz"))
            assert label.GetSize() == image.GetSize()
            np.testing.assert_allclose(label.GetSpacing(), image.GetSpacing(), atol=1e-6)
            np.testing.assert_allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(label.GetDirection(), image.GetDirection(), atol=1e-6)
            assert set(np.unique(sitk.GetArrayFromImage(label))) <= {0, 1, 2}
            assert (work / folder / f"{case}.lesions.json").is_file()
        assert (work / folder / "lesions.csv").is_file() and (work / folder / "cases.csv").is_file()
    for summary in ("summary.json", "summary_raw.json"):
        per_case = read_json(work / summary)["per_case"]
        assert sorted(row["case"] for row in per_case) == cases, summary
    comparison = printed[printed.index("A = summary_raw.json\nB = summary.json\n3 paired cases"):]  # liverseg_compare
    assert re.search(r"^\| liver_dice \| higher \| 3 \|", comparison, re.MULTILINE)
