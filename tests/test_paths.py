"""Datasets are found by name, nnU-Net folder name or id; unknown names list what exists."""
from __future__ import annotations

import json
import logging

import pytest

from liverseg import paths
from liverseg.errors import LiversegError


def _make(root, name):
    (root / name).mkdir()
    (root / name / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0}}))


def test_lookup_by_name_folder_and_id(stores):
    _make(stores["raw"], "Dataset501_ATLAS")
    _make(stores["raw"], "Phantom")
    assert paths.dataset_folder_name("ATLAS") == "Dataset501_ATLAS"
    assert paths.dataset_folder_name("Dataset501_ATLAS") == "Dataset501_ATLAS"
    assert paths.dataset_folder_name("501") == "Dataset501_ATLAS"
    assert paths.dataset_folder_name("Phantom") == "Phantom"
    assert paths.preprocessed_dataset_dir("501") == stores["preprocessed"] / "Dataset501_ATLAS"
    assert paths.results_dataset_dir("ATLAS") == stores["results"] / "Dataset501_ATLAS"


def test_unknown_name_lists_existing_datasets(stores):
    _make(stores["raw"], "Dataset501_ATLAS")
    _make(stores["raw"], "Phantom")
    with pytest.raises(LiversegError) as info:
        paths.dataset_folder_name("LiTS")
    assert "Dataset501_ATLAS" in str(info.value) and "Phantom" in str(info.value)
    with pytest.raises(LiversegError, match="none"):
        paths.dataset_folder_name("7", root=stores["raw"] / "empty")


def test_ambiguous_name_is_an_error(stores):
    _make(stores["raw"], "Dataset501_ATLAS")
    _make(stores["raw"], "Dataset502_ATLAS")
    with pytest.raises(LiversegError, match="ambiguous"):
        paths.dataset_folder_name("ATLAS")


def test_unset_variable_falls_back_under_home_and_says_so(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("LIVERSEG_RESULTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(paths, "_warned", set())
    with caplog.at_level(logging.INFO, logger="liverseg.paths"):
        root = paths.results_root()
        paths.results_root()
    assert root == tmp_path / "liverseg_data" / "results"
    assert sum("LIVERSEG_RESULTS is not set" in r.message for r in caplog.records) == 1
