"""The integrity check finds every planted problem at once, and flags only real ones."""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.data.integrity import ERROR, WARNING, verify_dataset
from liverseg.errors import LiversegError
from liverseg.io.dataset import ATLAS_LABELS

SHAPE = (8, 10, 12)  # (z, y, x)
SPACING = (0.8, 0.8, 3.0)  # SimpleITK order (x, y, z)
IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def _write(path: Path, array: np.ndarray, spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=IDENTITY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    if array.ndim == 3:
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, size=SHAPE).astype(np.float32)


def _label(tumour: bool = True) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 2:8, 2:10] = 1
    if tumour:
        label[3:5, 4:6, 4:6] = 2
    return label


def _dataset_json(root: Path, num_training: int, ending: str, channels: int = 1, labels=ATLAS_LABELS) -> None:
    root.mkdir(parents=True, exist_ok=True)
    content = {
        "channel_names": {str(c): f"MRI{c}" for c in range(channels)},
        "labels": labels,
        "numTraining": num_training,
        "file_ending": ending,
    }
    (root / "dataset.json").write_text(json.dumps(content))


def _clean_case(root: Path, case: str, ending: str, channels: int = 1, tumour: bool = True, **geometry) -> None:
    for c in range(channels):
        _write(root / "imagesTr" / f"{case}_{c:04d}{ending}", _image(zlib.crc32(case.encode()) + c), **geometry)
    _write(root / "labelsTr" / f"{case}{ending}", _label(tumour), **geometry)


