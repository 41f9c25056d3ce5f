"""ATLAS and LiTS conversion on small fabricated releases, quirks included."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.cli.convert import main as convert_main
from liverseg.data.metadata import load_case_metadata
from liverseg.errors import LiversegError
from liverseg.io.converters import convert_atlas, convert_lits
from liverseg.io.dataset import RawDataset
from liverseg.io.images import read_image

SHAPE = (6, 10, 12)  # (z, y, x)
SPACING = (0.8, 0.75, 3.0)  # SimpleITK order (x, y, z)
ORIGIN = (10.0, -20.0, 30.5)
RAS = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)
RELEASE = "atlas-train-dataset-1.0.1"
ATLAS_INDICES = (0, 1, 2, 10)  # natural order: im2 before im10


def _write(path: Path, array: np.ndarray, origin=ORIGIN, spacing=SPACING, direction=RAS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))


def _case_arrays(index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    image = rng.integers(-100, 900, size=SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, np.uint8)
    label[1:5, 2:8, 3:10] = 1
    label[2:4, 4:6, 5:7 + index % 3] = 2
    return image, label


def make_atlas(root: Path, nested_twice: bool = False) -> Path:
    """An ATLAS-like release with the quirks of real downloads; returns its ``train`` folder."""
    release = root / RELEASE / RELEASE if nested_twice else root / RELEASE
    train = release / "train"
    for i in ATLAS_INDICES:
        image, label = _case_arrays(i)
        _write(train / "imagesTr" / f"im{i}.nii.gz", image)
        origin = ORIGIN
        if i == 1:
            label = label.astype(np.float32)  # float label file
        if i == 2:
            origin = (ORIGIN[0] + 2e-5, ORIGIN[1] - 1e-5, ORIGIN[2])  # float noise in the label header
        _write(train / "labelsTr" / f"lb{i}.nii.gz", label, origin=origin)
    (train / "dataset.json").write_text(json.dumps({"name": "ATLAS", "description": "original release", "numTraining": 4}))
    (train / "patient_info_train.json").write_text(json.dumps({"0": {"phase": "portal venous"}}))
    return train


def _assert_case_matches(dataset: RawDataset, case: str, image_src: Path, label_src: np.ndarray) -> None:
    image_out = dataset.image_files(case)[0]
    label_out = dataset.label_file(case)
    out_array, out_geometry = read_image(image_out)
    src_array, src_geometry = read_image(image_src)
    np.testing.assert_array_equal(out_array, src_array)
    assert out_geometry == src_geometry
    label = sitk.ReadImage(str(label_out))
    assert label.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), label_src)
    image = sitk.ReadImage(str(image_src))
    assert label.GetSize() == image.GetSize()
    assert label.GetSpacing() == image.GetSpacing()
    assert label.GetOrigin() == image.GetOrigin()
    assert label.GetDirection() == image.GetDirection()


@pytest.mark.parametrize("level", ["top", "release", "train", "nested_twice", "zip"])
def test_atlas_converts_from_any_level(tmp_path, stores, level):
    download = tmp_path / "download"
    train = make_atlas(download, nested_twice=level == "nested_twice")
    source = {"top": download, "release": download / RELEASE, "train": train, "nested_twice": download}.get(level)
    if level == "zip":
        source = Path(shutil.make_archive(str(tmp_path / RELEASE), "zip", root_dir=download))
    out = convert_atlas(source, "ATLAS")

    assert out == stores["raw"] / "ATLAS"
    dataset = RawDataset(out)
    assert dataset.training_cases() == sorted(f"im{i}" for i in ATLAS_INDICES)
    assert dataset.info.num_training == len(ATLAS_INDICES)
    assert dataset.info.labels == {"background": 0, "liver": 1, "tumor": 2}
    for i in ATLAS_INDICES:
        _assert_case_matches(dataset, f"im{i}", train / "imagesTr" / f"im{i}.nii.gz", _case_arrays(i)[1])
        # an unchanged .nii.gz image is copied byte for byte
        assert (out / "imagesTr" / f"im{i}_0000.nii.gz").read_bytes() == (train / "imagesTr" / f"im{i}.nii.gz").read_bytes()
    assert (out / "patient_info_train.json").read_bytes() == (train / "patient_info_train.json").read_bytes()
    source_record = dataset.info.extra["source"]
    assert source_record["release"] == RELEASE
    assert source_record["original_description"] == "original release"
    assert sorted(p.name for p in stores["raw"].iterdir()) == ["ATLAS"]  # no staging or extraction leftovers


def test_atlas_patient_info_becomes_case_metadata(tmp_path, stores):
    train = make_atlas(tmp_path / "download")
    patient_info = [
        {"id": 0, "contrast_phase": "arterial", "machine": "Siemens", "sequence": "VIBE"},
        {"id": 10, "contrast_phase": "portal", "machine": "GE", "sequence": "LAVA"},
        {"id": 42, "contrast_phase": "delayed"},  # no such case: ignored
    ]
    (train / "patient_info_train.json").write_text(json.dumps(patient_info))
    dataset = RawDataset(convert_atlas(train, "ATLAS"))
    assert load_case_metadata(dataset) == {
        "im0": {"contrast_phase": "arterial", "machine": "Siemens", "sequence": "VIBE"},
        "im10": {"contrast_phase": "portal", "machine": "GE", "sequence": "LAVA"},
    }
    # an unusable patient info file is copied but gives no metadata, and conversion still succeeds
    (train / "patient_info_train.json").write_text("{broken")
    dataset = RawDataset(convert_atlas(train, "ATLAS", overwrite=True))
    assert (dataset.root / "patient_info_train.json").read_text() == "{broken"
    assert load_case_metadata(dataset) == {}


def test_atlas_reports_every_problem_together_and_writes_nothing(tmp_path, stores):
    train = make_atlas(tmp_path / "download")
    (train / "labelsTr" / "lb2.nii.gz").unlink()  # image without label
    _write(train / "labelsTr" / "lb20.nii.gz", np.zeros(SHAPE, np.uint8))  # label without image
    bad_value = _case_arrays(1)[1]
    bad_value[0, 0, 0] = 3
    _write(train / "labelsTr" / "lb1.nii.gz", bad_value)
    fractional = _case_arrays(10)[1].astype(np.float32)
    fractional[0, 0, :2] = 1.5
    _write(train / "labelsTr" / "lb10.nii.gz", fractional)
    complete = (train / "imagesTr" / "im0.nii.gz").read_bytes()
    (train / "imagesTr" / "im0.nii.gz").write_bytes(complete[: len(complete) // 2])

    with pytest.raises(LiversegError) as info:
        convert_atlas(train, "ATLAS")
    message = str(info.value)
    assert "5 problem(s)" in message
    assert "im2.nii.gz: no label file" in message and "lb2.nii.gz" in message
    assert "lb20.nii.gz: no image file" in message
    assert "lb1.nii.gz: holds label value(s) [3]" in message
    assert "lb10.nii.gz: 2 voxel(s) hold non-integral values (e.g. [1.5])" in message
    assert "im0.nii.gz: is truncated" in message
    assert list(stores["raw"].iterdir()) == []


def test_label_header_beyond_tolerance_is_an_error_unless_tolerance_is_raised(tmp_path, stores):
    train = make_atlas(tmp_path / "download")
    label = _case_arrays(0)[1]
    _write(train / "labelsTr" / "lb0.nii.gz", label, origin=(ORIGIN[0] + 0.5, ORIGIN[1], ORIGIN[2]))
    with pytest.raises(LiversegError, match=r"lb0\.nii\.gz: origin .* \(max difference 0\.5\).*--tolerance"):
        convert_atlas(train, "ATLAS")
    out = convert_atlas(train, "ATLAS", tolerance=1.0)
    _assert_case_matches(RawDataset(out), "im0", train / "imagesTr" / "im0.nii.gz", label)


def test_existing_dataset_is_kept_unless_overwrite(tmp_path, stores):
    train = make_atlas(tmp_path / "download")
    out = convert_atlas(train, "ATLAS")
    (out / "stale.txt").write_text("from an earlier conversion")
    with pytest.raises(LiversegError, match="already exists.*--overwrite"):
        convert_atlas(train, "ATLAS")
    assert (out / "stale.txt").exists()
    assert convert_atlas(train, "ATLAS", overwrite=True) == out
    assert not (out / "stale.txt").exists()
    assert len(RawDataset(out).training_cases()) == len(ATLAS_INDICES)


def test_parallel_conversion_gives_the_same_dataset(tmp_path, stores):
    train = make_atlas(tmp_path / "download")
    serial = RawDataset(convert_atlas(train, "Serial"))
    parallel = RawDataset(convert_atlas(train, "Parallel", num_workers=2))
    assert serial.training_cases() == parallel.training_cases()
    for case in serial.training_cases():
        for a, b in ((serial.image_files(case)[0], parallel.image_files(case)[0]), (serial.label_file(case), parallel.label_file(case))):
            array_a, geometry_a = read_image(a)
            array_b, geometry_b = read_image(b)
            np.testing.assert_array_equal(array_a, array_b)
            assert geometry_a == geometry_b


def test_unrecognisable_folder_says_what_was_expected_and_found(tmp_path, stores):
    folder = tmp_path / "download"
    (folder / "scans").mkdir(parents=True)
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(LiversegError, match=r"expected imagesTr/im<N>\.nii\.gz.*Found: readme\.txt, scans/"):
        convert_atlas(folder, "ATLAS")
    with pytest.raises(LiversegError, match=r"expected volume-<i>\.nii.*Found: readme\.txt, scans/"):
        convert_lits(folder, "LiTS")


def make_lits(root: Path) -> dict[int, tuple[Path, np.ndarray, np.ndarray]]:
    """LiTS-like folders: uncompressed .nii in two batches, one float volume, one float noisy label."""
    cases = {}
    for index, batch in ((0, 1), (3, 1), (12, 2)):
        image, label = _case_arrays(index)
        folder = root / f"Training Batch {batch}"
        volume = folder / f"volume-{index}.nii"
        _write(volume, image.astype(np.float32) if index == 3 else image, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
        if index == 12:
            _write(folder / f"segmentation-{index}.nii", label.astype(np.float32), origin=(ORIGIN[0], ORIGIN[1] + 1e-5, ORIGIN[2]),
                   direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
        else:
            _write(folder / f"segmentation-{index}.nii", label, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
        cases[index] = (volume, image, label)
    return cases


def test_lits_converts_nested_batches_to_compressed_cases(tmp_path, stores):
    cases = make_lits(tmp_path / "LiTS")
    out = convert_lits(tmp_path / "LiTS", "LiTS")
    dataset = RawDataset(out)
    assert dataset.training_cases() == ["lits_000", "lits_003", "lits_012"]
    assert dataset.info.channel_names == {"0": "CT"}
    for index, (volume, image, label) in cases.items():
        case = f"lits_{index:03d}"
        _assert_case_matches(dataset, case, volume, label)
        stored = sitk.ReadImage(str(dataset.image_files(case)[0]))
        assert stored.GetPixelID() == sitk.sitkInt16  # the integral float volume is stored losslessly as int16
        np.testing.assert_array_equal(sitk.GetArrayFromImage(stored), image)


def test_lits_missing_segmentation_is_reported(tmp_path, stores):
    make_lits(tmp_path / "LiTS")
    (tmp_path / "LiTS" / "Training Batch 2" / "segmentation-12.nii").unlink()
    with pytest.raises(LiversegError, match=r"volume-12\.nii: no label file \(expected .*Training Batch 2/segmentation-12\.nii\)"):
        convert_lits(tmp_path / "LiTS", "LiTS")


def test_cli_prints_the_dataset_folder_and_fails_cleanly(tmp_path, stores, capsys):
    train = make_atlas(tmp_path / "download")
    assert convert_main(["atlas", "-i", str(train), "-d", "ATLAS"]) == 0
    assert capsys.readouterr().out.strip() == str(stores["raw"] / "ATLAS")
    assert convert_main(["atlas", "-i", str(train), "-d", "ATLAS"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "already exists" in err and "Traceback" not in err
