"""Patch sampler on constructed label maps: centre ratios, lesion-first, fallbacks, must-contain, regions, labels, masks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from liverseg.planning.parts import SamplingSpec
from liverseg.preprocessing.locations import Locations, compute_locations
from liverseg.training.sampler import (
    LESION,
    RANDOM,
    PackedMask,
    case_probabilities,
    choose_centre,
    clamp_centre,
    class_kind,
    cut_region,
    dilated_mask,
    draw_kinds,
    label_box,
    map_labels,
    region_slices,
)

SHAPE = (20, 60, 50)
BIG = (slice(4, 14), slice(10, 30), slice(10, 30))  # 10 * 20 * 20 = 4000 voxels
SMALL = (slice(16, 18), slice(40, 42), slice(40, 42))  # 8 voxels, separate from BIG


def _label() -> np.ndarray:
    """Liver (1) filling a box, a big and a small lesion (2) in it; background elsewhere."""
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[2:19, 5:50, 5:45] = 1
    seg[BIG] = 2
    seg[SMALL] = 2
    return seg


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, Locations]:
    seg = _label()
    return seg, compute_locations(seg, classes=(1, 2), seed=3)


def _tolerance(p: float, n: int) -> float:
    """Five binomial standard deviations of a proportion (a false alarm about once in 3 million runs)."""
    return 5 * np.sqrt(p * (1 - p) / n) + 1e-9


def test_kinds_are_drawn_in_the_planned_ratios(case):
    seg, locations = case
    sampling = SamplingSpec(lesion=0.5, classes={1: 0.3}, random=0.2)
    rng = np.random.default_rng(0)
    n = 3000
    kinds = [choose_centre(locations, sampling, SHAPE, rng, (8, 16, 16)).kind for _ in range(n)]
    for kind, p in ((LESION, 0.5), (class_kind(1), 0.3), (RANDOM, 0.2)):
        assert abs(kinds.count(kind) / n - p) < _tolerance(p, n), kind


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_batches_keep_the_ratios_and_deviate_by_less_than_one_sample(batch):
    sampling = SamplingSpec(lesion=0.9, classes={1: 0.1}, random=0.0)
    rng = np.random.default_rng(batch)
    batches = [draw_kinds(sampling, batch, rng) for _ in range(4000)]
    assert all(len(b) == batch for b in batches)
    lesions = np.array([b.count(LESION) for b in batches])
    share = lesions.sum() / (batch * len(batches))
    assert abs(share - 0.9) < _tolerance(0.9, batch * len(batches))
    # stratified: never fewer than floor(0.9 B) lesion patches, never more than ceil(0.9 B)
    assert lesions.min() >= np.floor(0.9 * batch) and lesions.max() <= np.ceil(0.9 * batch)
    if batch == 2:  # the remainder 0.8 decides the second slot
        assert abs(np.mean(lesions == 2) - 0.8) < _tolerance(0.8, len(batches))


def test_lesion_centres_sit_in_lesions_and_small_lesions_are_chosen_as_often_as_big_ones(case):
    seg, locations = case
    sampling = SamplingSpec(lesion=1.0, random=0.0)
    components, _ = ndimage.label(seg == 2)
    big_id, small_id = components[4, 10, 10], components[16, 40, 40]
    rng = np.random.default_rng(1)
    n = 2000
    hits = [components[choose_centre(locations, sampling, SHAPE, rng).position] for _ in range(n)]
    assert set(hits) == {big_id, small_id}  # without a patch size the centre is the lesion voxel itself
    assert abs(hits.count(small_id) / n - 0.5) < _tolerance(0.5, n)
    # drawing tumour voxels directly (class 2) favours the big lesion in proportion to its volume
    by_voxel = [components[choose_centre(locations, SamplingSpec(classes={2: 1.0}, random=0.0), SHAPE, rng).position]
                for _ in range(n)]
    assert by_voxel.count(small_id) / n < 0.02


def test_clamped_patches_lie_inside_the_case_and_hold_their_voxel(case):
    seg, locations = case
    patch = (8, 16, 16)
    rng = np.random.default_rng(2)
    positions = np.array([choose_centre(locations, SamplingSpec(), SHAPE, rng, patch).position for _ in range(3000)])
    low, high = np.array(patch) // 2, np.array(SHAPE) - np.array(patch) + np.array(patch) // 2
    assert (positions.min(axis=0) == low).all() and (positions.max(axis=0) == high).all()  # uniform over the clamped range
    for centre in positions[:200]:
        window = region_slices(centre, patch)
        assert all(0 <= s.start and s.stop <= n for s, n in zip(window, SHAPE))
    # the small lesion at the far corner: centres move inward but its voxels stay inside the patch
    small_only = Locations(classes={}, lesions=[np.argwhere(seg[SMALL] == 2) + [16, 40, 40]], lesion_sizes=np.array([8]))
    for _ in range(50):
        centre = choose_centre(small_only, SamplingSpec(lesion=1.0, random=0.0), SHAPE, rng, patch).position
        assert (seg[region_slices(centre, patch)] == 2).any()


def test_an_axis_shorter_than_the_patch_centres_the_patch():
    assert clamp_centre((0, 3, 40), (10, 50, 50), (16, 8, 8)) == (5, 4, 40)  # z: start (10 - 16) // 2 = -3, centre -3 + 8
    assert clamp_centre((9, 3, 40), (11, 50, 50), (16, 8, 8)) == (5, 4, 40)  # start (11 - 16) // 2 = -3


def test_cases_without_lesions_spread_the_lesion_share_over_the_classes(case):
    seg, _ = case
    no_lesions = seg.copy()
    no_lesions[no_lesions == 2] = 1
    locations = compute_locations(no_lesions, classes=(1, 2), seed=0)
    sampling = SamplingSpec(lesion=0.5, classes={1: 0.3}, random=0.2)
    expected = {class_kind(1): 0.3 + 0.5, RANDOM: 0.2}
    assert case_probabilities(sampling, locations) == pytest.approx(expected)
    rng = np.random.default_rng(4)
    n = 3000
    kinds = [choose_centre(locations, sampling, SHAPE, rng).kind for _ in range(n)]
    for kind, p in expected.items():
        assert abs(kinds.count(kind) / n - p) < _tolerance(p, n)
    # with two classes the share goes in proportion 1 : 3; a class absent from the case gives its share to random
    two = SamplingSpec(lesion=0.4, classes={1: 0.15, 2: 0.45}, random=0.0)
    assert case_probabilities(two, locations) == pytest.approx({class_kind(1): 0.15 + 0.4, RANDOM: 0.45})
    with_tumour = compute_locations(seg, classes=(1, 2), seed=0)
    no_lesion_list = Locations(classes=with_tumour.classes)
    assert case_probabilities(two, no_lesion_list) == pytest.approx({class_kind(1): 0.15 + 0.1, class_kind(2): 0.45 + 0.3})
    assert case_probabilities(SamplingSpec(lesion=0.7, random=0.3), no_lesion_list) == pytest.approx({RANDOM: 1.0})


def test_patch_must_contain_holds_for_random_centres(case):
    seg, locations = case
    sampling = SamplingSpec(random=1.0, patch_must_contain=(2,))
    patch = (4, 8, 8)
    rng = np.random.default_rng(5)
    centres = [choose_centre(locations, sampling, SHAPE, rng, patch, seg) for _ in range(300)]
    assert all((seg[region_slices(c.position, patch)] == 2).any() for c in centres)
    # the tumour box covers few positions: some random draws failed ten times and fell back to a tumour voxel
    assert {c.kind for c in centres} == {RANDOM, class_kind(2)}
    # a case without any of the labels still yields a centre (nothing better to offer)
    empty = np.zeros(SHAPE, dtype=np.uint8)
    centre = choose_centre(compute_locations(empty, (1, 2)), sampling, SHAPE, rng, patch, empty)
    assert centre.kind == RANDOM
    with pytest.raises(ValueError, match="seg"):
        choose_centre(locations, sampling, SHAPE, rng, patch)


@pytest.mark.parametrize("centre", [(0, 0, 0), (19, 59, 49), (10, 30, 25), (-5, 70, 3)])
def test_regions_have_the_exact_size_and_are_zero_padded_past_the_border(centre):
    rng = np.random.default_rng(6)
    data = rng.normal(size=(2, *SHAPE)).astype(np.float32) + 5  # no zeros inside the case
    seg = _label()
    size = (9, 24, 31)
    image, labels = cut_region(data, seg, centre, size)
    assert image.shape == (2, *size) and image.dtype == np.float32 and labels.shape == size and labels.dtype == np.uint8
    # independent: pad the whole case by the region size, then slice
    pad = max(size)
    padded_data = np.pad(data, [(0, 0)] + [(pad, pad)] * 3)
    padded_seg = np.pad(seg, pad)
    window = tuple(slice(c - s // 2 + pad, c - s // 2 + s + pad) for c, s in zip(centre, size))
    np.testing.assert_array_equal(image, padded_data[(slice(None), *window)])
    np.testing.assert_array_equal(labels, padded_seg[window])


def test_regions_read_memory_mapped_cases(tmp_path):
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(1, *SHAPE)
    np.save(tmp_path / "d.npy", data)
    mapped = np.load(tmp_path / "d.npy", mmap_mode="r")
    image, labels = cut_region(mapped, None, (10, 30, 25), (4, 6, 8))
    assert labels is None and isinstance(image, np.ndarray) and not isinstance(image, np.memmap)
    np.testing.assert_array_equal(image, data[:, 8:12, 27:33, 21:29])


def test_label_mapping_for_the_liver_and_tumour_models():
    seg = np.array([[[0, 1, 2, 3]]], dtype=np.uint8)
    np.testing.assert_array_equal(map_labels(seg, {1: 1, 2: 1}), [[[0, 1, 1, 0]]])
    np.testing.assert_array_equal(map_labels(seg, {2: 1}), [[[0, 0, 1, 0]]])
    np.testing.assert_array_equal(map_labels(seg, {1: 1, 2: 2}), [[[0, 1, 2, 0]]])
    assert map_labels(_label(), {2: 1}).sum() == 4000 + 8


def test_dilated_mask_matches_scipys_distance_transform():
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[8:12, 25:35, 20:30] = 1
    seg[11, 33, 28] = 2
    seg[0, 0, 49] = 1  # a lone voxel at a corner
    spacing, dilation = (3.1, 0.9, 1.1), 7.0
    mask = dilated_mask(seg, (1, 2), dilation, spacing)
    assert mask.shape == SHAPE and mask.dtype == bool
    distance = ndimage.distance_transform_edt(seg == 0, sampling=spacing)
    decided = np.abs(distance - dilation) > 1e-3  # float32 rounding may go either way on the threshold itself
    np.testing.assert_array_equal(mask[decided], (distance <= dilation)[decided])
    assert 0 < mask.mean() < 0.5
    # only the listed labels count; 0 mm gives the labels themselves; no label, no mask
    np.testing.assert_array_equal(dilated_mask(seg, (2,), 0.0, spacing), seg == 2)
    assert not dilated_mask(seg, (3,), dilation, spacing).any()


@pytest.mark.parametrize("centre", [(10, 30, 25), (0, 0, 0), (19, 59, 49), (5, 45, 3), (30, 30, 25), (-40, 0, 0)])
@pytest.mark.parametrize("size", [(6, 28, 20), (3, 5, 13), (25, 70, 61)])
def test_packed_masks_cut_the_same_regions_as_the_bool_volume(centre, size):
    mask = np.random.default_rng(7).random(SHAPE) < 0.3  # x length 50: not a multiple of 8
    packed = PackedMask(mask)
    assert packed.bits.nbytes == 20 * 60 * 7
    expected = _padded(mask, centre, size)
    np.testing.assert_array_equal(packed.cut(centre, size), expected)


def _padded(volume: np.ndarray, centre, size) -> np.ndarray:
    pad = max(size) + 40
    window = tuple(slice(c - s // 2 + pad, c - s // 2 + s + pad) for c, s in zip(centre, size))
    return np.pad(volume, pad)[window]


def test_label_box():
    seg = _label()
    assert label_box(seg, (2,)) == ((4, 18), (10, 42), (10, 42))
    assert label_box(seg, (1, 2)) == ((2, 19), (5, 50), (5, 45))
    assert label_box(seg, (3,)) is None
