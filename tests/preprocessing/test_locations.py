"""Sampler locations: right classes, lesions grouped as drawn, bounded, seeded, saved compactly."""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.errors import LiversegError
from liverseg.preprocessing.locations import (
    Locations,
    class_locations,
    compute_locations,
    lesion_locations,
    load_locations,
    save_locations,
)


@pytest.fixture
def label() -> np.ndarray:
    """A liver box holding four lesions; the expected grouping is worked out by hand below."""
    label = np.zeros((10, 20, 20), dtype=np.uint8)
    label[1:9, 2:18, 2:18] = 1
    label[2:4, 3:6, 3:6] = 2  # lesion A: 2 * 3 * 3 = 18 voxels
    label[2:3, 10:12, 10:12] = 2  # lesion B: 4 voxels ...
    label[3, 12, 12] = 2  # ... plus one touching only at a corner (26-connected): 5
    label[6:8, 3:5, 12:16] = 2  # lesion C: 2 * 2 * 4 = 16 voxels
    label[8, 16, 16] = 2  # lesion D: a single voxel
    return label


LESION_BOXES = [  # (z, y, x) ranges holding each lesion, in raster order of their first voxel
    ((2, 4), (3, 6), (3, 6)),
    ((2, 4), (10, 13), (10, 13)),
    ((6, 8), (3, 5), (12, 16)),
    ((8, 9), (16, 17), (16, 17)),
]


def _inside(coords: np.ndarray, box) -> bool:
    return all(np.all((coords[:, a] >= lo) & (coords[:, a] < hi)) for a, (lo, hi) in enumerate(box))


def test_class_samples_have_their_class_and_are_bounded(label):
    result = class_locations(label, [0, 1, 2, 3], max_per_class=100, seed=0)
    expected_counts = {0: 100, 1: 100, 2: 18 + 5 + 16 + 1, 3: 0}
    for value, coords in result.items():
        assert coords.shape == (expected_counts[value], 3)
        assert coords.dtype == np.int16
        assert np.all(label[tuple(coords.T)] == value)
        assert len(np.unique(coords, axis=0)) == len(coords)  # drawn without replacement


def test_class_sample_is_uniform_over_the_class():
    label = np.zeros((4, 100, 100), dtype=np.uint8)
    label[:, :50, :] = 1  # a quarter of the class in each slice; the first 4000 in raster order are all in slice 0
    coords = class_locations(label, [1], max_per_class=4000, seed=3)[1]
    assert np.mean(coords[:, 0] == 0) == pytest.approx(0.25, abs=0.03)
    assert np.mean(coords[:, 0] == 3) == pytest.approx(0.25, abs=0.03)


def test_class_sampling_is_seeded_and_independent_of_the_other_classes(label):
    a = class_locations(label, [1, 2], max_per_class=50, seed=1)
    b = class_locations(label, [2, 1], max_per_class=50, seed=1)
    alone = class_locations(label, [1], max_per_class=50, seed=1)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[1], alone[1])
    other_seed = class_locations(label, [1], max_per_class=50, seed=2)
    assert not np.array_equal(a[1], other_seed[1])


def test_lesions_are_grouped_as_drawn(label):
    lesions, sizes = lesion_locations(label, lesion_label=2, max_per_lesion=1000)
    np.testing.assert_array_equal(sizes, [18, 5, 16, 1])
    assert [len(c) for c in lesions] == [18, 5, 16, 1]
    for coords, box in zip(lesions, LESION_BOXES):
        assert _inside(coords, box)
        assert np.all(label[tuple(coords.T)] == 2)
    assert (3, 12, 12) in {tuple(c) for c in lesions[1]}


def test_lesion_samples_are_bounded_seeded_and_distinct(label):
    lesions, sizes = lesion_locations(label, max_per_lesion=10, seed=4)
    np.testing.assert_array_equal(sizes, [18, 5, 16, 1])  # full sizes, not sample sizes
    assert [len(c) for c in lesions] == [10, 5, 10, 1]
    for coords, box in zip(lesions, LESION_BOXES):
        assert _inside(coords, box)
        assert len(np.unique(coords, axis=0)) == len(coords)
    again, _ = lesion_locations(label, max_per_lesion=10, seed=4)
    other, _ = lesion_locations(label, max_per_lesion=10, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(lesions, again))
    assert not all(np.array_equal(a, b) for a, b in zip(lesions, other))


def test_lesion_sample_is_uniform_within_a_lesion():
    label = np.zeros((4, 40, 40), dtype=np.uint8)
    label[:, 5:30, 5:25] = 2  # 2000 voxels, 500 per slice
    (coords,), sizes = lesion_locations(label, max_per_lesion=1000, seed=0)
    assert sizes.tolist() == [2000]
    assert np.mean(coords[:, 0] < 2) == pytest.approx(0.5, abs=0.05)  # the first 1000 would all be in slices 0 and 1


def test_no_lesions():
    lesions, sizes = lesion_locations(np.ones((3, 4, 5), dtype=np.uint8))
    assert lesions == [] and sizes.shape == (0,)


def test_save_and_load_round_trip(tmp_path, label):
    locations = compute_locations(label, [1, 2], lesion_label=2, max_per_class=30, max_per_lesion=7, seed=9)
    path = tmp_path / "case_0001.npz"
    save_locations(path, locations)
    assert [p.name for p in tmp_path.iterdir()] == ["case_0001.npz"]  # no temporary file left behind
    loaded = load_locations(path)
    assert sorted(loaded.classes) == [1, 2]
    for value in (1, 2):
        np.testing.assert_array_equal(loaded.classes[value], locations.classes[value])
        assert loaded.classes[value].dtype == np.int16
    assert len(loaded.lesions) == 4
    for a, b in zip(loaded.lesions, locations.lesions):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.lesion_sizes, [18, 5, 16, 1])


def test_save_and_load_without_lesions(tmp_path, label):
    save_locations(tmp_path / "a.npz", compute_locations(label, [1], lesion_label=None))
    loaded = load_locations(tmp_path / "a.npz")
    assert loaded.lesions == [] and loaded.lesion_sizes.shape == (0,)
    save_locations(tmp_path / "b.npz", Locations())
    assert load_locations(tmp_path / "b.npz").classes == {}


def test_unreadable_locations_files_are_clear_errors(tmp_path):
    with pytest.raises(LiversegError, match="not found"):
        load_locations(tmp_path / "missing.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(LiversegError, match="broken.npz.*preprocess again"):
        load_locations(tmp_path / "broken.npz")
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(LiversegError, match="other.npz"):
        load_locations(tmp_path / "other.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(LiversegError, match="array.npy"):
        load_locations(tmp_path / "array.npy")
