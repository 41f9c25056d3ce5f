"""Convert the ATLAS 2023 training release (contrast-enhanced liver MRI) into a raw dataset.

The release is a zip ``atlas-train-dataset-1.0.1.zip`` holding ``train/imagesTr/im<N>.nii.gz`` and
``train/labelsTr/lb<N>.nii.gz`` (N = 0..59, not zero-padded), a ``dataset.json`` and
``patient_info_train.json``, sometimes nested one folder deeper. Case ids keep the ATLAS names
(``im<N>``), so predictions are written as ``im<N>.nii.gz`` as the challenge expects.
``patient_info_train.json`` is copied as it is and also translated into ``case_metadata.json``
(contrast phase, sequence, scanner per case; :mod:`liverseg.data.metadata`), by which the
cross-validation folds are stratified.
"""
from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

from liverseg.data.metadata import CASE_METADATA_FILE, case_metadata_from_atlas_patient_info
from liverseg.errors import LiversegError
from liverseg.io.atomic import read_json, write_json
from liverseg.io.converters.common import (
    default_labels,
    is_ignored,
    nothing_found,
    opened_source,
    output_folder,
    pair_cases,
    write_raw_dataset,
)
from liverseg.io.dataset import DatasetInfo
from liverseg.paths import raw_root

log = logging.getLogger(__name__)

_IMAGE = re.compile(r"^im(\d+)\.nii(\.gz)?$")
_LABEL = re.compile(r"^lb(\d+)\.nii(\.gz)?$")
_MAX_DEPTH = 4
_EXPECTED = "imagesTr/im<N>.nii.gz and labelsTr/lb<N>.nii.gz, directly or inside train/ or atlas-train-dataset-*/train/"
PATIENT_INFO = "patient_info_train.json"


def convert_atlas(
    source: Path, dataset_name: str = "ATLAS", overwrite: bool = False, num_workers: int = 1, tolerance: float = 1e-3
) -> Path:
    """Convert the ATLAS 2023 training release (folder at any level, or the zip) into ``$LIVERSEG_RAW/<dataset_name>``.

    Returns the dataset folder. Every problem found (missing partners, bad label values, label
    headers that do not match their image) is reported together in one LiversegError, and then
    nothing is written. ``tolerance`` is the largest header difference (mm, or direction cosine)
    between image and label that is treated as float noise and repaired.
    """
    source = Path(source).expanduser().resolve()
    target = output_folder(dataset_name, overwrite)
    with opened_source(source, raw_root()) as folder:
        train = find_atlas_train(folder)
        images = _indexed(train / "imagesTr", _IMAGE)
        labels = _indexed(train / "labelsTr", _LABEL)
        cases, problems = pair_cases(images, labels, lambda case_id: train / "labelsTr" / f"lb{case_id[2:]}.nii.gz")
        info = DatasetInfo(
            channel_names={"0": "MRI"},
            labels=default_labels(),
            num_training=len(cases),
            file_ending=".nii.gz",
            extra={
                "name": dataset_name,
                "description": "ATLAS 2023 liver and liver tumour segmentation, contrast-enhanced T1 MRI (training release)",
                "source": _source_record(source, train, folder),
            },
        )
        patient_info = _find_upwards(train, folder, PATIENT_INFO)
        extra_files = [patient_info] if patient_info is not None else []
        with tempfile.TemporaryDirectory() as scratch:
            metadata = _case_metadata(patient_info, [c.case_id for c in cases])
            if metadata:
                write_json(Path(scratch) / CASE_METADATA_FILE, metadata)
                extra_files.append(Path(scratch) / CASE_METADATA_FILE)
            return write_raw_dataset(cases, problems, target, info, source, extra_files, num_workers, tolerance)


def find_atlas_train(folder: Path) -> Path:
    """The folder holding ``imagesTr/im<N>.nii.gz`` at or below ``folder`` (at most a few levels deep)."""
    level = [folder]
    for _ in range(_MAX_DEPTH + 1):
        found = [d for d in level if _has_atlas_images(d)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listing = ", ".join(str(d) for d in found)
            raise LiversegError(f"{folder}: holds {len(found)} ATLAS training folders ({listing}); point -i at one of them")
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not is_ignored(c)]
    raise nothing_found(folder, _EXPECTED)


def _has_atlas_images(folder: Path) -> bool:
    images = folder / "imagesTr"
    return images.is_dir() and any(_IMAGE.match(p.name) for p in images.iterdir())


def _indexed(folder: Path, pattern: re.Pattern[str]) -> dict[str, list[Path]]:
    """Files of ``folder`` matching ``pattern``, keyed by case id ``im<N>``."""
    found: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return found
    skipped = []
    for path in folder.iterdir():
        if is_ignored(path):
            continue
        match = pattern.match(path.name)
        if match:
            found.setdefault(f"im{int(match.group(1))}", []).append(path)
        else:
            skipped.append(path.name)
    if skipped:
        log.warning("%s: ignoring %d file(s) not named like the ATLAS release: %s", folder, len(skipped), ", ".join(sorted(skipped)[:10]))
    return found


def _case_metadata(patient_info: Path | None, case_ids: list[str]) -> dict[str, dict[str, str]]:
    """Per-case attributes (contrast phase, ...) from the release's patient info, {} if unusable."""
    if patient_info is None:
        return {}
    try:
        return case_metadata_from_atlas_patient_info(read_json(patient_info), case_ids)
    except (OSError, ValueError, LiversegError) as e:
        log.warning("%s: not usable as per-case metadata (%s); folds will not be stratified by contrast phase", patient_info, e)
        return {}


def _find_upwards(start: Path, top: Path, name: str) -> Path | None:
    """``name`` in ``start`` or one of its parents up to ``top``."""
    for folder in (start, *start.parents):
        if (folder / name).is_file():
            return folder / name
        if folder == top:
            break
    return None


def _source_record(source: Path, train: Path, top: Path) -> dict[str, object]:
    """What dataset.json records about where the data came from."""
    release = source.stem if source.is_file() else next(
        (p.name for p in (train, *train.parents) if p.name.startswith("atlas-train-dataset")), train.name
    )
    record: dict[str, object] = {"dataset": "ATLAS 2023", "release": release, "path": str(source)}
    original = _find_upwards(train, top, "dataset.json")
    if original is not None:
        try:
            content = read_json(original)
        except (ValueError, OSError):
            log.warning("%s: not valid JSON; not recorded in the converted dataset.json", original)
        else:
            record.update({f"original_{k}": content[k] for k in ("name", "description", "reference", "licence") if k in content})
    return record
