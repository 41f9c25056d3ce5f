"""Folder runs on real files: naming, formats, DICOM, exact output geometry, --continue, sharding, failures, errors."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.errors import LiversegError
from liverseg.inference.predictor import Predictor
from liverseg.inference.run import SETTINGS_FILE, CaseInput, find_cases, predict_folder, select_part
from liverseg.io.atomic import read_json


@pytest.fixture(scope="module")
def predictor(trained) -> Predictor:
    """Fold 0 of the multiclass model, no mirroring, the plan's post-processing (a results folder, no environment needed)."""
    return Predictor.from_folder(trained.dataset_dir / "multiclass", folds=[0], tta=False)


def _copy_inputs(trained, folder: Path, cases=(0, 1, 2)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for k in cases:
        shutil.copy(trained.heldout / f"phantom_{k:03d}_0000.nii.gz", folder)
    return [f"phantom_{k:03d}" for k in cases]


def _write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """One file per slice with the position and orientation tags SimpleITK's series reader needs."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.7")
        s.SetMetaData("0020|0037", "\\".join(map(str, (direction[0], direction[3], direction[6],
                                                       direction[1], direction[4], direction[7]))))
        s.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0013", str(k))
        s.SetMetaData("0008|0060", "MR")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)


def _assert_same_grid(output: Path, source: sitk.Image) -> None:
    written = sitk.ReadImage(str(output))
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), rtol=0, atol=1e-6)


def test_every_output_has_its_inputs_grid_and_format(trained, predictor, tmp_path):
    inputs = tmp_path / "in"
    _copy_inputs(trained, inputs, (0,))
    base = sitk.ReadImage(str(trained.heldout / "phantom_001_0000.nii.gz"))
    sitk.WriteImage(sitk.DICOMOrient(base, "RAS"), str(inputs / "flipped.nii.gz"))  # plain naming, flipped storage
    rotated = sitk.Image(base)
    rotated.SetDirection(sitk.VersorRigid3DTransform((0.0, 0.1, 0.2, 0.974)).GetMatrix())  # oblique
    sitk.WriteImage(rotated, str(inputs / "oblique_0000.nrrd"))
    summary = predict_folder(inputs, tmp_path / "out", predictor, num_workers=0, lesion_maps=True)
    assert summary.predicted and sorted(summary.predicted) == ["flipped", "oblique", "phantom_000"] and not summary.failed
    out = tmp_path / "out"
    for case, source in (("phantom_000.nii.gz", "phantom_000_0000.nii.gz"), ("flipped.nii.gz", "flipped.nii.gz"),
                         ("oblique.nrrd", "oblique_0000.nrrd")):
        source_image = sitk.ReadImage(str(inputs / source))
        _assert_same_grid(out / case, source_image)
        stem = case.split(".")[0]
        _assert_same_grid(out / f"{stem}_lesions.nii.gz", source_image)
        report = read_json(out / f"{stem}.lesions.json")
        lesion_map = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{stem}_lesions.nii.gz")))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / case)))
        assert lesion_map.max() == report["num_lesions"] and np.array_equal(lesion_map > 0, label == 2)
    # the flipped copy holds the same voxels in the world as phantom_001 stored canonically
    reference = predict_folder(trained.heldout / "phantom_001_0000.nii.gz", tmp_path / "ref", predictor, num_workers=0)
    assert reference.predicted == ["phantom_001"]
    flipped_back = sitk.DICOMOrient(sitk.ReadImage(str(out / "flipped.nii.gz")), "LPS")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(flipped_back),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref" / "phantom_001.nii.gz"))))
    settings = read_json(out / SETTINGS_FILE)
    assert settings["pipeline"] == "multiclass" and settings["folds"] == [0] and settings["mirror_axes"] == {"multiclass": None}


def test_the_run_tables_hold_every_lesion_and_case(trained, predictor, tmp_path):
    cases = _copy_inputs(trained, tmp_path / "in")
    predict_folder(tmp_path / "in", tmp_path / "out", predictor, num_workers=0)
    reports = {c: read_json(tmp_path / "out" / f"{c}.lesions.json") for c in cases}
    with open(tmp_path / "out" / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == cases
    assert [int(r["num_lesions"]) for r in rows] == [reports[c]["num_lesions"] for c in cases]
    with open(tmp_path / "out" / "lesions.csv", newline="") as f:
        lesions = list(csv.DictReader(f))
    assert len(lesions) == sum(r["num_lesions"] for r in reports.values())


def test_a_dicom_series_folder_gives_a_nifti_with_the_series_geometry(trained, predictor, tmp_path):
    image = sitk.Cast(sitk.ReadImage(str(trained.heldout / "phantom_002_0000.nii.gz")), sitk.sitkInt16)
    image.SetDirection(sitk.VersorRigid3DTransform((0.0, 0.0, 0.3, 0.954)).GetMatrix())  # a proper rotation (det +1)
    image.SetOrigin((10.0, -20.0, 30.0))
    _write_dicom_series(image, tmp_path / "series_a")
    series = sitk.ImageSeriesReader()
    series.SetFileNames(series.GetGDCMSeriesFileNames(str(tmp_path / "series_a")))
    as_read = series.Execute()
    summary = predict_folder(tmp_path / "series_a", tmp_path / "out", predictor, num_workers=0)
    assert summary.predicted == ["series_a"]
    _assert_same_grid(tmp_path / "out" / "series_a.nii.gz", as_read)
    # a folder of series folders: each sub-folder is a case
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.copytree(tmp_path / "series_a", cohort / "patient1")
    assert [c.case_id for c in find_cases(cohort)] == ["patient1"]


def test_case_naming_rules(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b.nrrd", "c_0001.mha", "d_0000.nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    one = find_cases(tmp_path, num_channels=1)
    assert [(c.case_id, [p.name for p in c.sources], c.suffix) for c in one] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"], ".nii.gz"), ("b", ["b.nrrd"], ".nrrd"),
        ("c_0001", ["c_0001.mha"], ".mha"), ("d", ["d_0000.nii"], ".nii")]
    assert "the model expects 1 channel(s): a_0000.nii.gz" in one[0].problem and not one[1].problem
    two = {c.case_id: c.problem for c in find_cases(tmp_path, num_channels=2)}
    assert two["a"] == "" and "one image but the model expects 2 channels" in two["b"]
    assert [c.case_id for c in find_cases(tmp_path / "a_0000.nii.gz", num_channels=2)] == ["a"]
    assert [p.name for p in find_cases(tmp_path / "a_0000.nii.gz", 2)[0].sources] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    (tmp_path / "b.nii.gz").write_bytes(b"")
    with pytest.raises(LiversegError, match="case id.* b occur more than once"):
        find_cases(tmp_path)


def test_continue_skips_complete_cases_and_keeps_them_in_the_tables(trained, predictor, tmp_path):
    cases = _copy_inputs(trained, tmp_path / "in")
    out = tmp_path / "out"
    first = predict_folder(tmp_path / "in", out, predictor, num_workers=0, save_probabilities=True)
    assert first.predicted == cases
    (out / "phantom_001.nii.gz").unlink()  # incomplete: as if killed before the label map was written
    (out / "phantom_002.npz").unlink()  # incomplete: a file the run asks for is missing
    kept = (out / "phantom_000.nii.gz").stat().st_mtime_ns
    second = predict_folder(tmp_path / "in", out, predictor, num_workers=0, continue_=True, save_probabilities=True)
    assert second.skipped == ["phantom_000"] and sorted(second.predicted) == ["phantom_001", "phantom_002"]
    assert (out / "phantom_000.nii.gz").stat().st_mtime_ns == kept
    with open(out / "cases.csv", newline="") as f:
        assert [r["case_id"] for r in csv.DictReader(f)] == cases
    third = predict_folder(tmp_path / "in", out, predictor, num_workers=0, continue_=True, save_probabilities=True)
    assert third.skipped == cases and third.predicted == []
    without_continue = predict_folder(tmp_path / "in", out, predictor, num_workers=0)
    assert without_continue.predicted == cases


def test_parts_cover_every_case_exactly_once(trained, predictor, tmp_path):
    cases = [CaseInput(f"case{k:02d}", (Path(f"case{k:02d}.nii.gz"),), ".nii.gz") for k in (5, 1, 9, 3, 7, 0, 2)]
    for parts in (1, 2, 3, 7, 10):
        chosen = [c.case_id for p in range(parts) for c in select_part(cases, p, parts)]
        assert sorted(chosen) == sorted(c.case_id for c in cases) and len(set(chosen)) == len(chosen)
    assert [c.case_id for c in select_part(cases, 1, 3)] == ["case01", "case05"]
    for bad in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(LiversegError, match="--part-id|--num-parts"):
            select_part(cases, *bad)
    names = _copy_inputs(trained, tmp_path / "in")
    runs = [predict_folder(tmp_path / "in", tmp_path / "out", predictor, num_workers=0, part_id=p, num_parts=2) for p in (0, 1)]
    assert runs[0].predicted == [names[0], names[2]] and runs[1].predicted == [names[1]]
    assert (tmp_path / "out" / "lesions_part0.csv").is_file() and (tmp_path / "out" / "cases_part1.csv").is_file()


def test_a_failed_case_is_reported_and_the_others_finish(trained, predictor, tmp_path):
    inputs = tmp_path / "in"
    _copy_inputs(trained, inputs, (0, 2))
    (inputs / "broken_0000.nii.gz").write_bytes(b"this is not an image")
    flat = sitk.ReadImage(str(trained.heldout / "phantom_001_0000.nii.gz"))[:, :, 0]
    sitk.WriteImage(flat, str(inputs / "flat_0000.nii.gz"))
    volume = sitk.ReadImage(str(trained.heldout / "phantom_001_0000.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(inputs / "series4d_0000.nii.gz"))
    shutil.copy(trained.heldout / "phantom_001_0000.nii.gz", inputs / "twochannels_0000.nii.gz")
    shutil.copy(trained.heldout / "phantom_001_0000.nii.gz", inputs / "twochannels_0001.nii.gz")
    summary = predict_folder(inputs, tmp_path / "out", predictor, num_workers=2)
    assert sorted(summary.predicted) == ["phantom_000", "phantom_002"]
    assert sorted(summary.failed) == ["broken", "flat", "series4d", "twochannels"]
    assert "broken_0000.nii.gz: is not a readable gzip file" in summary.failed["broken"]
    assert "flat_0000.nii.gz" in summary.failed["flat"] and "got dimension 2" in summary.failed["flat"]
    assert "series4d_0000.nii.gz" in summary.failed["series4d"] and "got dimension 4" in summary.failed["series4d"]
    assert "model expects 1 channel(s)" in summary.failed["twochannels"]
    assert (tmp_path / "out" / "phantom_000.nii.gz").is_file() and not (tmp_path / "out" / "broken.nii.gz").exists()
    with pytest.raises(LiversegError, match=r"4 of 6 case\(s\) failed .*broken_0000.nii.gz"):
        summary.raise_for_failures()


def test_overlapping_workers_write_the_same_outputs_as_one_after_the_other(trained, predictor, tmp_path):
    cases = _copy_inputs(trained, tmp_path / "in")
    predict_folder(tmp_path / "in", tmp_path / "serial", predictor, num_workers=0)
    predict_folder(tmp_path / "in", tmp_path / "overlap", predictor, num_workers=2)
    for case in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "serial" / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "overlap" / f"{case}.nii.gz")))
        np.testing.assert_array_equal(a, b)
        assert read_json(tmp_path / "serial" / f"{case}.lesions.json") == read_json(tmp_path / "overlap" / f"{case}.lesions.json")


def test_saved_probabilities_of_two_folds_are_the_mean_of_each_folds(trained, tmp_path):
    _copy_inputs(trained, tmp_path / "in", (1,))
    saved = {}
    for folds in ([0], [1], [0, 1]):
        out = tmp_path / f"out{''.join(map(str, folds))}"
        predict_folder(tmp_path / "in", out, num_workers=0, save_probabilities=True,
                       model=trained.dataset_dir / "multiclass", folds=folds, tta=False)
        with np.load(out / "phantom_001.npz") as f:
            saved[tuple(folds)] = f["probabilities"].astype(np.float32)
    assert saved[(0, 1)].shape[0] == 3
    np.testing.assert_allclose(saved[(0, 1)], (saved[(0,)] + saved[(1,)]) / 2, atol=2e-3)
    assert np.abs(saved[(0, 1)] - saved[(0,)]).max() > 0.01 and np.abs(saved[(0, 1)] - saved[(1,)]).max() > 0.01


def test_clear_errors_before_any_work(trained, predictor, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LiversegError, match="empty: no images found"):
        predict_folder(tmp_path / "empty", tmp_path / "out", predictor)
    with pytest.raises(LiversegError, match="missing: input not found"):
        predict_folder(tmp_path / "missing", tmp_path / "out", predictor)
    _copy_inputs(trained, tmp_path / "in", (0,))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(LiversegError, match="a_file/out: the output folder cannot be created or written to"):
        predict_folder(tmp_path / "in", tmp_path / "a_file" / "out", predictor)
    with pytest.raises(LiversegError, match="the output folder is the input folder"):
        predict_folder(tmp_path / "in", tmp_path / "in", predictor)
    with pytest.raises(LiversegError, match="-np"):
        predict_folder(tmp_path / "in", tmp_path / "out", predictor, num_workers=-1)
