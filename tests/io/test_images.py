"""Round trips through the image layer keep voxels and geometry exactly."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.errors import LiversegError
from liverseg.io.images import Geometry, read_channels, read_image, write_image

DIRECTIONS = {
    "identity": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "ras_nifti": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "permuted_flipped": (-1, 0, 0, 0, 0, 1, 0, -1, 0),
    "oblique": tuple(sitk.VersorRigid3DTransform((0.1, 0.2, 0.05, 0.97)).GetMatrix()),
}


def _write(path, array, spacing=(0.8, 0.9, 3.0), origin=(10.0, -20.0, 30.5), direction=DIRECTIONS["identity"]):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_round_trip_keeps_voxels_and_header(tmp_path, suffix, direction):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 3, size=(5, 6, 7)).astype(np.uint8)
    original = _write(tmp_path / f"in{suffix}", array, direction=DIRECTIONS[direction])
    canonical, geometry = read_image(tmp_path / f"in{suffix}")
    write_image(canonical, geometry, tmp_path / f"out{suffix}")
    back = sitk.ReadImage(str(tmp_path / f"out{suffix}"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    np.testing.assert_allclose(back.GetSpacing(), original.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), original.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), original.GetDirection(), atol=1e-6)
    assert Geometry.from_dict(geometry.to_dict()) == geometry


def test_canonical_layout_is_the_same_for_any_stored_orientation(tmp_path):
    """The same physical volume stored in two orientations reads as the same array."""
    array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    _write(tmp_path / "a.nii.gz", array, direction=DIRECTIONS["identity"], origin=(0, 0, 0))
    # Flip x in the array and in the header: same world content.
    flipped = array[:, :, ::-1].copy()
    _write(tmp_path / "b.nii.gz", flipped, direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(6 * 0.8, 0, 0))
    a, ga = read_image(tmp_path / "a.nii.gz")
    b, gb = read_image(tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(a, b)
    assert ga.spacing == pytest.approx((3.0, 0.9, 0.8), abs=1e-6)
    np.testing.assert_allclose(ga.origin, gb.origin, atol=1e-5)


def test_spacing_is_z_y_x(tmp_path):
    _write(tmp_path / "a.nii.gz", np.zeros((4, 5, 6), np.float32), spacing=(0.7, 0.8, 4.5))
    array, geometry = read_image(tmp_path / "a.nii.gz")
    assert array.shape == (4, 5, 6) == geometry.shape
    assert geometry.spacing == pytest.approx((4.5, 0.8, 0.7), abs=1e-6)


def test_dicom_series_folder_reads_as_one_image(tmp_path):
    array = (np.arange(4 * 8 * 9).reshape(4, 8, 9) % 500).astype(np.int16)
    rotation = sitk.VersorRigid3DTransform((0.0, 0.0, 0.3, 0.954)).GetMatrix()  # proper rotation, det +1
    volume = sitk.GetImageFromArray(array)
    volume.SetSpacing((0.9, 0.9, 2.5))
    volume.SetOrigin((1.0, 2.0, 3.0))
    volume.SetDirection(rotation)
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = volume.GetDirection()
    for k in range(volume.GetDepth()):
        s = volume[:, :, k]
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series instance UID
        s.SetMetaData("0020|0037", "\\".join(map(str, (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))))
        s.SetMetaData("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0013", str(k))
        s.SetMetaData("0008|0060", "MR")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)
    from_dicom, geometry = read_image(folder)
    from_memory = sitk.GetArrayFromImage(sitk.DICOMOrient(volume, "LPS"))
    np.testing.assert_array_equal(from_dicom, from_memory)
    np.testing.assert_allclose(geometry.original_direction, direction, atol=1e-4)
    np.testing.assert_allclose(geometry.spacing, (2.5, 0.9, 0.9), atol=1e-4)


def test_unreadable_and_wrong_dimension_files_are_user_errors(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(LiversegError, match="broken.nii.gz"):
        read_image(tmp_path / "broken.nii.gz")
    with pytest.raises(LiversegError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")
    sitk.WriteImage(sitk.Image([4, 4], sitk.sitkUInt8), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(LiversegError, match="3D"):
        read_image(tmp_path / "flat.nii.gz")


def test_channels_must_share_a_grid(tmp_path):
    _write(tmp_path / "c0.nii.gz", np.zeros((4, 5, 6), np.float32))
    _write(tmp_path / "c1.nii.gz", np.ones((4, 5, 6), np.float32))
    stacked, _ = read_channels([tmp_path / "c0.nii.gz", tmp_path / "c1.nii.gz"])
    assert stacked.shape == (2, 4, 5, 6) and stacked.dtype == np.float32
    _write(tmp_path / "c2.nii.gz", np.ones((4, 5, 6), np.float32), spacing=(0.8, 0.9, 4.0))
    with pytest.raises(LiversegError, match="spacing"):
        read_channels([tmp_path / "c0.nii.gz", tmp_path / "c2.nii.gz"])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_nifti_is_an_error_not_zeros(tmp_path, suffix):
    """SimpleITK fills a truncated NIfTI with zeros; read_image must refuse it instead."""
    path = tmp_path / f"cut{suffix}"
    _write(path, np.random.default_rng(0).random((8, 30, 30)).astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LiversegError, match="truncated|corrupt"):
        read_image(path)
