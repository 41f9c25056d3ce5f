"""A real preprocessed tiny phantom with every pipeline emitted, shared by the data-pipeline tests."""
from __future__ import annotations


import pytest

from liverseg.data.phantom import generate_dataset
from liverseg.data.splits import read_splits
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.preprocessing.run import preprocess_dataset


@pytest.fixture(scope="session")
def phantom(tmp_path_factory, emit_cascade):
    """(plan with cascade, preprocessed dataset folder, fold 0) of a 4-case tiny phantom, fast preset."""
    root = tmp_path_factory.mktemp("stores")
    with pytest.MonkeyPatch.context() as env:
        for name in ("raw", "preprocessed", "results"):
            (root / name).mkdir()
            env.setenv(f"LIVERSEG_{name.upper()}", str(root / name))
        generate_dataset(root / "raw" / "Phantom", 4, size="tiny")
        plan = emit_cascade(plan_dataset("Phantom", num_workers=1, preset="fast").plan)
        out = root / "preprocessed" / "Phantom"
        preprocess_dataset(root / "raw" / "Phantom", [plan.preprocessing["lowres"]], out)
    return plan, out, read_splits(out / "splits.json")[0]
