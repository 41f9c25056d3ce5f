"""PatchLoader on a real preprocessed tiny phantom: layout, labels and mask, ratios, must-contain, cascade crop, seeding."""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from liverseg.errors import LiversegError
from liverseg.preprocessing.locations import load_locations
from liverseg.training.augmentation import sampling_region_size
from liverseg.training.patch_loader import PatchLoader
from liverseg.training.sampler import case_probabilities


def _model(phantom, pipeline: str, model: str):
    plan, out, fold = phantom
    m = plan.pipeline(pipeline).model(model)
    return m, out / plan.preprocessing[m.preprocessing].folder_name, fold


def _case(folder: Path, case: str):
    data = np.load(folder / f"{case}.npy")
    seg = np.load(folder / f"{case}_seg.npy")
    properties = json.loads((folder / f"{case}.json").read_text())
    return data, seg, properties


def _padded_window(array: np.ndarray, centre, size) -> np.ndarray:
    """The window of ``size`` around ``centre`` of the last three axes, zero beyond the array (independent of cut_region)."""
    pad = max(size)
    padded = np.pad(array, [(0, 0)] * (array.ndim - 3) + [(pad, pad)] * 3)
    window = tuple(slice(c - s // 2 + pad, c - s // 2 + s + pad) for c, s in zip(centre, size))
    return padded[(Ellipsis, *window)]


def test_batches_hold_regions_with_target_and_mask_channels(phantom):
    model, folder, fold = _model(phantom, "dual_binary", "tumour")
    region = sampling_region_size(model.topology.patch_size, anisotropic=True)
    batch = next(PatchLoader(folder, fold["train"], model, region, seed=0))
    b = model.batch_size
    assert batch["data"].shape == (b, 1, *region) and batch["data"].dtype == np.float32
    assert batch["seg"].shape == (b, 2, *region) and batch["seg"].dtype == np.uint8
    assert set(np.unique(batch["seg"])) <= {0, 1}
    assert set(batch["keys"]) <= set(fold["train"]) and len(batch["kinds"]) == len(batch["centres"]) == b


def test_target_mask_and_image_equal_independent_crops_of_the_case(phantom):
    model, folder, fold = _model(phantom, "dual_binary", "tumour")
    region = sampling_region_size(model.topology.patch_size, anisotropic=True)
    loader = PatchLoader(folder, fold["train"], model, region, seed=1)
    distances, mixed = {}, 0
    for i in range(12):
        case_id = fold["train"][i % len(fold["train"])]
        sample = loader.sample(case_id)
        data, seg, properties = _case(folder, case_id)
        np.testing.assert_array_equal(sample.image, _padded_window(data, sample.centre, region))
        original = _padded_window(seg, sample.centre, region)
        np.testing.assert_array_equal(sample.seg[0], original == 2)  # the tumour model learns {2: 1}
        # independent mask: scipy's distance to liver or tumour over the whole case; nothing counts beyond the case
        if case_id not in distances:
            distances[case_id] = ndimage.distance_transform_edt(seg == 0, sampling=properties["spacing_after_resampling"])
        dilation = model.loss_mask_dilation_mm
        expected = _padded_window(distances[case_id] <= dilation, sample.centre, region)
        decided = _padded_window(np.abs(distances[case_id] - dilation) > 1e-3, sample.centre, region) | ~_padded_window(
            np.ones(seg.shape, dtype=bool), sample.centre, region)  # float32 rounding may go either way at the threshold
        np.testing.assert_array_equal(sample.seg[1].astype(bool)[decided], expected[decided])
        mixed += 0 < sample.seg[1].mean() < 1
        # patch_must_contain [1, 2]: the patch around the centre holds liver or tumour
        core = _padded_window(seg, sample.centre, model.topology.patch_size)
        assert np.isin(core, (1, 2)).any()
    assert mixed >= 6  # most regions reach beyond the 10 mm band around the liver


def test_liver_model_learns_liver_and_tumour_as_one_class(phantom):
    model, folder, fold = _model(phantom, "dual_binary", "liver")
    loader = PatchLoader(folder, fold["train"], model, model.topology.patch_size, seed=2)
    assert model.loss_mask_dilation_mm is None
    for _ in range(5):
        sample = loader.sample(fold["train"][0])
        _, seg, _ = _case(folder, fold["train"][0])
        assert sample.seg.shape[0] == 1
        np.testing.assert_array_equal(sample.seg[0], _padded_window(seg, sample.centre, model.topology.patch_size) > 0)


@pytest.mark.parametrize("model_name", ["multiclass", "liver"])
def test_realised_centre_kinds_match_the_plan_over_many_batches(phantom, model_name):
    model, folder, fold = _model(phantom, "multiclass" if model_name == "multiclass" else "dual_binary", model_name)
    loader = PatchLoader(folder, fold["train"], model, model.topology.patch_size, seed=3)
    kinds = [k for _ in range(400) for k in next(loader)["kinds"]]
    # cases are drawn uniformly, so a kind's expected share is its mean probability over the cases
    per_case = [case_probabilities(model.sampling, load_locations(folder / f"{c}_locations.npz")) for c in fold["train"]]
    expected = {k: np.mean([p.get(k, 0.0) for p in per_case]) for k in {k for p in per_case for k in p}}
    assert set(kinds) <= set(expected)
    n = len(kinds)
    for kind, p in expected.items():
        assert abs(kinds.count(kind) / n - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9, (kind, kinds.count(kind) / n, p)


def test_cascade_stage_two_samples_inside_the_jittered_liver_box(phantom):
    model, folder, fold = _model(phantom, "cascade", "fine")
    roi = model.roi
    patch = model.topology.patch_size
    loader = PatchLoader(folder, fold["train"], model, patch, seed=4)
    starts = set()
    for i in range(60):
        case_id = fold["train"][i % len(fold["train"])]
        data, seg, properties = _case(folder, case_id)
        sample = loader.sample(case_id)
        spacing = properties["spacing_after_resampling"]
        voxels = np.argwhere(np.isin(seg, roi.labels))
        gt_box = zip(voxels.min(0), voxels.max(0) + 1)
        for axis, ((start, stop), (lo, hi), n, s) in enumerate(zip(sample.box, gt_box, seg.shape, spacing)):
            widest = math.ceil((roi.margin_mm + roi.jitter_mm) / s)
            narrowest = math.floor((roi.margin_mm - roi.jitter_mm) / s)
            assert max(0, lo - widest) <= start <= max(0, lo - narrowest), (axis, start, lo)
            assert min(n, hi + narrowest) <= stop <= min(n, hi + widest), (axis, stop, hi)
        starts.add(sample.box)
        # the crop is the case: the region shows the image inside the box and zeros beyond it
        inside = np.zeros(seg.shape, dtype=bool)
        inside[tuple(slice(a, b) for a, b in sample.box)] = True
        expected = _padded_window(data * inside, sample.centre, patch)
        np.testing.assert_array_equal(sample.image, expected)
        assert all(a <= c < b for c, (a, b) in zip(sample.centre, sample.box))
    assert len(starts) > len(fold["train"])  # jittered: boxes differ between samples of one case


def test_a_masked_cascade_stage_counts_nothing_beyond_its_crop(phantom):
    model, folder, fold = _model(phantom, "cascade", "fine")
    model = dataclasses.replace(model, loss_mask_labels=(1, 2), loss_mask_dilation_mm=10.0)
    patch = model.topology.patch_size
    loader = PatchLoader(folder, fold["train"], model, patch, seed=8)
    case_id = fold["train"][0]
    _, seg, properties = _case(folder, case_id)
    distance = ndimage.distance_transform_edt(seg == 0, sampling=properties["spacing_after_resampling"])
    for _ in range(10):
        sample = loader.sample(case_id)
        inside = np.zeros(seg.shape, dtype=bool)
        inside[tuple(slice(a, b) for a, b in sample.box)] = True
        expected = _padded_window((distance <= 10.0) & inside, sample.centre, patch)
        decided = ~_padded_window(np.abs(distance - 10.0) <= 1e-3, sample.centre, patch)
        np.testing.assert_array_equal(sample.seg[1].astype(bool)[decided], expected[decided])


def test_same_seed_same_batches_and_each_worker_its_own_stream(phantom):
    model, folder, fold = _model(phantom, "multiclass", "multiclass")
    region = sampling_region_size(model.topology.patch_size, anisotropic=True)

    def batches(loader, n=3):
        return [next(loader) for _ in range(n)]

    first = batches(PatchLoader(folder, fold["train"], model, region, seed=5))
    second = batches(PatchLoader(folder, fold["train"], model, region, seed=5))
    for a, b in zip(first, second):
        assert a["keys"] == b["keys"] and a["centres"] == b["centres"] and np.array_equal(a["data"], b["data"])
    other = batches(PatchLoader(folder, fold["train"], model, region, seed=6))
    assert [b["centres"] for b in other] != [b["centres"] for b in first]
    worker0, worker1 = (PatchLoader(folder, fold["train"], model, region, seed=5) for _ in range(2))
    worker0.set_thread_id(0)
    worker1.set_thread_id(1)
    assert [b["centres"] for b in batches(worker0)] == [b["centres"] for b in first]
    assert [b["centres"] for b in batches(worker1)] != [b["centres"] for b in first]


def test_loader_pickles_without_its_memory_maps(phantom):
    model, folder, fold = _model(phantom, "multiclass", "multiclass")
    loader = PatchLoader(folder, fold["train"], model, model.topology.patch_size, seed=7)
    for _ in range(5):
        next(loader)
    assert loader._cache  # handles are open in this process
    copy = pickle.loads(pickle.dumps(loader))
    assert not copy._cache and next(copy)["data"].shape[0] == model.batch_size


def test_missing_cases_and_bad_regions_are_reported(phantom, tmp_path):
    model, folder, fold = _model(phantom, "multiclass", "multiclass")
    with pytest.raises(LiversegError, match="nope.*liverseg_plan"):
        PatchLoader(folder, [*fold["train"], "nope"], model, model.topology.patch_size, seed=0)
    with pytest.raises(LiversegError, match="no preprocessed data"):
        PatchLoader(tmp_path / "absent", fold["train"], model, model.topology.patch_size, seed=0)
    with pytest.raises(LiversegError, match="no cases"):
        PatchLoader(folder, [], model, model.topology.patch_size, seed=0)
    with pytest.raises(ValueError, match="at least the patch size"):
        PatchLoader(folder, fold["train"], model, (1, 1, 1), seed=0)
