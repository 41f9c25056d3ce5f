"""Models trained for real, but tiny, once per session: every pipeline of a planned tiny phantom.

Trained for one epoch of two iterations (fast preset), so their predictions are poor but they
are real checkpoints in a real results layout, which is what loading, ensembling, combining and
exporting are tested on. The cascade is emitted by hand (the tiny phantom is too small for the
planner to emit it): stage 1 on a grid twice as coarse in-plane, both stages from the template.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from liverseg.data.phantom import generate_dataset
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.planning.plans import PLANS_FILE, Plan, save_plan
from liverseg.preprocessing.run import preprocess_dataset
from liverseg.training.run import train

DATASET = "Dataset951_PredictPhantom"
TRAINED = {"multiclass": (0, 1), "dual_binary": (0,), "cascade": (0,)}
QUICK = {"epochs": 1, "iterations_per_epoch": 2, "validation_iterations": 1, "batch_size": 2, "num_workers": 0,
         "device": "cpu"}


@dataclass(frozen=True)
class Trained:
    """The session's stores, trained dataset and held-out images."""

    raw: Path
    preprocessed: Path
    results: Path
    plan: Plan
    heldout: Path  # imagesTr of 3 phantoms the models never saw (seed 1), nnU-Net named
    dataset: str = DATASET

    @property
    def dataset_dir(self) -> Path:
        """The dataset's results folder."""
        return self.results / DATASET

    def env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point the three store variables at this session's stores."""
        for name, path in (("RAW", self.raw), ("PREPROCESSED", self.preprocessed), ("RESULTS", self.results)):
            monkeypatch.setenv(f"LIVERSEG_{name}", str(path))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, emit_cascade) -> Trained:
    """Plan a 5-case tiny phantom, train every pipeline (folds in TRAINED) and generate held-out images."""
    root = tmp_path_factory.mktemp("predict_stores")
    stores = {name: root / name for name in ("raw", "preprocessed", "results")}
    with pytest.MonkeyPatch.context() as patch:
        for name, path in stores.items():
            path.mkdir()
            patch.setenv(f"LIVERSEG_{name.upper()}", str(path))
        generate_dataset(stores["raw"] / DATASET, 5, size="tiny")
        plan = emit_cascade(plan_dataset(DATASET, num_workers=1, preset="fast", verify=False).plan)
        save_plan(plan, stores["preprocessed"] / DATASET / PLANS_FILE)
        preprocess_dataset(stores["raw"] / DATASET, [plan.preprocessing["lowres"]], stores["preprocessed"] / DATASET)
        for pipeline, folds in TRAINED.items():
            for fold in folds:
                # the final validation of multiclass fold 0 is what predictions are compared with
                train(DATASET, pipeline, fold, final_validation=(pipeline, fold) == ("multiclass", 0), **QUICK)
        heldout = generate_dataset(root / "heldout", 3, seed=1, size="tiny") / "imagesTr"
    return Trained(stores["raw"], stores["preprocessed"], stores["results"], plan, heldout)


@pytest.fixture
def trained_env(trained, monkeypatch) -> Trained:
    """The trained session stores in the environment of one test."""
    trained.env(monkeypatch)
    return trained
