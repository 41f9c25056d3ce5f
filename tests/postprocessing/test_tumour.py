"""Tumour steps: outside-liver removal, closing, liver-border opening and the size filter."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from liverseg.errors import LiversegError
from liverseg.postprocessing.tumour import (
    ball_kernel,
    close_tumour,
    open_liver_border_band,
    remove_small_lesions,
    remove_tumour_outside_liver,
)

SPACING = (3.0, 0.8, 0.8)


def _liver(shape=(12, 40, 40)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[2:10, 5:30, 5:30] = 1
    return label


# --- remove_tumour_outside_liver -------------------------------------------------------------

def test_multiclass_removes_the_outside_lesion_and_keeps_the_touching_one():
    label = _liver()
    label[4:6, 10:14, 10:14] = 2  # inside the liver
    label[4:6, 10:14, 30:34] = 2  # outside, its face against the liver's face at x = 29: stays whole
    label[4:6, 20:24, 32:36] = 2  # outside, two background columns (x = 30, 31) away: removed
    expected = label.copy()
    expected[4:6, 20:24, 32:36] = 0
    out = remove_tumour_outside_liver(label, SPACING)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8


def test_multiclass_corner_contact_depends_on_connectivity():
    label = _liver()
    label[10, 30, 30] = 2  # meets the liver voxel (9, 29, 29) at a corner only
    np.testing.assert_array_equal(remove_tumour_outside_liver(label, SPACING, connectivity=26), label)
    np.testing.assert_array_equal(remove_tumour_outside_liver(label, SPACING, connectivity=6), _liver())


def test_multiclass_dilation_in_mm_reaches_exactly_that_far():
    label = _liver()
    label[5, 15, 32] = 2  # nearest liver voxel (5, 15, 29): 3 x 0.8 = 2.4 mm away
    label[11, 15, 15] = 2  # nearest liver voxel (9, 15, 15): 2 x 3 = 6 mm away
    kept_near = label.copy()
    kept_near[11, 15, 15] = 0
    np.testing.assert_array_equal(remove_tumour_outside_liver(label, SPACING, dilation_mm=2.4), kept_near)
    np.testing.assert_array_equal(remove_tumour_outside_liver(label, SPACING, dilation_mm=2.3), _liver())
    np.testing.assert_array_equal(remove_tumour_outside_liver(label, SPACING, dilation_mm=6.0), label)


@pytest.mark.parametrize("dilation_mm", [None, 1.7, 3.5])
def test_multiclass_equals_dilating_each_lesion_on_the_whole_volume(dilation_mm):
    rng = np.random.default_rng(4)
    label = np.zeros((8, 30, 30), np.uint8)
    label[2:6, 8:22, 8:22] = 1
    label[rng.random(label.shape) < 0.03] = 2  # specks inside, near and far from the liver
    if dilation_mm is None:
        structure = ndimage.generate_binary_structure(3, 3)
    else:
        structure = ball_kernel(dilation_mm, SPACING)
    lesions, count = ndimage.label(label == 2, ndimage.generate_binary_structure(3, 3))
    expected = label.copy()
    for i in range(1, count + 1):
        if not (ndimage.binary_dilation(lesions == i, structure) & (label == 1)).any():
            expected[lesions == i] = 0
    out = remove_tumour_outside_liver(label, SPACING, dilation_mm=dilation_mm)
    assert (out != label).any() and (out == 2).any()
    np.testing.assert_array_equal(out, expected)


def test_dual_binary_keeps_only_tumour_in_the_whole_liver():
    label = _liver()
    label[4:6, 10:14, 10:14] = 2
    label[4:6, 10:14, 30:34] = 2  # attached to the liver: part of the whole liver
    label[4:6, 20:24, 32:36] = 2  # a separate piece: not liver
    expected = label.copy()
    expected[4:6, 20:24, 32:36] = 0
    np.testing.assert_array_equal(remove_tumour_outside_liver(label, SPACING, mode="dual_binary"), expected)
    # A generous dilation keeps the near lesion in multiclass mode; the multiplication does not.
    np.testing.assert_array_equal(remove_tumour_outside_liver(label, SPACING, dilation_mm=3.0), label)


def test_lesion_inside_the_liver_is_never_removed():
    label = _liver()
    label[3:9, 8:20, 8:20] = 2
    for mode in ("multiclass", "dual_binary"):
        np.testing.assert_array_equal(remove_tumour_outside_liver(label, SPACING, mode=mode), label)


# --- close_tumour -----------------------------------------------------------------------------

def test_closing_fills_a_gap_inside_the_liver_but_not_across_slices():
    label = _liver()
    label[5, 10:16, 10:13] = 2
    label[5, 10:16, 14:17] = 2  # one liver column (x = 13) between the two halves
    label[7, 10:16, 10:17] = 2  # two slices up, liver in between
    expected = label.copy()
    expected[5, 10:16, 13] = 2
    np.testing.assert_array_equal(close_tumour(label, SPACING), expected)
    # A kernel 3 slices high bridges the liver slice between the lesions instead (where both overlap).
    bridged = label.copy()
    bridged[6, 10:16, 10:13] = 2
    bridged[6, 10:16, 14:17] = 2
    np.testing.assert_array_equal(close_tumour(label, SPACING, kernel=[3, 1, 1]), bridged)


def test_closing_never_adds_tumour_outside_the_liver():
    label = _liver()
    # A lesion on the liver's edge at x = 29 with a notch of background where the liver ends.
    label[5, 10:16, 26:30] = 2
    label[5, 10:16, 31:33] = 2
    label[5, 10:16, 30] = 0  # background between the two parts: closing would fill it
    out = close_tumour(label, SPACING)
    assert out[5, 10:16, 30].tolist() == [0] * 6
    np.testing.assert_array_equal(out, label)


def test_closing_at_the_array_edge():
    label = np.ones((3, 8, 8), np.uint8)
    label[1, 0:3, 0] = 2
    label[1, 0:3, 2] = 2
    expected = label.copy()
    expected[1, 0:3, 1] = 2
    np.testing.assert_array_equal(close_tumour(label, (1.0, 1.0, 1.0)), expected)


def test_ball_kernel_by_hand():
    np.testing.assert_array_equal(ball_kernel(1.5, (3.0, 1.0, 1.0)), np.ones((1, 3, 3), bool))
    ball = ball_kernel(3.0, (3.0, 1.0, 1.0))
    assert ball.shape == (3, 7, 7)
    # In-plane points with dy^2 + dx^2 <= 9: 29; above and below only the centre (3 mm away).
    assert ball[1].sum() == 29 and ball[0].sum() == ball[2].sum() == 1


@pytest.mark.parametrize("radius_mm", [1.0, 2.5, 3.2])
def test_ball_closing_equals_scipy_closing_with_the_ball(radius_mm):
    rng = np.random.default_rng(3)
    spacing = (2.0, 0.9, 0.7)
    label = np.ones((10, 40, 40), np.uint8)
    label[rng.random(label.shape) < 0.08] = 2
    label[:, :, :3] = 0  # background the closing must not enter
    structure = ball_kernel(radius_mm, spacing)
    pad = [(n, n) for n in structure.shape]
    closed = ndimage.binary_closing(np.pad(label == 2, pad), structure)[tuple(slice(n, -n) for n in structure.shape)]
    expected = np.where(closed & (label == 1), 2, label)
    out = close_tumour(label, spacing, radius_mm=radius_mm)
    assert (out != label).any()
    np.testing.assert_array_equal(out, expected)


# --- open_liver_border_band -------------------------------------------------------------------

def test_border_opening_removes_a_thin_rim_false_positive_and_keeps_compact_lesions():
    label = _liver()  # liver x, y in 5..29: the 7 x 7 erosion leaves 8..26, the band is 3 pixels wide
    label[3:9, 6, 10:25] = 2  # a one-pixel line along the rim, inside the band: removed
    label[3:9, 5:9, 26:30] = 2  # a compact 4 x 4 lesion in the band's corner: kept
    label[3:9, 18, 10:25] = 2  # the same thin line deep in the liver: not in the band, kept
    expected = label.copy()
    expected[3:9, 6, 10:25] = 1
    np.testing.assert_array_equal(open_liver_border_band(label, SPACING), expected)


def test_border_opening_only_touches_the_thin_part_inside_the_band():
    label = _liver()
    label[5, 6:13, 12:20] = 2  # a compact lesion reaching from the band (y = 5..7) into the liver ...
    label[5, 6, 20:27] = 2  # ... with a one-pixel spur running along the rim
    expected = label.copy()
    expected[5, 6, 20:27] = 1  # the lesion's part in the band survives a 3 x 3 opening, the spur does not
    np.testing.assert_array_equal(open_liver_border_band(label, SPACING), expected)


def test_field_of_view_edge_is_not_a_liver_border():
    label = np.ones((4, 20, 20), np.uint8)  # liver filling the field of view
    label[1:3, 1, 3:15] = 2  # a thin line one pixel from the edge
    np.testing.assert_array_equal(open_liver_border_band(label, SPACING), label)


@pytest.mark.parametrize("seed", [0, 1])
def test_border_opening_on_crops_equals_the_whole_volume_computation(seed):
    """Random lesions, a liver cut by the field of view: the cropped result equals the plain one."""
    rng = np.random.default_rng(seed)
    label = np.zeros((8, 50, 50), np.uint8)
    label[:, 10:, 5:45] = 1  # reaches the edges at z = 0, 7 and y = 49
    label[(rng.random(label.shape) < 0.15) & (label == 1)] = 2
    pad = 10  # the world beyond the image continues as at its edge
    padded = np.pad(label, pad, mode="edge")
    whole, tumour = padded > 0, padded == 2
    band = whole & ~ndimage.binary_erosion(whole, np.ones((1, 7, 7), bool))
    thin = band & tumour & ~ndimage.binary_opening(tumour, np.ones((1, 3, 3), bool))
    expected = np.where(thin, 1, padded)[pad:-pad, pad:-pad, pad:-pad]
    out = open_liver_border_band(label, SPACING)
    assert (out != label).any()
    np.testing.assert_array_equal(out, expected)


# --- remove_small_lesions ---------------------------------------------------------------------

def test_small_lesions_inside_become_liver_and_outside_become_background():
    spacing = (2.0, 1.0, 1.0)  # 0.002 ml per voxel
    label = _liver()
    label[4:6, 10:14, 10:14] = 2  # 32 voxels = 0.064 ml: removed, becomes liver
    label[4:6, 18:23, 18:23] = 2  # 50 voxels = 0.100 ml: kept at a 0.09 ml minimum
    label[11, 35:37, 35:37] = 2  # 4 voxels outside the liver: removed, becomes background
    expected = label.copy()
    expected[4:6, 10:14, 10:14] = 1
    expected[11, 35:37, 35:37] = 0
    np.testing.assert_array_equal(remove_small_lesions(label, spacing, min_volume_ml=0.09), expected)
    np.testing.assert_array_equal(remove_small_lesions(label, spacing, min_volume_ml=0.0), label)
    everything = expected.copy()
    everything[4:6, 18:23, 18:23] = 1
    np.testing.assert_array_equal(remove_small_lesions(label, spacing, min_volume_ml=1.0), everything)


# --- all steps ----------------------------------------------------------------------------------

STEPS = [remove_tumour_outside_liver, close_tumour, open_liver_border_band, remove_small_lesions]


@pytest.mark.parametrize("step", STEPS)
def test_steps_leave_their_input_alone_and_handle_no_tumour(step):
    label = _liver()
    label[5, 6, 10:20] = 2
    before = label.copy()
    step(label, SPACING)
    np.testing.assert_array_equal(label, before)
    np.testing.assert_array_equal(step(_liver(), SPACING), _liver())


@pytest.mark.parametrize("step, params, message", [
    (remove_tumour_outside_liver, {"mode": "binary"}, "mode must be one of"),
    (remove_tumour_outside_liver, {"dilation_mm": -1}, "dilation_mm must be a number"),
    (close_tumour, {"kernel": [2, 3, 3]}, "three odd positive"),
    (close_tumour, {"radius_mm": "2"}, "radius_mm must be a number"),
    (open_liver_border_band, {"erosion_kernel": [7, 7]}, "three odd positive"),
    (remove_small_lesions, {"min_volume_ml": None}, "min_volume_ml must be a number"),
    (remove_small_lesions, {"connectivity": 4}, "connectivity must be one of"),
])
def test_bad_parameters_are_user_errors(step, params, message):
    with pytest.raises(LiversegError, match=message):
        step(np.zeros((1, 1, 1), np.uint8), SPACING, **params)
