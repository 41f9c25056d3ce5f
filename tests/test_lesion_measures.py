"""Lesion geometry on shapes whose boxes, volumes and diameters are known by construction."""
from __future__ import annotations

import math

import numpy as np
import pytest

from liverseg.lesion_measures import (
    bounding_box,
    label_components,
    lesion_table,
    longest_axial_diameter_mm,
    measure_components,
)

SPACING = (3.0, 0.8, 0.7)  # (z, y, x) mm, anisotropic in all three axes


def _pixel_corner_diameter(mask: np.ndarray, spacing) -> float:
    """Oracle: all four corners of every pixel, all pairs, per slice (slow but obviously right)."""
    best = 0.0
    for z in range(mask.shape[0]):
        ys, xs = np.nonzero(mask[z])
        if ys.size == 0:
            continue
        corners = np.concatenate([np.column_stack([ys + dy, xs + dx]) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
        corners = corners * np.array(spacing[1:])
        diff = corners[:, None, :] - corners[None, :, :]
        best = max(best, float(np.sqrt((diff**2).sum(-1)).max()))
    return best


def test_bounding_box_of_a_box_and_of_nothing():
    mask = np.zeros((6, 7, 8), bool)
    assert bounding_box(mask) is None
    mask[2:4, 0:3, 5:8] = True  # touches two borders
    assert bounding_box(mask) == (slice(2, 4), slice(0, 3), slice(5, 8))
    mask[5, 6, 0] = True  # one far voxel widens every axis
    assert bounding_box(mask) == (slice(2, 6), slice(0, 7), slice(0, 8))


def test_single_pixel_measures_its_diagonal():
    mask = np.zeros((3, 5, 5), bool)
    mask[1, 2, 3] = True
    assert longest_axial_diameter_mm(mask, SPACING) == pytest.approx(math.hypot(0.8, 0.7))


@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 9), (4, 1), (5, 12), (40, 30)])
def test_rectangle_diameter_is_the_diagonal_of_its_extent(rows, cols):
    """40 rows gives 160 candidate corners, so the convex-hull path is exercised too."""
    mask = np.zeros((2, 50, 40), bool)
    mask[1, 3 : 3 + rows, 2 : 2 + cols] = True
    expected = math.hypot(rows * SPACING[1], cols * SPACING[2])
    assert longest_axial_diameter_mm(mask, SPACING) == pytest.approx(expected)


def test_diameter_is_the_maximum_over_slices_and_ignores_z():
    mask = np.zeros((5, 20, 20), bool)
    mask[0, 0:2, 0:2] = True
    mask[1:4, 5:8, 5:8] = True  # tall in z, small in plane
    mask[4, 2:12, 4:6] = True  # largest in-plane footprint: 10 x 2 pixels
    expected = math.hypot(10 * 0.8, 2 * 0.7)
    assert longest_axial_diameter_mm(mask, SPACING) == pytest.approx(expected)
    assert longest_axial_diameter_mm(np.zeros((2, 3, 3), bool), SPACING) == 0.0


def test_diagonal_line_of_pixels():
    n = 7
    mask = np.zeros((1, n, n), bool)
    mask[0, np.arange(n), np.arange(n)] = True
    assert longest_axial_diameter_mm(mask, (1.0, 1.0, 1.0)) == pytest.approx(n * math.sqrt(2))


@pytest.mark.parametrize("radius", [3, 8, 20])
def test_disc_diameter_is_two_radii_plus_less_than_a_pixel_diagonal(radius):
    """Pixel centres within r: the pixels at (+-r, 0) give >= 2r + 1; every corner lies within r + sqrt(2)/2."""
    size = 2 * radius + 5
    y, x = np.mgrid[:size, :size] - (radius + 2)
    disc = (y**2 + x**2 <= radius**2)[None]
    spacing = (2.0, 0.5, 0.5)
    d = longest_axial_diameter_mm(disc, spacing)
    assert (2 * radius + 1) * 0.5 <= d <= (2 * radius + math.sqrt(2)) * 0.5 + 1e-9
    ring = disc & ~(y**2 + x**2 <= (radius - 2) ** 2)[None]
    assert longest_axial_diameter_mm(ring, spacing) == pytest.approx(d)


