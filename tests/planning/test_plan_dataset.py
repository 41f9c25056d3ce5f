"""liverseg_plan end to end on a tiny phantom dataset: files, reruns, hand edits, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from liverseg.cli.plan import main
from liverseg.data.phantom import generate_dataset
from liverseg.data.splits import read_splits
from liverseg.planning.plans import load_plan
from liverseg.preprocessing.run import preprocessed_cases

DATASET = "Dataset901_TinyPhantom"


@pytest.fixture
def tiny(stores):
    generate_dataset(stores["raw"] / DATASET, 4, size="tiny")
    return stores["preprocessed"] / DATASET


def test_plan_writes_plan_figure_folds_and_preprocessed_cases(tiny, capsys):
    assert main(["-d", "TinyPhantom", "-np", "1", "--preset", "fast"]) == 0
    out = capsys.readouterr().out
    assert "recommended:" in out and "dual_binary" in out
    plan = load_plan(tiny / "plans.json")
    assert (tiny / "plans.png").stat().st_size > 10_000 and (tiny / "fingerprint.json").is_file()
    splits = read_splits(tiny / "splits.json")
    assert len(splits) == 4  # four cases: one fold per case
    cases = sorted(f"phantom_{i:03d}" for i in range(4))
    assert all(sorted(f["train"] + f["val"] + f.get("inner_val", [])) == cases for f in splits)
    for spec in plan.specs_in_use().values():
        folder = tiny / spec.folder_name
        assert preprocessed_cases(folder) == cases
        properties = json.loads((folder / f"{cases[0]}.json").read_text())
        assert np.allclose(properties["spacing_target"], spec.target_spacing)
        image = np.load(folder / f"{cases[0]}.npy", mmap_mode="r")
        assert image.shape[1:] == tuple(properties["shape_after_resampling"])


def test_rerun_replaces_the_plan_and_keeps_the_folds(tiny):
    assert main(["-d", DATASET, "-np", "1", "--no-preprocess"]) == 0
    first_splits = (tiny / "splits.json").read_text()
    assert main(["-d", DATASET, "-np", "1", "--no-preprocess", "--preset", "fast", "--percentile", "80"]) == 0
    assert (tiny / "splits.json").read_text() == first_splits
    plan = load_plan(tiny / "plans.json")
    assert plan.planner.preset == "fast" and plan.planner.percentile == 80


def test_overrides_file_is_merged_and_a_hand_edited_plan_is_respected(tiny, tmp_path):
    overrides = tmp_path / "mine.json"
    overrides.write_text(json.dumps({"pipelines": {"multiclass": {"models": {"multiclass": {"batch_size": 3}}}}}))
    assert main(["-d", DATASET, "-np", "1", "--no-preprocess", "--preset", "fast", "-p", str(overrides)]) == 0
    assert load_plan(tiny / "plans.json").pipeline("multiclass").model("multiclass").batch_size == 3
    # Hand edit: a coarser in-plane grid for the shared full-resolution spec; --preprocess-only follows it.
    content = json.loads((tiny / "plans.json").read_text())
    content["preprocessing"]["fullres"]["target_spacing"][1:] = [2.0, 2.0]
    (tiny / "plans.json").write_text(json.dumps(content))
    assert main(["-d", DATASET, "-np", "1", "--preprocess-only"]) == 0
    spec = load_plan(tiny / "plans.json").preprocessing["fullres"]
    assert spec.target_spacing[1:] == (2.0, 2.0) and len(preprocessed_cases(tiny / spec.folder_name)) == 4


def test_bad_input_exits_with_a_message_and_no_traceback(tiny, tmp_path, capsys):
    overrides = tmp_path / "bad.json"
    overrides.write_text(json.dumps({"pipelines": {"dual_binary": {"models": {"tumor": {"batch_size": 2}}}}}))
    assert main(["-d", DATASET, "-np", "1", "--no-preprocess", "-p", str(overrides)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "unknown key 'tumor'" in err and "Traceback" not in err
    assert main(["-d", "NoSuchDataset", "--no-preprocess"]) == 2
    assert "no dataset 'NoSuchDataset'" in capsys.readouterr().err
    assert main(["-d", DATASET, "--preprocess-only"]) == 2  # no plans.json yet
    assert "no plan yet" in capsys.readouterr().err
