"""Mapping predictions back: preprocess, map the label back, compare with the file on disk.

Labels go through preprocessing and back as one-hot probabilities; the result must nearly equal
the original label and land on exactly the original header, for files stored in flipped and
permuted orientations too.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.data.phantom import generate_case, write_case
from liverseg.errors import LiversegError
from liverseg.preprocessing.case import load_preprocessed_case, preprocess_case
from liverseg.preprocessing.inverse import (
    labels_to_original,
    original_geometry,
    probabilities_to_original,
    write_prediction,
)
from liverseg.preprocessing.spec import PreprocessingSpec

DIRECTIONS = {
    "LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "RAS": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "permuted_flipped": (-1, 0, 0, 0, 0, 1, 0, -1, 0),
}
SPEC = PreprocessingSpec(target_spacing=(3.5, 1.0, 1.0), normalization=("zscore_foreground",))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def write_stored(path, array, spacing, direction, origin=(12.5, -40.0, 300.0)):
    """Write ``array`` exactly as stored on disk (SimpleITK index order), with the given header."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def ellipsoid_case(tmp_path, direction, spacing=(0.7, 0.7, 2.5), shape=(24, 96, 100)):
    """An ellipsoid 'liver' with a spherical 'tumour' in a body block surrounded by zeros (stored layout)."""
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing[::-1])), indexing="ij")
    centre = np.array([n * s / 2 for n, s in zip(shape, spacing[::-1])])
    liver = ((zz - centre[0]) / 22) ** 2 + ((yy - centre[1]) / 25) ** 2 + ((xx - centre[2]) / 28) ** 2 < 1
    tumour = (zz - centre[0]) ** 2 + (yy - centre[1] - 8) ** 2 + (xx - centre[2] + 6) ** 2 < 9.0**2
    label = liver.astype(np.uint8) + (liver & tumour)
    rng = np.random.default_rng(3)
    image = np.zeros(shape, np.int16)
    image[2:-2, 6:-5, 4:-7] = rng.integers(200, 300, size=(shape[0] - 4, shape[1] - 11, shape[2] - 11))
    image[label == 1] += 300
    image[label == 2] += 600
    image_file = write_stored(tmp_path / "case_0000.nii.gz", image, spacing, direction)
    label_file = write_stored(tmp_path / "case.nii.gz", label, spacing, direction)
    return image_file, label_file, label


def round_trip(image_file, label_file, folder, spec=SPEC):
    """Preprocess, map the preprocessed label back as one-hot probabilities, write it; return it as stored."""
    preprocess_case([image_file], label_file, [spec], [folder], "case")
    _, seg, properties = load_preprocessed_case(folder, "case", mmap_mode=None)
    one_hot = (seg[None] == np.arange(3)[:, None, None, None]).astype(np.float32)
    probabilities = probabilities_to_original(one_hot, properties)
    back = np.argmax(probabilities, axis=0).astype(np.uint8)
    write_prediction(back, original_geometry(properties), folder / "prediction.nii.gz")
    return sitk.ReadImage(str(folder / "prediction.nii.gz")), probabilities, properties, seg


