"""Pairing prediction files with reference files by case name."""
from __future__ import annotations

import logging

import pytest

from liverseg.errors import LiversegError
from liverseg.evaluation.matching import case_key, case_name, match_cases


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_case_names_and_keys():
    assert case_name("liver_7_0000.nii.gz") == "liver_7"
    assert case_name("liver_7.nii.gz") == "liver_7"
    assert case_name("case.nrrd") == "case"
    assert case_key("im12.nii.gz") == case_key("lb12.nii.gz") == case_key("lb012.nii.gz") == case_key("im12_0000.nii.gz")
    assert case_key("im12.nii.gz") != case_key("im1.nii.gz")
    assert case_key("liver_7_0000.nii.gz") == case_key("liver_7.nii.gz")


def test_atlas_naming_and_natural_order(tmp_path):
    refs = _touch(tmp_path / "labels", "lb0.nii.gz", "lb2.nii.gz", "lb10.nii.gz")
    preds = _touch(tmp_path / "preds", "im10.nii.gz", "im2.nii.gz", "im0.nii.gz", "summary.json", "notes.txt")
    cases = match_cases(refs, preds)
    assert [c.case for c in cases] == ["im0", "im2", "im10"]
    assert [c.references[0].name for c in cases] == ["lb0.nii.gz", "lb2.nii.gz", "lb10.nii.gz"]
    assert [c.prediction.name for c in cases] == ["im0.nii.gz", "im2.nii.gz", "im10.nii.gz"]


def test_nnunet_channel_suffix_and_exact_names(tmp_path):
    refs = _touch(tmp_path / "labels", "liver_1.nii.gz", "liver_2.nii.gz")
    preds = _touch(tmp_path / "preds", "liver_1_0000.nii.gz", "liver_2.nii.gz", ".tmp123_liver_3.nii.gz")
    cases = match_cases(refs, preds)
    assert [(c.case, c.references[0].name) for c in cases] == [("liver_1", "liver_1.nii.gz"), ("liver_2", "liver_2.nii.gz")]


def test_raw_dataset_folder_uses_labelsTr(tmp_path):
    _touch(tmp_path / "Dataset501_ATLAS" / "labelsTr", "a.nii.gz")
    _touch(tmp_path / "Dataset501_ATLAS" / "imagesTr", "a_0000.nii.gz")
    preds = _touch(tmp_path / "preds", "a.nii.gz")
    (case,) = match_cases(tmp_path / "Dataset501_ATLAS", preds)
    assert case.references[0] == tmp_path / "Dataset501_ATLAS" / "labelsTr" / "a.nii.gz"


def test_prediction_without_reference_is_an_error_naming_it(tmp_path):
    refs = _touch(tmp_path / "labels", "lb1.nii.gz")
    preds = _touch(tmp_path / "preds", "im1.nii.gz", "im5.nii.gz")
    with pytest.raises(LiversegError, match="im5.nii.gz"):
        match_cases(refs, preds)


def test_reference_without_prediction_is_reported_and_left_out(tmp_path, caplog):
    refs = _touch(tmp_path / "labels", "lb1.nii.gz", "lb2.nii.gz")
    preds = _touch(tmp_path / "preds", "im1.nii.gz")
    with caplog.at_level(logging.WARNING):
        cases = match_cases(refs, preds)
    assert [c.case for c in cases] == ["im1"]
    assert "lb2.nii.gz" in caplog.text


def test_two_files_of_one_case_are_an_error(tmp_path):
    refs = _touch(tmp_path / "labels", "lb1.nii.gz")
    preds = _touch(tmp_path / "preds", "im1.nii.gz", "lb1.nii.gz")
    with pytest.raises(LiversegError, match="same case"):
        match_cases(refs, preds)


def test_missing_and_empty_folders(tmp_path):
    preds = _touch(tmp_path / "preds", "a.nii.gz")
    with pytest.raises(LiversegError, match="not found"):
        match_cases(tmp_path / "nowhere", preds)
    with pytest.raises(LiversegError, match="no label files"):
        match_cases(_touch(tmp_path / "empty"), preds)
    with pytest.raises(LiversegError, match="no image files"):
        match_cases(preds, _touch(tmp_path / "nothing", "readme.txt"))


def test_several_raters_need_every_case(tmp_path):
    r1 = _touch(tmp_path / "r1", "a.nii.gz", "b.nii.gz")
    r2 = _touch(tmp_path / "r2", "a.nii.gz", "b.nrrd")
    preds = _touch(tmp_path / "preds", "a.nii.gz", "b.nii.gz")
    cases = match_cases([r1, r2], preds)
    assert [tuple(p.name for p in c.references) for c in cases] == [("a.nii.gz", "a.nii.gz"), ("b.nii.gz", "b.nrrd")]
    (r2 / "b.nrrd").unlink()
    with pytest.raises(LiversegError, match="r2.*b.nii.gz"):
        match_cases([r1, r2], preds)


def test_lesion_maps_beside_the_label_maps_are_not_predictions(tmp_path):
    refs = _touch(tmp_path / "labels", "lb1.nii.gz", "liver_2.nii.gz", "scan_lesions.nii.gz")
    preds = _touch(tmp_path / "preds", "im1.nii.gz", "im1_lesions.nii.gz", "im1.lesions.json",
                   "liver_2.nii.gz", "liver_2_lesions.nii.gz", "scan_lesions.nii.gz")
    cases = match_cases(refs, preds)
    # scan_lesions has no scan.nii.gz beside it: it is a case of its own.
    assert [c.prediction.name for c in cases] == ["im1.nii.gz", "liver_2.nii.gz", "scan_lesions.nii.gz"]