def test_diameter_matches_all_pairs_of_pixel_corners_on_random_blobs():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random((3, 25, 30)) < rng.uniform(0.01, 0.6)
        spacing = (2.5, rng.uniform(0.4, 2.0), rng.uniform(0.4, 2.0))
        assert longest_axial_diameter_mm(mask, spacing) == pytest.approx(_pixel_corner_diameter(mask, spacing), rel=1e-12)


def _known_lesions() -> np.ndarray:
    label = np.zeros((12, 40, 50), np.uint8)
    label[1:11, 2:38, 2:48] = 1  # liver, never a lesion
    label[2:5, 5:15, 6:10] = 2  # A: box 3 x 10 x 4
    label[6:8, 20:23, 20:23] = 2  # B1: box 2 x 3 x 3 ...
    label[8:9, 23:25, 23:26] = 2  # ... B2 touches B1 only at an edge/corner: one lesion with 26-connectivity
    label[9:12, 30:40, 45:50] = 2  # C: at the far border of every axis
    return label


def test_lesion_table_on_known_lesions():
    label = _known_lesions()
    table = lesion_table(label, SPACING)
    assert len(table) == 3
    by_start = {tuple(row["bbox"][0]): row for row in table}
    a, b, c = by_start[(2, 5)], by_start[(6, 9)], by_start[(9, 12)]
    voxel_ml = 3.0 * 0.8 * 0.7 / 1000

    assert a["bbox"] == [[2, 5], [5, 15], [6, 10]]
    assert a["extent_voxels"] == [3, 10, 4]
    assert a["extent_mm"] == pytest.approx([9.0, 8.0, 2.8])
    assert a["num_voxels"] == 3 * 10 * 4
    assert a["volume_ml"] == pytest.approx(120 * voxel_ml)
    assert a["longest_axial_diameter_mm"] == pytest.approx(math.hypot(8.0, 2.8))
    assert a["centroid_voxel"] == pytest.approx([3.0, 9.5, 7.5])

    assert b["bbox"] == [[6, 9], [20, 25], [20, 26]]
    assert b["num_voxels"] == 18 + 6
    expected_centroid = np.argwhere(label[6:9, 20:25, 20:26] == 2).mean(axis=0) + [6, 20, 20]
    assert b["centroid_voxel"] == pytest.approx(expected_centroid)
    assert b["longest_axial_diameter_mm"] == pytest.approx(math.hypot(3 * 0.8, 3 * 0.7))  # no slice holds both parts

    assert c["bbox"] == [[9, 12], [30, 40], [45, 50]]
    assert c["extent_mm"] == pytest.approx([9.0, 8.0, 3.5])
    assert sorted(row["id"] for row in table) == [1, 2, 3]


def test_connectivity_decides_whether_touching_lesions_merge():
    label = _known_lesions()
    assert len(lesion_table(label, SPACING, connectivity=26)) == 3
    assert len(lesion_table(label, SPACING, connectivity=6)) == 4
    assert lesion_table(np.ones((3, 3, 3), np.uint8), SPACING) == []
    assert len(lesion_table(label, SPACING, lesion_label=1)) == 1


def test_measure_components_skips_unused_ids_and_agrees_with_label_components():
    components = np.zeros((4, 6, 6), np.uint32)
    components[0, 0, 0] = 2
    components[2:4, 3:6, 1:3] = 7
    rows = measure_components(components, (1.0, 1.0, 1.0))
    assert [row["id"] for row in rows] == [2, 7]
    assert rows[1]["num_voxels"] == 12 and rows[1]["volume_ml"] == pytest.approx(0.012)
    ids, count = label_components((components > 0).astype(np.uint8) * 2)
    assert count == 2 and ids.dtype == np.uint32
