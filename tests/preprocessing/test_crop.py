"""Cropping to the non-zero box and pasting back into the full grid."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.io.images import read_image
from liverseg.preprocessing.crop import bbox_from_list, bbox_to_list, crop_to_bbox, nonzero_bbox, paste_into


def test_box_covers_non_zero_voxels_of_any_channel():
    image = np.zeros((2, 10, 12, 14), dtype=np.float32)
    image[0, 3, 4, 5] = 1.0
    image[1, 7, 2, 9] = -2.0  # negative values are content too
    assert nonzero_bbox(image) == (slice(3, 8), slice(2, 5), slice(5, 10))
    assert nonzero_bbox(image[1]) == (slice(7, 8), slice(2, 3), slice(9, 10))


def test_all_zero_image_keeps_the_whole_volume():
    assert nonzero_bbox(np.zeros((1, 4, 5, 6))) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_nan_counts_as_content():
    image = np.zeros((1, 4, 5, 6), dtype=np.float32)
    image[0, 1, 2, 3] = np.nan
    assert nonzero_bbox(image) == (slice(1, 2), slice(2, 3), slice(3, 4))


def test_box_of_a_zero_padded_nifti(tmp_path):
    """A volume written with a zero border of known widths is cropped to exactly its content."""
    content = np.random.default_rng(0).uniform(1, 100, size=(6, 7, 8)).astype(np.float32)
    padded = np.pad(content, ((2, 3), (4, 1), (0, 5)))
    sitk.WriteImage(sitk.GetImageFromArray(padded), str(tmp_path / "padded.nii.gz"))
    array, _ = read_image(tmp_path / "padded.nii.gz")
    box = nonzero_bbox(array[None])
    assert box == (slice(2, 8), slice(4, 11), slice(0, 8))
    np.testing.assert_array_equal(crop_to_bbox(array, box), content)


def test_crop_then_paste_restores_the_image_and_fills_the_border():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 9, 10, 11)).astype(np.float32)
    box = (slice(2, 7), slice(1, 10), slice(3, 4))
    cropped = crop_to_bbox(image, box)
    assert cropped.shape == (3, 5, 9, 1)
    pasted = paste_into((9, 10, 11), box, cropped, fill=[1.0, 0.0, -1.0])
    assert pasted.shape == image.shape
    np.testing.assert_array_equal(pasted[(Ellipsis, *box)], image[(Ellipsis, *box)])
    outside = np.ones((9, 10, 11), dtype=bool)
    outside[box] = False
    for channel, value in enumerate([1.0, 0.0, -1.0]):
        assert np.all(pasted[channel][outside] == value)


def test_paste_of_a_label_map_uses_scalar_fill_and_keeps_dtype():
    label = np.full((2, 3, 4), 2, dtype=np.uint8)
    pasted = paste_into((5, 5, 5), (slice(1, 3), slice(0, 3), slice(1, 5)), label)
    assert pasted.dtype == np.uint8
    assert pasted.sum() == 2 * label.size


def test_box_json_round_trip():
    box = (slice(0, 4), slice(5, 9), slice(2, 3))
    assert bbox_to_list(box) == [[0, 4], [5, 9], [2, 3]]
    assert bbox_from_list(bbox_to_list(box)) == box


def test_misfit_boxes_and_arrays_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        crop_to_bbox(np.zeros((4, 4, 4)), (slice(0, 5), slice(0, 4), slice(0, 4)))
    with pytest.raises(ValueError, match="does not fit"):
        paste_into((4, 4, 4), (slice(0, 2), slice(0, 2), slice(0, 2)), np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="fill"):
        paste_into((4, 4, 4), (slice(0, 2), slice(0, 2), slice(0, 2)), np.zeros((2, 2, 2, 2)), fill=[0, 0, 0])
