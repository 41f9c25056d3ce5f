"""Preprocessing one case: crop, normalise before resampling, the saved files and their properties.

Cases are constructed by hand (a bright block in a zero border, a liver box and a tumour cube), so
crop boxes, shapes and voxel counts are known without running the code; resampling by exactly
2 in-plane with nearest neighbours picks voxels 1, 3, 5, ... which gives the expected arrays.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.errors import LiversegError
from liverseg.io.images import read_image
from liverseg.preprocessing.case import (
    case_files,
    crop_case,
    load_preprocessed_case,
    preprocess_arrays,
    preprocess_case,
)
from liverseg.preprocessing.locations import load_locations
from liverseg.preprocessing.normalize import normalize
from liverseg.preprocessing.spec import PreprocessingSpec

SHAPE = (12, 40, 44)  # (z, y, x)
SPACING_XYZ = (0.5, 0.5, 3.0)
BOX = (slice(2, 10), slice(5, 35), slice(4, 40))  # the non-zero block
LIVER = (slice(3, 9), slice(10, 30), slice(8, 30))
TUMOUR = (slice(4, 6), slice(14, 18), slice(12, 16))
CT_STATS = ({"mean": 500.0, "std": 200.0, "percentile_00_5": 150.0, "percentile_99_5": 900.0},)


def write(path, array, spacing=SPACING_XYZ, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(5.0, -3.0, 100.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def constructed_case(tmp_path):
    rng = np.random.default_rng(0)
    image = np.zeros(SHAPE, np.int16)
    image[BOX] = rng.integers(100, 1000, size=(8, 30, 36))
    label = np.zeros(SHAPE, np.uint8)
    label[LIVER] = 1
    label[TUMOUR] = 2
    return write(tmp_path / "case_0000.nii.gz", image), write(tmp_path / "case.nii.gz", label), image, label


def nearest_spec(scheme="ct", **kw):
    """In-plane 0.5 -> 1.0 mm with nearest neighbours everywhere: output voxel i is input voxel 2i+1."""
    stats = CT_STATS if scheme == "ct" else ()
    return PreprocessingSpec(
        target_spacing=(3.0, 1.0, 1.0), normalization=(scheme,), intensity_statistics=stats,
        order_inplane_image=0, label_mode="nearest", **kw,
    )


def test_crop_then_normalise_then_resample(tmp_path):
    image_file, label_file, image, label = constructed_case(tmp_path)
    props, timings = preprocess_case([image_file], label_file, [nearest_spec()], [tmp_path / "out"], "case")
    data, seg, saved = load_preprocessed_case(tmp_path / "out", "case", mmap_mode=None)

    cropped = image[BOX].astype(np.float64)
    expected = (np.clip(cropped, 150, 900) - 500) / 200
    np.testing.assert_allclose(data[0], expected[:, 1::2, 1::2], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(seg, label[BOX][:, 1::2, 1::2])
    assert data.dtype == np.float32 and data.shape == (1, 8, 15, 18)
    assert seg.dtype == np.uint8
    assert saved == props[0]
    assert saved["crop_bbox"] == [[2, 10], [5, 35], [4, 40]]
    assert saved["shape_original"] == list(SHAPE)
    assert saved["shape_after_crop"] == [8, 30, 36]
    assert saved["shape_after_resampling"] == [8, 15, 18]
    assert saved["spacing_after_resampling"] == pytest.approx([3.0, 1.0, 1.0])
    assert saved["class_voxels_original"] == {"0": 12 * 40 * 44 - 6 * 20 * 22, "1": 6 * 20 * 22 - 2 * 4 * 4, "2": 2 * 4 * 4}
    assert saved["class_voxels"] == {"0": 8 * 15 * 18 - 6 * 10 * 11, "1": 6 * 10 * 11 - 2 * 2 * 2, "2": 2 * 2 * 2}
    assert saved["num_lesions"] == 1
    assert set(timings.seconds) == {"read", "crop", "normalize", "resample", "locations", "save"}

    locations = load_locations(case_files(tmp_path / "out", "case")["locations"])
    for value in (1, 2):
        coords = locations.classes[value]
        assert len(coords) == saved["class_voxels"][str(value)]  # fewer than the sampling cap: all of them
        assert np.all(seg[tuple(coords.T)] == value)
    assert len(locations.lesions) == 1 and locations.lesion_sizes.tolist() == [8]


def test_normalisation_statistics_come_from_the_unresampled_image(tmp_path):
    """The body z-score of the full-resolution crop, subsampled; not the z-score of the subsampled crop."""
    rng = np.random.default_rng(1)
    image = rng.normal(20, 5, SHAPE).clip(1).astype(np.float32)  # noisy air
    image[BOX] = rng.gamma(4.0, 150.0, size=(8, 30, 36)) + 300  # skewed tissue: stats differ by subsample
    array, geometry = image[None], read_image(write(tmp_path / "i.nii.gz", image))[1]
    result = preprocess_arrays(array, geometry, nearest_spec("zscore_foreground"))
    before = normalize(array, ["zscore_foreground"])[:, :, 1::2, 1::2]
    after = normalize(array[:, :, 1::2, 1::2], ["zscore_foreground"])
    np.testing.assert_allclose(result.data, before, atol=1e-6)
    assert np.abs(result.data - after).max() > 1e-3
    assert result.seg is None and "class_voxels" not in result.properties


def test_crop_box_keeps_label_voxels_outside_the_image_block():
    image = np.zeros((1, *SHAPE), np.float32)
    image[(0, *BOX)] = 1
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 43] = 1
    assert crop_case(image, label) == (slice(0, 10), slice(0, 35), slice(4, 44))
    assert crop_case(image, None) == BOX
    assert crop_case(np.zeros_like(image), None) == (slice(0, 12), slice(0, 40), slice(0, 44))


def test_specs_sharing_a_normalisation_give_what_each_gives_alone(tmp_path):
    image_file, label_file, _, _ = constructed_case(tmp_path)
    fine = PreprocessingSpec(target_spacing=(3.0, 0.5, 0.5), normalization=("zscore_foreground",))
    coarse = PreprocessingSpec(target_spacing=(6.0, 1.5, 1.5), normalization=("zscore_foreground",), order_z_image=1, order_z_label=1)
    preprocess_case([image_file], label_file, [fine, coarse], [tmp_path / "both_f", tmp_path / "both_c"], "case")
    for spec, together in ((fine, "both_f"), (coarse, "both_c")):
        preprocess_case([image_file], label_file, [spec], [tmp_path / "alone"], "case")
        for key in ("data", "seg"):
            a, b = (np.load(case_files(tmp_path / f, "case")[key]) for f in (together, "alone"))
            np.testing.assert_array_equal(a, b)
    assert load_preprocessed_case(tmp_path / "both_c", "case")[2]["shape_after_resampling"] == [4, 10, 12]


def test_json_is_written_last_and_a_stale_one_is_removed_first(tmp_path):
    image_file, label_file, _, label = constructed_case(tmp_path)
    out = tmp_path / "out"
    preprocess_case([image_file], label_file, [nearest_spec()], [out], "case")
    files = case_files(out, "case")
    json_time = files["json"].stat().st_mtime_ns
    assert all(files[k].stat().st_mtime_ns <= json_time for k in ("data", "seg", "locations"))
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]

    # A rerun that fails leaves no json behind that would vouch for the old files.
    write(label_file, label, spacing=(0.5, 0.5, 2.0))
    with pytest.raises(LiversegError, match="spacing"):
        preprocess_case([image_file], label_file, [nearest_spec()], [out], "case")
    assert not files["json"].exists()


def test_memory_mapped_patch_equals_the_loaded_one(tmp_path):
    image_file, label_file, _, _ = constructed_case(tmp_path)
    preprocess_case([image_file], label_file, [nearest_spec()], [tmp_path / "out"], "case")
    data, seg, _ = load_preprocessed_case(tmp_path / "out", "case")
    assert isinstance(data, np.memmap) and isinstance(seg, np.memmap)
    full, _, _ = load_preprocessed_case(tmp_path / "out", "case", mmap_mode=None)
    np.testing.assert_array_equal(data[:, 2:6, 3:11, 4:12], full[:, 2:6, 3:11, 4:12])
    with pytest.raises(LiversegError, match="liverseg_plan"):
        load_preprocessed_case(tmp_path / "out", "other")


@pytest.mark.parametrize(
    ("label", "message"),
    [(np.full(SHAPE, 0.5, np.float32), "fractional"), (np.full(SHAPE, 300, np.int16), "range from 300 to 300")],
)
def test_bad_labels_are_named(tmp_path, label, message):
    image_file, _, _, _ = constructed_case(tmp_path)
    bad = write(tmp_path / "bad.nii.gz", label)
    with pytest.raises(LiversegError, match=message) as info:
        preprocess_case([image_file], bad, [nearest_spec()], [tmp_path / "out"], "case")
    assert os.fspath(bad) in str(info.value)


def test_float_label_with_whole_values_is_accepted(tmp_path):
    image_file, _, _, label = constructed_case(tmp_path)
    as_float = write(tmp_path / "float.nii.gz", label.astype(np.float32))
    props, _ = preprocess_case([image_file], as_float, [nearest_spec()], [tmp_path / "out"], "case")
    assert props[0]["class_voxels_original"]["2"] == 32


def test_case_without_label_has_no_seg_even_after_a_labelled_run(tmp_path):
    image_file, label_file, _, _ = constructed_case(tmp_path)
    preprocess_case([image_file], label_file, [nearest_spec()], [tmp_path / "out"], "case")
    props, _ = preprocess_case([image_file], None, [nearest_spec()], [tmp_path / "out"], "case")
    data, seg, saved = load_preprocessed_case(tmp_path / "out", "case")
    assert seg is None and data.shape == (1, 8, 15, 18)
    assert not case_files(tmp_path / "out", "case")["locations"].exists()
    assert "class_voxels" not in saved and "num_lesions" not in saved and saved == props[0]
