"""Per-case metadata: the ATLAS patient info in either shape, and case_metadata.json on disk."""
from __future__ import annotations

import json
import logging

import pytest

from liverseg.data.metadata import (
    CASE_METADATA_FILE,
    case_metadata_from_atlas_patient_info,
    load_case_metadata,
    strata_from_metadata,
)
from liverseg.data.splits import make_splits
from liverseg.errors import LiversegError
from liverseg.io.dataset import ATLAS_LABELS, DatasetInfo, RawDataset, write_dataset_json

CASES = ["im0", "im1", "im2", "im10"]
# What we expect for every shape of the file below (attributes as text, contrast_phase added).
EXPECTED = {
    "im0": {"contrast_phase": "arterial", "machine": "Siemens Aera", "sequence": "VIBE", "slice_mm": "3"},
    "im1": {"contrast_phase": "portal", "machine": "GE Signa", "sequence": "LAVA", "slice_mm": "2.5"},
    "im10": {"contrast_phase": "unkown", "machine": "Philips Ingenia", "sequence": "THRIVE", "slice_mm": "4"},
}
RECORDS = {
    0: {"contrast_phase": "arterial", "machine": "Siemens Aera", "sequence": "VIBE", "slice_mm": 3.0},
    1: {"contrast_phase": "portal", "machine": "GE Signa", "sequence": "LAVA", "slice_mm": 2.5},
    10: {"contrast_phase": "unkown", "machine": "Philips Ingenia", "sequence": "THRIVE", "slice_mm": 4},
}


@pytest.mark.parametrize("key", ["{n}", "im{n}", "im{n}.nii.gz", "lb{n}"])
def test_dictionary_keyed_by_case_in_any_spelling(key):
    info = {key.format(n=n): dict(r) for n, r in RECORDS.items()}
    assert case_metadata_from_atlas_patient_info(info, CASES) == EXPECTED


@pytest.mark.parametrize(
    ("id_key", "value"),
    [("id", "{n}"), ("patient", "{n}"), ("Image", "imagesTr/im{n}.nii.gz"), ("im", "im{n}"), ("filename", "im{n}.nii.gz"), ("id", None)],
)
def test_list_of_records_naming_their_case(id_key, value):
    # value None: the id is an integer, as a JSON list written by a script might have it
    info = [{id_key: (n if value is None else value.format(n=n)), **r} for n, r in RECORDS.items()]
    assert case_metadata_from_atlas_patient_info(info, CASES) == EXPECTED


def test_phase_under_another_name_is_copied_and_nested_values_flattened():
    info = {"2": {"Phase": "delayed", "scanner": {"vendor": "GE", "field_T": 1.5}, "notes": None, "tags": ["a"]}}
    assert case_metadata_from_atlas_patient_info(info, CASES) == {
        "im2": {"Phase": "delayed", "contrast_phase": "delayed", "scanner/vendor": "GE", "scanner/field_T": "1.5"}
    }


def test_unmatched_records_are_reported_and_skipped(caplog):
    info = {"0": {"phase": "arterial"}, "99": {"phase": "portal"}, "version": "1.0", "x": {"phase": "?"}}
    with caplog.at_level(logging.WARNING):
        metadata = case_metadata_from_atlas_patient_info(info, CASES)
    assert metadata == {"im0": {"phase": "arterial", "contrast_phase": "arterial"}}
    assert "3 record(s) match no case" in caplog.text
    with pytest.raises(LiversegError, match="object or list"):
        case_metadata_from_atlas_patient_info("arterial", CASES)  # type: ignore[arg-type]


def _dataset(root, cases=CASES):
    (root / "imagesTr").mkdir(parents=True)
    for case in cases:
        (root / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"")
    write_dataset_json(root, DatasetInfo({"0": "MRI"}, dict(ATLAS_LABELS), len(cases)))
    return RawDataset(root)


def test_load_case_metadata_and_strata(tmp_path):
    dataset = _dataset(tmp_path / "ds")
    assert load_case_metadata(dataset) == {}
    (dataset.root / CASE_METADATA_FILE).write_text(json.dumps({"im0": {"contrast_phase": "arterial", "slices": 40}, "im1": {}}))
    metadata = load_case_metadata(dataset)
    assert metadata == {"im0": {"contrast_phase": "arterial", "slices": "40"}, "im1": {}}
    strata = strata_from_metadata(metadata, "contrast_phase", CASES)
    assert strata == {"im0": "arterial", "im1": "unknown", "im2": "unknown", "im10": "unknown"}
    assert {c for s in make_splits(CASES, num_folds=2, strata=strata) for c in s["val"]} == set(CASES)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "cannot be read as JSON"), ("[1, 2]", "expected an object"), ('{"im0": "arterial"}', "must be an object"),
     ('{"im0": {"phase": ["a", "b"]}}', "non-scalar")],
)
def test_bad_metadata_file_names_the_file(tmp_path, content, message):
    dataset = _dataset(tmp_path / "ds")
    (dataset.root / CASE_METADATA_FILE).write_text(content)
    with pytest.raises(LiversegError, match=message) as info:
        load_case_metadata(dataset)
    assert CASE_METADATA_FILE in str(info.value)
