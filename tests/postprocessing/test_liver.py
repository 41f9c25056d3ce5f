"""Step 1: the largest piece of the whole liver is kept and its holes are filled."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from liverseg.errors import LiversegError
from liverseg.postprocessing.liver import fill_holes, largest_component, largest_liver_component_fill_holes

SPACING = (3.0, 0.8, 0.8)


def _liver() -> np.ndarray:
    label = np.zeros((12, 40, 40), np.uint8)
    label[2:10, 5:30, 5:30] = 1
    return label


def test_small_liver_piece_is_removed_with_its_tumour():
    label = _liver()
    label[4:6, 10:14, 10:14] = 2  # tumour in the big liver: stays
    label[3:6, 33:38, 33:38] = 1  # a small liver island (spleen false positive) ...
    label[4, 34:36, 34:36] = 2  # ... holding a tumour
    expected = label.copy()
    expected[:, 31:, 31:] = 0
    out = largest_liver_component_fill_holes(label, SPACING)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8


def test_a_tumour_piece_larger_than_the_liver_pieces_counts_as_liver():
    """The whole liver is labels 1 and 2: a piece is measured with its tumour."""
    label = np.zeros((6, 20, 20), np.uint8)
    label[1:5, 1:6, 1:6] = 1  # 100 voxels of liver
    label[1:5, 10:18, 10:18] = 2  # 64 tumour voxels ...
    label[1:5, 10:12, 10:18] = 1  # ... of which 64 turned to liver: 128 voxels in the piece
    expected = label.copy()
    expected[:, :7, :7] = 0
    np.testing.assert_array_equal(largest_liver_component_fill_holes(label, SPACING), expected)


def test_enclosed_cavity_becomes_liver_and_tumour_inside_stays():
    label = _liver()
    label[4:7, 12:18, 12:18] = 0  # a cavity the network left out (a vessel)
    label[5, 14:16, 14:16] = 2  # tumour floating inside the cavity
    label[8, 20:24, 20:24] = 2  # tumour elsewhere in the liver
    expected = label.copy()
    expected[4:7, 12:18, 12:18] = 1
    expected[5, 14:16, 14:16] = 2
    np.testing.assert_array_equal(largest_liver_component_fill_holes(label, SPACING), expected)


def test_channel_open_through_the_surface_is_filled_only_slice_by_slice():
    label = _liver()
    label[5:10, 15:18, 15:18] = 0  # a vessel entering through the top face (z = 9 is the top slice)
    filled_3d = largest_liver_component_fill_holes(label, SPACING, fill="3d")
    np.testing.assert_array_equal(filled_3d, label)
    expected = label.copy()
    expected[5:10, 15:18, 15:18] = 1
    np.testing.assert_array_equal(largest_liver_component_fill_holes(label, SPACING, fill="axial"), expected)
    np.testing.assert_array_equal(largest_liver_component_fill_holes(label, SPACING, fill="both"), expected)
    np.testing.assert_array_equal(largest_liver_component_fill_holes(label, SPACING, fill="none"), label)


def test_hole_open_to_the_field_of_view_edge_is_not_filled():
    label = np.ones((4, 10, 10), np.uint8)
    label[:, 4:6, 0:6] = 0  # a notch reaching the array's edge at x = 0
    np.testing.assert_array_equal(largest_liver_component_fill_holes(label, SPACING, fill="both"), label)


def test_connectivity_decides_whether_corner_touching_pieces_are_one_liver():
    label = np.zeros((6, 12, 12), np.uint8)
    label[1:3, 1:4, 1:4] = 1  # 18 voxels
    label[3:5, 4:6, 4:6] = 1  # 8 voxels, meeting the first only at a corner
    np.testing.assert_array_equal(largest_liver_component_fill_holes(label, SPACING, connectivity=26), label)
    expected = label.copy()
    expected[3:5, 4:6, 4:6] = 0
    np.testing.assert_array_equal(largest_liver_component_fill_holes(label, SPACING, connectivity=6), expected)


def test_equal_pieces_keep_the_first_in_raster_order():
    mask = np.zeros((3, 10, 10), bool)
    mask[1, 1:3, 1:3] = True
    mask[1, 6:8, 6:8] = True
    expected = np.zeros_like(mask)
    expected[1, 1:3, 1:3] = True
    np.testing.assert_array_equal(largest_component(mask), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fill_holes_agrees_with_scipy(seed):
    """3D: scipy's binary_fill_holes (6-connected background); axial: the same on each slice."""
    mask = np.random.default_rng(seed).random((9, 30, 31)) < 0.6
    np.testing.assert_array_equal(fill_holes(mask, "3d"), ndimage.binary_fill_holes(mask))
    per_slice = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    np.testing.assert_array_equal(fill_holes(mask, "axial"), per_slice)
    assert fill_holes(mask, "3d").sum() > mask.sum()  # the random mask does have holes


def test_empty_label_stays_empty_and_input_is_not_changed():
    empty = np.zeros((3, 4, 5), np.uint8)
    np.testing.assert_array_equal(largest_liver_component_fill_holes(empty, SPACING), empty)
    label = _liver()
    label[5:8, 10:12, 10:12] = 0
    before = label.copy()
    largest_liver_component_fill_holes(label, SPACING)
    np.testing.assert_array_equal(label, before)


@pytest.mark.parametrize("params", [{"fill": "2d"}, {"connectivity": 8}])
def test_bad_parameters_are_user_errors(params):
    with pytest.raises(LiversegError, match="must be one of"):
        largest_liver_component_fill_holes(_liver(), SPACING, **params)
