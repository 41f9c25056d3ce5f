"""dataset.json parsing and case discovery in the nnU-Net v2 raw layout."""
from __future__ import annotations

import json

import pytest

from liverseg.errors import LiversegError
from liverseg.io.dataset import ATLAS_LABELS, DatasetInfo, RawDataset, write_dataset_json


def test_cases_and_channels_are_discovered(tmp_path):
    info = DatasetInfo(channel_names={"0": "T1", "1": "T2"}, labels=ATLAS_LABELS, num_training=2, file_ending=".nrrd")
    write_dataset_json(tmp_path, info)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTs").mkdir()
    for case in ("b_case", "a_case"):
        for c in range(2):
            (tmp_path / "imagesTr" / f"{case}_{c:04d}.nrrd").touch()
    (tmp_path / "imagesTr" / "notes.txt").touch()
    (tmp_path / "imagesTs" / "t1_0000.nrrd").touch()
    ds = RawDataset(tmp_path)
    assert ds.training_cases() == ["a_case", "b_case"]
    assert ds.test_cases() == ["t1"]
    assert [p.name for p in ds.image_files("a_case")] == ["a_case_0000.nrrd", "a_case_0001.nrrd"]
    assert ds.label_file("a_case") == tmp_path / "labelsTr" / "a_case.nrrd"
    assert ds.info.num_channels == 2
    assert RawDataset(tmp_path).info == info


def test_msd_style_dataset_json_is_accepted(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "tumor"}, "numTraining": 3,
         "training": [{"image": "x", "label": "y"}]}))
    info = RawDataset(tmp_path).info
    assert info.labels == {"background": 0, "liver": 1, "tumor": 2}
    assert info.channel_names == {"0": "CT"}
    assert "training" not in info.extra


@pytest.mark.parametrize("content, message", [
    ({"labels": ATLAS_LABELS}, "channel_names"),
    ({"channel_names": {"0": "MRI"}}, "labels"),
    ({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "liver": [1, 2]}}, "region-based"),
    ({"channel_names": {"0": "MRI"}, "labels": ATLAS_LABELS, "file_ending": ".png"}, "file_ending"),
])
def test_bad_dataset_json_is_a_user_error(tmp_path, content, message):
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(LiversegError, match=message):
        RawDataset(tmp_path)


def test_missing_or_broken_dataset_json(tmp_path):
    with pytest.raises(LiversegError, match="no dataset.json"):
        RawDataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(LiversegError, match="not valid JSON"):
        RawDataset(tmp_path)