def make_broken_dataset(root: Path) -> dict[str, str]:
    """A two-channel .nrrd dataset with one planted error per entry: {file name: words its error must contain}."""
    ending = ".nrrd"
    images, labels = root / "imagesTr", root / "labelsTr"
    for i in range(13):
        _clean_case(root, f"c{i:02d}", ending, channels=2)
    planted = {}
    (labels / "c01.nrrd").unlink()
    planted["labelsTr/c01.nrrd"] = "label of case c01 is missing"
    for c in range(2):
        (images / f"c02_{c:04d}.nrrd").unlink()
    planted["labelsTr/c02.nrrd"] = "label without image"
    (images / "c03_0001.nrrd").unlink()
    planted["imagesTr/c03_0001.nrrd"] = "channel 0001 of case c03 is missing"
    (images / "c04_0000.nrrd").rename(images / "c04.nrrd")
    planted["imagesTr/c04.nrrd"] = "name does not follow"
    _write(labels / "c05.nrrd", _label(), origin=(0.5, 0.0, 0.0))
    planted["labelsTr/c05.nrrd"] = "max difference 0.5"
    wrong_value = _label()
    wrong_value[0, 0, 0] = 5
    _write(labels / "c06.nrrd", wrong_value)
    planted["labelsTr/c06.nrrd"] = "holds value(s) [5] not declared"
    fractional = _label().astype(np.float32)
    fractional[0, 0, :3] = 1.5
    _write(labels / "c07.nrrd", fractional)
    planted["labelsTr/c07.nrrd"] = "3 voxel(s) hold non-integral values (e.g. [1.5])"
    not_finite = _image(8)
    not_finite[1, 2, 3], not_finite[4, 5, 6] = np.nan, np.inf
    _write(images / "c08_0000.nrrd", not_finite)
    planted["imagesTr/c08_0000.nrrd"] = "2 voxel(s) are NaN or infinite"
    _write(images / "c09_0001.nrrd", _image(9)[0])
    planted["imagesTr/c09_0001.nrrd"] = "is 2D"
    complete = (images / "c10_0000.nrrd").read_bytes()
    (images / "c10_0000.nrrd").write_bytes(complete[: len(complete) // 2])
    planted["imagesTr/c10_0000.nrrd"] = "cannot be read"
    _write(images / "c11_0002.nrrd", _image(11))
    planted["imagesTr/c11_0002.nrrd"] = "channel 0002 is not declared"
    (images / "c12_0000.nrrd").write_bytes(b"this is not an image")
    planted["imagesTr/c12_0000.nrrd"] = "cannot be read"
    # 12 cases left in imagesTr (c02 is gone, c04 lost its channel 0000 but keeps 0001)
    _dataset_json(root, num_training=13, ending=ending, channels=2)
    planted["dataset.json"] = "numTraining is 13 but imagesTr holds 12 case(s)"
    # c04 keeps channel 0001 only, so it also misses channel 0000: a consequence of the bad name
    planted["imagesTr/c04_0000.nrrd"] = "channel 0000 of case c04 is missing"
    return planted


def test_every_planted_error_is_reported_in_one_message(tmp_path):
    root = tmp_path / "Broken"
    planted = make_broken_dataset(root)
    report = verify_dataset(root)
    by_file = {Path(p.path).relative_to(root).as_posix(): p for p in report.errors}
    assert sorted(by_file) == sorted(planted)
    for name, words in planted.items():
        assert words in by_file[name].what, (name, by_file[name].what)
        assert by_file[name].fix and by_file[name].severity == ERROR
    assert report.warnings == []
    assert not report.ok()
    with pytest.raises(LiversegError) as info:
        report.raise_if_errors()
    message = str(info.value)
    assert f"{len(planted)} error(s)" in message
    for name, words in planted.items():
        assert f"{root / name}: " in message and words in message


def test_parallel_check_gives_the_same_report(tmp_path):
    root = tmp_path / "Broken"
    make_broken_dataset(root)
    assert verify_dataset(root, num_workers=2) == verify_dataset(root, num_workers=1)


def test_truncated_nifti_files_are_errors_not_zeros(tmp_path):
    """SimpleITK reads a truncated .nii.gz / .nii as zeros; the check must catch it."""
    root = tmp_path / "Truncated"
    for case, ending in (("a", ".nii.gz"), ("b", ".nii.gz")):
        _clean_case(root, case, ending)
    _dataset_json(root, 2, ".nii.gz")
    for path in (root / "imagesTr" / "a_0000.nii.gz", root / "labelsTr" / "b.nii.gz"):
        content = path.read_bytes()
        path.write_bytes(content[: len(content) * 2 // 3])
    report = verify_dataset(root)
    assert sorted(Path(p.path).name for p in report.errors) == ["a_0000.nii.gz", "b.nii.gz"]
    assert all("truncated" in p.what for p in report.errors)


def test_clean_dataset_passes(tmp_path, stores):
    root = stores["raw"] / "Clean"
    for i in range(4):
        _clean_case(root, f"case{i}", ".nii.gz", origin=(1.0, 2.0, 3.0), direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    _dataset_json(root, 4, ".nii.gz")
    for dataset in (root, str(root), "Clean"):  # folder, folder as text, name in $LIVERSEG_RAW
        report = verify_dataset(dataset)
        assert report.ok() and report.errors == [] and report.warnings == []
        assert report.num_cases == 4 and report.dataset == "Clean"
        report.raise_if_errors()
    assert report.format().splitlines() == ["Clean: 4 case(s), 0 error(s), 0 warning(s)"]


def test_cases_without_tumour_are_warnings_only_when_tumour_is_declared(tmp_path):
    root = tmp_path / "NoTumour"
    _clean_case(root, "a", ".nii.gz")
    _clean_case(root, "b", ".nii.gz", tumour=False)
    _dataset_json(root, 2, ".nii.gz")
    report = verify_dataset(root)
    assert report.ok()
    assert [(Path(p.path).name, p.severity) for p in report.warnings] == [("b.nii.gz", WARNING)]
    assert "no tumour voxels (label 2 absent)" in report.warnings[0].what
    assert "WARNING: " + str(root / "labelsTr" / "b.nii.gz") in report.format()

    liver_only = tmp_path / "LiverOnly"
    _clean_case(liver_only, "a", ".nii.gz", tumour=False)
    _dataset_json(liver_only, 1, ".nii.gz", labels={"background": 0, "liver": 1})
    assert verify_dataset(liver_only).warnings == []


def test_spacing_outliers_are_warnings_in_canonical_axis_order(tmp_path):
    root = tmp_path / "Spacing"
    for i in range(3):
        _clean_case(root, f"normal{i}", ".nii.gz")
    _clean_case(root, "thick", ".nii.gz", spacing=(0.8, 0.8, 12.0))
    _clean_case(root, "tiny", ".nii.gz", spacing=(0.01, 0.8, 3.0))
    # Stored with x and z swapped: the same physical spacing, so not an outlier.
    swapped = (0.0, 0, 1.0, 0, 1.0, 0, 1.0, 0, 0)
    _clean_case(root, "swapped", ".nii.gz", spacing=(3.0, 0.8, 0.8), direction=swapped)
    _dataset_json(root, 6, ".nii.gz")
    report = verify_dataset(root)
    assert report.ok()
    warnings = {Path(p.path).name: p.what for p in report.warnings}
    assert sorted(warnings) == ["thick_0000.nii.gz", "tiny_0000.nii.gz"]
    # median z is 3 mm (3, 3, 3, 12, 3, 3): 12 mm is 4x away
    assert "z 12 mm is 4.0x away from the dataset median 3 mm" in warnings["thick_0000.nii.gz"]
    assert "x 0.01 mm is outside 0.1-20.0 mm" in warnings["tiny_0000.nii.gz"]


def test_oblique_direction_is_a_warning(tmp_path):
    root = tmp_path / "Oblique"
    angle = math.radians(10.0)
    c, s = math.cos(angle), math.sin(angle)
    rotated = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)  # 10 degrees about z
    _clean_case(root, "tilted", ".nii.gz", direction=rotated)
    _clean_case(root, "flipped", ".nii.gz", direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    _dataset_json(root, 2, ".nii.gz")
    report = verify_dataset(root)
    assert report.ok()
    assert [Path(p.path).name for p in report.warnings] == ["tilted_0000.nii.gz"]
    assert "10.0 degrees off the nearest world axis" in report.warnings[0].what


def test_missing_dataset_is_a_clear_error(tmp_path, stores):
    with pytest.raises(LiversegError, match="no dataset 'Nope'"):
        verify_dataset("Nope")
    with pytest.raises(LiversegError, match="no dataset.json"):
        verify_dataset(tmp_path)
