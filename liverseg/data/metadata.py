"""Per-case attributes (contrast phase, sequence, scanner, ...) for stratified folds and reports.

A raw dataset may hold ``case_metadata.json``: one flat dictionary of text attributes per case::

    {"im0": {"contrast_phase": "arterial", "machine": "...", "sequence": "..."}, ...}

The ATLAS converter writes it from the release's ``patient_info_train.json``
(:func:`case_metadata_from_atlas_patient_info`); any other dataset can be given one by hand.
:func:`strata_from_metadata` turns one attribute into the ``strata`` that
:func:`liverseg.data.splits.make_splits` balances over the folds.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from liverseg.errors import LiversegError
from liverseg.io.atomic import read_json
from liverseg.io.dataset import RawDataset
from liverseg.io.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

CASE_METADATA_FILE = "case_metadata.json"
CONTRAST_PHASE = "contrast_phase"
UNKNOWN = "unknown"
# Keys that name the case a record belongs to (compared in lower case, spaces as underscores).
_ID_KEYS = ("id", "case", "case_id", "patient", "patient_id", "patientid", "subject", "image", "im",
            "filename", "file", "file_name", "name")
# Keys that mean "contrast phase", by priority; the first one present is copied to CONTRAST_PHASE.
_PHASE_KEYS = (CONTRAST_PHASE, "phase", "contrastphase", "contrast_agent_phase", "enhancement_phase", "contrast")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def load_case_metadata(dataset: RawDataset) -> dict[str, dict[str, str]]:
    """The per-case attributes in ``<raw>/case_metadata.json``, or ``{}`` when the file is absent.

    Values are returned as text (numbers are converted), so they can serve as strata directly.
    """
    path = Path(dataset.root) / CASE_METADATA_FILE
    if not path.is_file():
        return {}
    try:
        content = read_json(path)
    except (OSError, ValueError) as e:
        raise LiversegError(f"{path}: cannot be read as JSON ({e}); fix or delete the file") from None
    if not isinstance(content, dict):
        raise LiversegError(
            f"{path}: expected an object {{case: {{attribute: value}}}}, got a {type(content).__name__}; fix or delete the file"
        )
    metadata: dict[str, dict[str, str]] = {}
    for case, attributes in content.items():
        if not isinstance(attributes, dict):
            raise LiversegError(f"{path}: the entry of case '{case}' must be an object {{attribute: value}}, got {attributes!r:.80}")
        bad = [k for k, v in attributes.items() if not _is_scalar(v)]
        if bad:
            raise LiversegError(f"{path}: case '{case}' has non-scalar attribute(s) {bad}; use one text or number per attribute")
        metadata[str(case)] = {str(k): _text(v) for k, v in attributes.items()}
    unknown_cases = sorted(set(metadata) - set(dataset.training_cases()) - set(dataset.test_cases()))
    if unknown_cases:
        log.warning("%s: %d case(s) not in the dataset: %s", path, len(unknown_cases), ", ".join(unknown_cases[:10]))
    return metadata


def strata_from_metadata(
    metadata: Mapping[str, Mapping[str, str]], attribute: str, cases: Sequence[str], missing: str = UNKNOWN
) -> dict[str, str]:
    """``{case: value of attribute}`` for every case, ``missing`` where a case lacks it (for splits)."""
    return {case: str(metadata.get(case, {}).get(attribute, missing)) for case in cases}


def case_metadata_from_atlas_patient_info(patient_info: dict | list, case_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Per-case attributes from the ATLAS ``patient_info_train.json``, keyed by our case ids.

    The file's layout is not documented, so both plausible shapes are accepted:

    - a dictionary keyed by case: ``{"0": {...}}``, ``{"im0": {...}}`` or ``{"im0.nii.gz": {...}}``;
    - a list of records naming their case under a key such as ``id``, ``patient``, ``image``,
      ``im`` or ``filename`` (with values like ``0``, ``"im0"`` or ``"imagesTr/im0.nii.gz"``).

    A record's case is found by its exact id, else by its trailing number (``lb7``, ``7`` and
    ``im7.nii.gz`` all mean ``im7``). Every scalar attribute is kept as text (nested objects are
    flattened as ``outer/inner``); the first phase-like key (``phase``, ``contrast``, ...) is also
    copied to ``contrast_phase``, the attribute the planner stratifies by. Records that match no
    case are logged and skipped; cases without a record are absent from the result.
    """
    by_number = _cases_by_number(case_ids)
    known = set(case_ids)
    if isinstance(patient_info, dict):
        records = [(str(k), v) for k, v in patient_info.items()]
    elif isinstance(patient_info, list):
        records = [(None, r) for r in patient_info]
    else:
        raise LiversegError(f"patient info must be a JSON object or list, got a {type(patient_info).__name__}")

    result: dict[str, dict[str, str]] = {}
    unmatched: list[str] = []
    for key, record in records:
        if not isinstance(record, dict):
            unmatched.append(f"{key}: {record!r:.40}" if key is not None else f"{record!r:.40}")
            continue
        case = _match_case(key, known, by_number) if key is not None else None
        id_key = None
        if case is None:  # the dictionary key (if any) names no case: look inside the record
            id_key = _record_id_key(record)
            case = _match_case(str(record[id_key]), known, by_number) if id_key is not None else None
        if case is None:
            unmatched.append(key if key is not None else f"{record!r:.40}")
            continue
        attributes = _flatten({k: v for k, v in record.items() if k != id_key})
        by_normal = {_normal(k): v for k, v in attributes.items()}
        phase = next((by_normal[k] for k in _PHASE_KEYS if k in by_normal), None)
        if phase is not None:
            attributes.setdefault(CONTRAST_PHASE, phase)
        if case in result:
            log.warning("patient info: several records for case %s; using the last", case)
        result[case] = attributes
    if unmatched:
        log.warning("patient info: %d record(s) match no case and are ignored: %s", len(unmatched), ", ".join(unmatched[:10]))
    missing = [c for c in case_ids if c not in result]
    if missing:
        log.info("patient info: no record for %d case(s): %s", len(missing), ", ".join(missing[:10]))
    return result


def _cases_by_number(case_ids: Sequence[str]) -> dict[int, str]:
    """Case ids by their trailing number, for numbers that name exactly one case."""
    found: dict[int, list[str]] = {}
    for case in case_ids:
        if m := _TRAILING_NUMBER.search(case):
            found.setdefault(int(m.group(1)), []).append(case)
    return {n: cases[0] for n, cases in found.items() if len(cases) == 1}


def _match_case(identifier: str, known: set[str], by_number: dict[int, str]) -> str | None:
    name = identifier.replace("\\", "/").rsplit("/", 1)[-1].strip()
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name in known:
        return name
    m = _TRAILING_NUMBER.search(name)
    return by_number.get(int(m.group(1))) if m else None


def _record_id_key(record: dict[str, Any]) -> str | None:
    """The key of ``record`` that names its case (by priority of :data:`_ID_KEYS`), if any."""
    candidates = {_normal(k): k for k, v in record.items() if isinstance(v, (str, int)) and not isinstance(v, bool)}
    return next((candidates[k] for k in _ID_KEYS if k in candidates), None)


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        elif _is_scalar(value) and value is not None:
            out[name] = _text(value)
    return out


def _normal(key: str) -> str:
    return str(key).strip().lower().replace(" ", "_").replace("-", "_")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)
