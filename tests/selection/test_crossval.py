"""Cross-validation predictions of real tiny pipelines: which cases, which models, the real merge, resuming."""
from __future__ import annotations

import os

import numpy as np
import pytest

from liverseg.errors import LiversegError
from liverseg.inference.predictor import Predictor
from liverseg.io.atomic import read_json
from liverseg.io.dataset import RawDataset
from liverseg.io.images import read_image
from liverseg.selection.crossval import RECORD_FILE, check_raw_images, predict_crossval
from liverseg.training.checkpoint import BEST, LATEST


def _run(env, pipeline, **options):
    raw = RawDataset(env.raw / env.dataset)
    return predict_crossval(env.dataset_dir, pipeline, env.splits, [0, 1], raw, device="cpu", num_workers=0, **options)


def _stamps(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != RECORD_FILE}


def _npz(path):
    with np.load(path) as content:
        return content["probabilities"]


def test_each_fold_predicts_exactly_its_validation_cases_with_its_own_models(trained_copy):
    env = trained_copy
    result = _run(env, "multiclass")
    fold_of = {c: k for k, split in enumerate(env.splits) for c in split["val"]}
    assert result.cases == fold_of and sorted(result.predicted) == sorted(fold_of) and not result.failed
    expected = {f"{c}{ending}" for c in fold_of for ending in (".nii.gz", ".npz")} | {RECORD_FILE}
    assert {p.name for p in result.folder.iterdir()} == expected
    assert result.folder == env.dataset_dir / "multiclass" / "crossval"

    case = env.splits[1]["val"][0]
    image = RawDataset(env.raw / env.dataset).image_files(case)
    own, other = (Predictor.from_folder(env.dataset, "multiclass", folds=[k], tta=False, device="cpu",
                                        postprocessing="none").predict(image, keep_probabilities=True) for k in (1, 0))
    saved = _npz(result.folder / f"{case}.npz")
    assert saved.dtype == np.float16 and saved.shape == (3, *own.label.shape)
    np.testing.assert_array_equal(saved, own.probabilities)
    assert not np.array_equal(saved, other.probabilities)  # fold 0's models give other probabilities
    np.testing.assert_array_equal(read_image(result.folder / f"{case}.nii.gz")[0], own.label)


def test_dual_binary_is_predicted_with_its_real_merge(trained_copy):
    env = trained_copy
    result = _run(env, "dual_binary")
    case = env.splits[0]["val"][1]
    image = RawDataset(env.raw / env.dataset).image_files(case)
    merged = Predictor.from_folder(env.dataset, "dual_binary", folds=[0], tta=False, device="cpu",
                                   postprocessing="none").predict(image, keep_probabilities=True)
    label = read_image(result.folder / f"{case}.nii.gz")[0]
    np.testing.assert_array_equal(label, merged.label)
    saved = _npz(result.folder / f"{case}.npz").astype(np.float32)
    np.testing.assert_allclose(saved.sum(0), 1.0, atol=3e-3)  # [1 - pl, pl (1 - pt), pl pt]
    np.testing.assert_array_equal(saved, merged.probabilities.astype(np.float32))


def test_complete_cases_are_kept_and_changes_are_predicted_again(trained_copy):
    env = trained_copy
    first = _run(env, "multiclass")
    before = _stamps(first.folder)
    again = _run(env, "multiclass")
    assert again.predicted == [] and _stamps(first.folder) == before and again.cases == first.cases

    lost = env.splits[0]["val"][0]
    (first.folder / f"{lost}.nii.gz").unlink()  # an interrupted case: its label map is written last
    assert _run(env, "multiclass").predicted == [lost]

    record = read_json(first.folder / RECORD_FILE)
    assert record["folds"]["1"]["cases"] == sorted(env.splits[1]["val"]) and record["folds"]["1"]["tta"] is False
    (stamp,) = record["folds"]["1"]["models"]["multiclass"]
    checkpoint = env.dataset_dir / stamp["file"]
    assert checkpoint.parent.name == "fold_1" and checkpoint.name in (BEST, LATEST) and stamp["size"] == checkpoint.stat().st_size
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))  # retrained
    assert sorted(_run(env, "multiclass").predicted) == sorted(env.splits[1]["val"])

    with_tta = _run(env, "multiclass", tta=True)
    assert sorted(with_tta.predicted) == sorted(first.cases)
    assert read_json(first.folder / RECORD_FILE)["folds"]["0"]["tta"] is True


def test_missing_raw_images_are_named(trained_copy, tmp_path):
    raw = RawDataset(trained_copy.raw / trained_copy.dataset)
    with pytest.raises(LiversegError, match=r"phantom_009_0000.nii.gz: image not found; cross-validation predicts"):
        check_raw_images(raw, ["phantom_000", "phantom_009"])
