"""Two pipelines trained for real, but tiny, on both folds of a 4-case phantom, once per session.

The folds are written before planning (two folds of two validation cases each; the planner keeps
an existing splits.json), so the cross-validation covers every case with two folds. Each model
trains for one epoch of one iteration: the predictions are poor, but they come from real
checkpoints in a real results layout, which is what model selection runs on. Tests that write
(cross-validation folders, inference.json) get a private copy of the results store.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from liverseg.data.phantom import generate_dataset
from liverseg.data.splits import make_splits, read_splits
from liverseg.io.atomic import write_json
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.training.run import train

DATASET = "Dataset961_SelectPhantom"
PIPELINES = ("multiclass", "dual_binary")
QUICK = {"epochs": 1, "iterations_per_epoch": 1, "validation_iterations": 0, "batch_size": 2, "num_workers": 0,
         "device": "cpu", "final_validation": False}


@dataclass(frozen=True)
class Trained:
    """The session's stores and its two folds."""

    raw: Path
    preprocessed: Path
    results: Path
    splits: list[dict[str, list[str]]]
    dataset: str = DATASET

    @property
    def dataset_dir(self) -> Path:
        """The dataset's results folder."""
        return self.results / DATASET


@pytest.fixture(scope="session")
def selection_trained(tmp_path_factory) -> Trained:
    """A 4-case tiny phantom in two folds with multiclass and dual_binary trained on both."""
    root = tmp_path_factory.mktemp("selection_stores")
    stores = {name: root / name for name in ("raw", "preprocessed", "results")}
    with pytest.MonkeyPatch.context() as patch:
        for name, path in stores.items():
            path.mkdir()
            patch.setenv(f"LIVERSEG_{name.upper()}", str(path))
        raw = generate_dataset(stores["raw"] / DATASET, 4, size="tiny")
        cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (raw / "imagesTr").iterdir())
        write_json(stores["preprocessed"] / DATASET / "splits.json", make_splits(cases, num_folds=2))
        plan_dataset(DATASET, num_workers=1, preset="fast", verify=False)
        for pipeline in PIPELINES:
            for fold in (0, 1):
                train(DATASET, pipeline, fold, **QUICK)
    splits = read_splits(stores["preprocessed"] / DATASET / "splits.json")
    return Trained(stores["raw"], stores["preprocessed"], stores["results"], splits)


@pytest.fixture
def trained_copy(selection_trained, tmp_path, monkeypatch) -> Trained:
    """The session's stores in the environment, with a private copy of the results store."""
    results = tmp_path / "results"
    shutil.copytree(selection_trained.results, results)
    for name, path in (("RAW", selection_trained.raw), ("PREPROCESSED", selection_trained.preprocessed),
                       ("RESULTS", results)):
        monkeypatch.setenv(f"LIVERSEG_{name}", str(path))
    return Trained(selection_trained.raw, selection_trained.preprocessed, results, selection_trained.splits)
