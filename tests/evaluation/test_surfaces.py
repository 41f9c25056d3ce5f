"""Surface models and surface distances, checked by hand, by brute force and against DeepMind's table."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from liverseg.evaluation.surfaces import (
    CORNER_OFFSETS,
    boundary_voxels,
    neighbour_codes,
    surface_distances,
    surfel_area_table,
)

SPACINGS = [(1.0, 1.0, 1.0), (3.0, 0.8, 0.6), (0.7, 2.5, 1.1)]


def _box(shape, start, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


def _blobs(rng, shape, count):
    """Union of random ellipsoids; centres anywhere in the volume, so some touch the border."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, bool)
    for _ in range(count):
        c = rng.integers(0, shape)
        r = rng.integers(2, 6, 3)
        mask |= ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
    return mask


@pytest.mark.parametrize("spacing", SPACINGS)
def test_area_table_equals_deepmind_for_every_code(spacing):
    lookup = pytest.importorskip("surface_distance.lookup_tables")
    theirs = lookup.create_table_neighbour_code_to_surface_area(spacing)
    kernel = lookup.ENCODE_NEIGHBOURHOOD_3D_KERNEL
    ours = surfel_area_table(spacing)
    for code in range(256):
        cube = np.zeros((2, 2, 2), int)
        for bit, offset in enumerate(CORNER_OFFSETS):
            cube[offset] = code >> bit & 1
        assert ours[code] == pytest.approx(theirs[int((kernel * cube).sum())], rel=1e-12, abs=1e-12), code


def test_single_voxel_has_eight_corner_surfels_of_known_area():
    a, b, c = 3.0, 0.8, 0.6
    mask = _box((3, 3, 3), (1, 1, 1), (1, 1, 1))
    d = surface_distances(mask, mask, (a, b, c), "surfels")
    # Each corner triangle has area vector (1/8, 1/8, 1/8) in voxel units; the z component scales
    # with b*c, y with a*c, x with a*b.
    assert d.reference_weights.size == 8
    np.testing.assert_allclose(d.reference_weights, math.sqrt((b * c) ** 2 + (a * c) ** 2 + (a * b) ** 2) / 8)


@pytest.mark.parametrize("size,spacing", [((3, 4, 5), (3.0, 0.8, 0.6)), ((2, 1, 3), (1.5, 0.7, 1.1)), ((6, 6, 6), (1.0, 1.0, 1.0))])
def test_box_surface_area_by_hand(size, spacing):
    """Marching cubes on a box: flat faces, 45-degree chamfers along the edges, corner triangles."""
    k, m, n = size
    a, b, c = spacing
    mask = _box((k + 4, m + 4, n + 4), (2, 2, 2), size)
    faces = 2 * ((m - 1) * (n - 1) * b * c + (k - 1) * (n - 1) * a * c + (k - 1) * (m - 1) * a * b)
    edges = 2 * ((n - 1) * c * math.hypot(a, b) + (m - 1) * b * math.hypot(a, c) + (k - 1) * a * math.hypot(b, c))
    corners = math.sqrt((b * c) ** 2 + (a * c) ** 2 + (a * b) ** 2)
    d = surface_distances(mask, mask, spacing, "surfels")
    assert d.reference_weights.sum() == pytest.approx(faces + edges + corners, rel=1e-12)


def test_boundary_voxels_of_an_inner_cube_and_of_a_full_volume():
    cube = _box((5, 5, 5), (1, 1, 1), (3, 3, 3))
    assert np.count_nonzero(boundary_voxels(np.pad(cube, 1))) == 27 - 1
    full = np.ones((4, 5, 6), bool)  # the volume border counts as surface
    border = boundary_voxels(np.pad(full, 1))
    assert np.count_nonzero(border) == 4 * 5 * 6 - 2 * 3 * 4
    assert not border[1:-1, 1:-1, 1:-1].any()


def test_neighbour_codes_of_a_single_voxel():
    codes = neighbour_codes(np.pad(np.ones((1, 1, 1), bool), 1))
    assert codes.shape == (2, 2, 2)
    # The corner grid point g sees the voxel at offset 1 - g, so each code has exactly that one bit.
    for g in np.ndindex(2, 2, 2):
        offset = tuple(1 - v for v in g)
        assert codes[g] == 1 << CORNER_OFFSETS.index(offset)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_distance_uses_the_spacing_of_each_axis(axis):
    spacing = (3.0, 0.8, 0.6)
    a = _box((9, 9, 9), (2, 2, 2), (1, 1, 1))
    b = np.roll(a, 3, axis=axis)
    d = surface_distances(a, b, spacing, "voxels")
    np.testing.assert_allclose(d.reference_to_prediction, [3 * spacing[axis]])
    np.testing.assert_allclose(d.prediction_to_reference, [3 * spacing[axis]])


def test_voxel_distances_on_the_crop_equal_brute_force_on_the_whole_volume():
    rng = np.random.default_rng(1)
    spacing = (2.5, 0.9, 0.7)
    for _ in range(4):
        a, b = _blobs(rng, (14, 22, 18), 3), _blobs(rng, (14, 22, 18), 2)
        d = surface_distances(a, b, spacing, "voxels")
        # Independent computation: scipy erosion with background outside the volume, all-pairs distances.
        border_a = a & ~ndimage.binary_erosion(a, border_value=0)
        border_b = b & ~ndimage.binary_erosion(b, border_value=0)
        pa, pb = np.argwhere(border_a) * spacing, np.argwhere(border_b) * spacing
        pairwise = cdist(pa, pb)
        np.testing.assert_allclose(d.reference_to_prediction, pairwise.min(axis=1), atol=2e-5)
        np.testing.assert_allclose(d.prediction_to_reference, pairwise.min(axis=0), atol=2e-5)


def test_surfel_distances_on_the_crop_equal_brute_force_on_the_whole_volume():
    rng = np.random.default_rng(2)
    spacing = (3.0, 0.8, 0.6)
    for _ in range(3):
        a, b = _blobs(rng, (12, 20, 16), 2), _blobs(rng, (12, 20, 16), 2)
        d = surface_distances(a, b, spacing, "surfels")
        # Corner grid of the whole padded volume; corner g sits at (g - 0.5) voxels.
        ca, cb = neighbour_codes(np.pad(a, 1)), neighbour_codes(np.pad(b, 1))
        sa, sb = (ca != 0) & (ca != 255), (cb != 0) & (cb != 255)
        pa, pb = (np.argwhere(sa) - 0.5) * spacing, (np.argwhere(sb) - 0.5) * spacing
        pairwise = cdist(pa, pb)
        np.testing.assert_allclose(d.reference_to_prediction, pairwise.min(axis=1), atol=2e-5)
        np.testing.assert_allclose(d.prediction_to_reference, pairwise.min(axis=0), atol=2e-5)
        np.testing.assert_allclose(d.reference_weights, surfel_area_table(spacing)[ca[sa]])


@pytest.mark.parametrize("kind", ["voxels", "surfels"])
def test_empty_masks_have_no_surface(kind):
    empty = np.zeros((5, 5, 5), bool)
    voxel = _box((5, 5, 5), (2, 2, 2), (1, 1, 1))
    d = surface_distances(voxel, empty, (1.0, 1.0, 1.0), kind)
    assert d.prediction_empty and not d.reference_empty
    assert np.all(np.isinf(d.reference_to_prediction)) and d.prediction_to_reference.size == 0
    both = surface_distances(empty, empty, (1.0, 1.0, 1.0), kind)
    assert both.reference_empty and both.prediction_empty