def assert_same_header(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_round_trip_gives_the_original_header_and_nearly_the_original_label(tmp_path, direction):
    image_file, label_file, label = ellipsoid_case(tmp_path, DIRECTIONS[direction])
    stored, probabilities, properties, _ = round_trip(image_file, label_file, tmp_path / "out")
    assert_same_header(stored, sitk.ReadImage(str(label_file)))
    assert stored.GetPixelID() == sitk.sitkUInt8
    back = sitk.GetArrayFromImage(stored)
    assert dice(back >= 1, label >= 1) > 0.95
    assert dice(back == 2, label == 2) > 0.85
    assert probabilities.shape == (3, *properties["shape_original"]) and probabilities.dtype == np.float32


def test_outside_the_crop_box_is_certain_background(tmp_path):
    image_file, label_file, _ = ellipsoid_case(tmp_path, DIRECTIONS["LPS"])
    _, probabilities, properties, seg = round_trip(image_file, label_file, tmp_path / "out")
    (z0, z1), (y0, y1), (x0, x1) = properties["crop_bbox"]
    assert (z0, z1, y0, y1, x0, x1) == (2, 22, 6, 91, 4, 93)  # the body block written above
    outside = np.ones(probabilities.shape[1:], bool)
    outside[z0:z1, y0:y1, x0:x1] = False
    assert np.all(probabilities[0][outside] == 1) and np.all(probabilities[1:][:, outside] == 0)
    single = probabilities_to_original(np.full((1, *seg.shape), 0.7, np.float32), properties)
    assert np.all(single[0][outside] == 0) and np.allclose(single[0][~outside], 0.7)


def test_without_resampling_the_label_comes_back_exactly(tmp_path):
    """Target spacing = original spacing: only the crop is undone, so every voxel must match."""
    spacing = (0.7, 0.7, 2.5)
    image_file, label_file, label = ellipsoid_case(tmp_path, DIRECTIONS["permuted_flipped"], spacing=spacing)
    spec = PreprocessingSpec(target_spacing=(0.7, 2.5, 0.7), normalization=("zscore_foreground",))  # canonical (z, y, x)
    preprocess_case([image_file], label_file, [spec], [tmp_path / "out"], "case")
    _, seg, properties = load_preprocessed_case(tmp_path / "out", "case", mmap_mode=None)
    assert properties["shape_after_crop"] == properties["shape_after_resampling"]
    write_prediction(labels_to_original(seg, properties), properties["geometry"], tmp_path / "back.nii.gz")
    stored = sitk.ReadImage(str(tmp_path / "back.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stored), label)
    assert_same_header(stored, sitk.ReadImage(str(label_file)))


def test_phantom_case_stored_flipped_round_trips(tmp_path):
    case = generate_case(17, seed=0, size="small")
    assert case.orientation != "LPS"  # this case is stored flipped (see the phantom's draws)
    write_case(case, tmp_path, "phantom_017")
    image_file = tmp_path / "imagesTr" / "phantom_017_0000.nii.gz"
    label_file = tmp_path / "labelsTr" / "phantom_017.nii.gz"
    stored, _, _, _ = round_trip(image_file, label_file, tmp_path / "out")
    original = sitk.ReadImage(str(label_file))
    assert_same_header(stored, original)
    back, label = sitk.GetArrayFromImage(stored), sitk.GetArrayFromImage(original)
    assert dice(back >= 1, label >= 1) > 0.95


def test_labels_to_original_agrees_with_the_probability_route(tmp_path):
    image_file, label_file, label = ellipsoid_case(tmp_path, DIRECTIONS["RAS"])
    stored, _, properties, seg = round_trip(image_file, label_file, tmp_path / "out")
    direct = labels_to_original(seg, properties)
    via_probabilities = sitk.GetArrayFromImage(sitk.DICOMOrient(stored, "LPS"))
    assert dice(direct >= 1, via_probabilities >= 1) > 0.99


def test_wrong_shapes_and_file_endings_are_refused(tmp_path):
    image_file, label_file, _ = ellipsoid_case(tmp_path, DIRECTIONS["LPS"])
    _, _, properties, seg = round_trip(image_file, label_file, tmp_path / "out")
    with pytest.raises(ValueError, match="preprocessed shape"):
        probabilities_to_original(np.zeros((3, 2, 2, 2), np.float32), properties)
    with pytest.raises(ValueError, match="preprocessed shape"):
        labels_to_original(seg[None], properties)
    geometry = original_geometry(properties)
    with pytest.raises(ValueError, match="original grid"):
        write_prediction(seg, geometry, tmp_path / "p.nii.gz")
    with pytest.raises(LiversegError, match="file ending"):
        write_prediction(np.zeros(geometry.shape, np.uint8), geometry, tmp_path / "p.png")
