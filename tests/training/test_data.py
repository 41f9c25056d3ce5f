"""training_batches on a real preprocessed tiny phantom: every pipeline's models, workers, seeding, clean exit."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os

import numpy as np
import pytest
import torch

from liverseg.errors import LiversegError
from liverseg.training.background import worker_pids
from liverseg.training.data import is_anisotropic, is_mri, model_mirror_axes, training_batches

MODELS = [("multiclass", "multiclass"), ("dual_binary", "liver"), ("dual_binary", "tumour"),
          ("cascade", "coarse"), ("cascade", "fine")]


def _args(phantom, pipeline: str, model: str):
    plan, out, fold = phantom
    m = plan.pipeline(pipeline).model(model)
    return plan, m, out / plan.preprocessing[m.preprocessing].folder_name, fold


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("pipeline, model_name", MODELS)
def test_batches_have_the_documented_layout(phantom, pipeline, model_name, workers):
    plan, model, folder, fold = _args(phantom, pipeline, model_name)
    patch = tuple(model.topology.patch_size)
    with training_batches(plan, model, folder, fold["train"], fold["val"], seed=0, num_workers=workers) as (train, val):
        pids = [*worker_pids(train.batches), *worker_pids(val.batches)]
        assert len(pids) == (0 if workers == 0 else workers + 1)  # validation runs in one worker
        for batch, cases in ((next(train), fold["train"]), (next(train), fold["train"]), (next(val), fold["val"])):
            assert set(batch) == {"data", "target", "mask", "keys"}
            assert batch["data"].shape == (model.batch_size, 1, *patch) and batch["data"].dtype == torch.float32
            assert torch.isfinite(batch["data"]).all()
            target = batch["target"]
            assert target.shape == (model.batch_size, 1, *patch) and target.dtype == torch.int64
            assert 0 <= int(target.min()) and int(target.max()) <= model.num_classes - 1
            assert len(batch["keys"]) == model.batch_size and set(batch["keys"]) <= set(cases)
            if model.loss_mask_dilation_mm is None:
                assert batch["mask"] is None
            else:
                mask = batch["mask"]
                assert mask.shape == target.shape and mask.dtype == torch.bool
                # tumour lies inside the liver, far from the edge of the dilated mask: augmentation keeps it inside
                assert mask[target == 1].all() and mask.any() and not mask.all()
    assert not multiprocessing.active_children()
    assert not any(_alive(pid) for pid in pids)


def test_tumour_batches_are_mostly_on_lesions(phantom):
    plan, model, folder, fold = _args(phantom, "dual_binary", "tumour")
    with training_batches(plan, model, folder, fold["train"], fold["val"], seed=1, num_workers=0) as (train, _):
        with_tumour = [bool((next(train)["target"] == 1).flatten(1).any(1).all()) for _ in range(10)]
    # 90% lesion centres, stratified per batch of 2: every batch has a lesion patch; augmentation may move it out
    # of a patch now and then, so most (not all) batches show tumour in both patches
    assert sum(with_tumour) >= 5


def test_zero_workers_are_deterministic_given_the_seeds(phantom):
    plan, model, folder, fold = _args(phantom, "multiclass", "multiclass")

    def run(seed: int) -> list[dict]:
        np.random.seed(seed)
        torch.manual_seed(seed)
        with training_batches(plan, model, folder, fold["train"], fold["val"], seed=seed, num_workers=0) as (train, val):
            return [next(train) for _ in range(3)] + [next(val)]

    first, second, other = run(11), run(11), run(12)
    for a, b in zip(first, second):
        assert a["keys"] == b["keys"] and torch.equal(a["data"], b["data"]) and torch.equal(a["target"], b["target"])
    assert any(not torch.equal(a["data"], c["data"]) for a, c in zip(first, other))


def test_validation_batches_do_not_depend_on_the_number_of_workers(phantom):
    plan, model, folder, fold = _args(phantom, "dual_binary", "tumour")
    cases = fold["train"] + fold["val"]
    batches = {}
    for workers in (0, 2):
        with training_batches(plan, model, folder, fold["train"], cases, seed=3, num_workers=workers) as (_, val):
            batches[workers] = [next(val) for _ in range(4)]
    for a, b in zip(batches[0], batches[2]):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["target"], b["target"])
        assert torch.equal(a["mask"], b["mask"])


def test_batch_size_override_and_no_validation_cases(phantom):
    plan, model, folder, fold = _args(phantom, "dual_binary", "liver")
    with training_batches(plan, model, folder, fold["train"], [], seed=0, num_workers=0, batch_size=3) as (train, val):
        assert next(train)["data"].shape[0] == 3
        assert list(val) == []


def test_augmentation_settings_follow_the_grid_and_the_channels(phantom):
    plan, model, _, _ = _args(phantom, "multiclass", "multiclass")
    assert is_anisotropic(plan.preprocessing[model.preprocessing].target_spacing)  # tiny phantom: ~3.1 x 1.0 x 1.0 mm
    assert is_anisotropic((2.0, 1.0, 0.8)) and not is_anisotropic((1.9, 1.0, 1.0)) and not is_anisotropic((1.0, 1.0, 1.0))
    assert is_mri(plan)
    assert not is_mri(dataclasses.replace(plan, channel_names={"0": "CT"}))


def test_mirroring_follows_the_plan_and_the_grid(phantom):
    plan, liver, _, _ = _args(phantom, "dual_binary", "liver")
    _, tumour, _, _ = _args(phantom, "dual_binary", "tumour")
    thick, isotropic = plan.preprocessing[tumour.preprocessing].target_spacing, (1.0, 1.0, 1.0)
    assert liver.mirroring == "none" and model_mirror_axes(liver, thick) == () and model_mirror_axes(liver, isotropic) == ()
    assert model_mirror_axes(tumour, thick) == (1, 2) and model_mirror_axes(tumour, isotropic) == (0, 1, 2)
    _, one_slice, _, _ = _args(phantom, "multiclass_2d", "multiclass")  # single slices: never along z
    assert model_mirror_axes(one_slice, isotropic) == (1, 2)


def test_missing_preprocessed_data_is_a_clear_error(phantom, tmp_path):
    plan, model, _, fold = _args(phantom, "multiclass", "multiclass")
    with pytest.raises(LiversegError, match="liverseg_plan"):
        with training_batches(plan, model, tmp_path / "nothing", fold["train"], fold["val"], seed=0, num_workers=0):
            pass
