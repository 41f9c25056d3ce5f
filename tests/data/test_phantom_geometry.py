"""The phantom's building blocks: distances, fields and partial volumes checked against hand values."""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.data.phantom_geometry import (
    Grid,
    SmoothField,
    capsule,
    ellipsoid,
    occupancy,
    regular_grid,
    slab_occupancy,
    smooth_union,
)


def _point(z: float, y: float, x: float) -> Grid:
    return Grid(np.array([z], np.float32), np.array([y], np.float32), np.array([x], np.float32))


def test_ellipsoid_distance_on_the_axes_and_volume():
    center, radii = (10.0, -5.0, 3.0), (12.0, 8.0, 5.0)
    # Along each axis the distance to the surface is known: outside by 3 mm, inside by 2 mm.
    for axis in range(3):
        for offset, expected in ((radii[axis] + 3, 3.0), (radii[axis] - 2, -2.0)):
            p = list(center)
            p[axis] += offset
            assert ellipsoid(_point(*p), center, radii)[0, 0, 0] == pytest.approx(expected, abs=1e-4)
    grid = regular_grid((-5, -15, -5), (25, 5, 10), 0.25)
    volume = np.count_nonzero(ellipsoid(grid, center, radii) < 0) * 0.25**3
    assert volume == pytest.approx(4 / 3 * np.pi * 12 * 8 * 5, rel=0.01)


def test_rotated_ellipsoid_turns_its_long_axis():
    # A quarter turn in the y-x plane: the 20 mm radius along x becomes one along y.
    quarter = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)
    f = lambda p: ellipsoid(_point(*p), (0, 0, 0), (5.0, 5.0, 20.0), quarter)[0, 0, 0]  # noqa: E731
    assert f((0, 18, 0)) < 0 < f((0, 0, 18))


def test_capsule_distance():
    a, b = (0.0, 0.0, 0.0), (0.0, 0.0, 40.0)
    assert capsule(_point(0, 7, 20), a, b, 2.0, 4.0)[0, 0, 0] == pytest.approx(7 - 3.0, abs=1e-4)  # radius 3 halfway
    assert capsule(_point(0, 0, 45), a, b, 2.0, 4.0)[0, 0, 0] == pytest.approx(5 - 4.0, abs=1e-4)  # beyond the end


def test_smooth_union_is_the_minimum_away_from_the_seam():
    a = np.array([-3.0, 0.0, 10.0, 0.0], np.float32)
    b = np.array([30.0, 25.0, -20.0, 0.0], np.float32)
    u = smooth_union(a, b, 10.0)
    np.testing.assert_allclose(u[:3], np.minimum(a, b)[:3])
    assert u[3] == pytest.approx(-10.0 / 4)  # where both are equal the fillet adds k/4


@pytest.mark.parametrize("surface", [3.0, 3.37, 4.9])
def test_partial_volume_keeps_the_volume_of_a_half_space(surface):
    # Voxels 1 mm wide centred at 0.5, 1.5, ...: the half-space x < surface fills `surface` voxels.
    x = np.arange(10, dtype=np.float32) + 0.5
    assert occupancy(x - surface, 1.0).sum() == pytest.approx(surface, abs=1e-5)


def test_thick_slices_are_partly_filled_by_a_horizontal_surface():
    # 4 mm slices centred at 2, 6, 10, 14 mm, 1 mm pixels, surface at z = 9: the third slice
    # (8-12 mm) is a quarter below the surface.
    grid = Grid(np.array([2, 6, 10, 14], np.float32), np.arange(3, dtype=np.float32), np.arange(3, dtype=np.float32))
    z = grid.axes()[0]
    occ = slab_occupancy(np.broadcast_to(z - 9.0, grid.shape).copy(), grid)
    np.testing.assert_allclose(occ[:, 1, 1], [1.0, 1.0, 0.25, 0.0], atol=1e-6)


def test_smooth_field_is_the_same_on_a_crop():
    rng = np.random.default_rng(1)
    field = SmoothField(rng, (0, 0, 0), (60, 80, 80), 15.0)
    grid = regular_grid((0, 0, 0), (60, 80, 80), 2.0)
    full = field(grid)
    sl, sub = grid.crop((10, 20, 30), (40, 50, 70))
    np.testing.assert_allclose(field(sub), full[sl], atol=1e-5)
    assert 0.6 < full.std() < 1.4
    # Smooth: neighbours 2 mm apart differ by much less than the field's spread.
    assert np.abs(np.diff(full, axis=2)).mean() < 0.3 * full.std()


def test_crop_returns_the_voxels_inside_the_box():
    grid = regular_grid((0, 0, 0), (10, 10, 10), 1.0)
    sl, sub = grid.crop((2.5, 0, 9), (5, 3, 20))
    assert sub.z.tolist() == [3, 4, 5] and sub.y.tolist() == [0, 1, 2, 3] and sub.x.tolist() == [9, 10]
    assert grid.crop((20, 0, 0), (30, 5, 5)) is None
