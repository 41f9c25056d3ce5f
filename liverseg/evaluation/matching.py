"""Pair prediction files with reference label files by case name.

Names are compared after removing the file ending and an nnU-Net channel suffix (``_0000``), and
ATLAS 2023's naming is understood: prediction ``im<N>`` belongs to label ``lb<N>`` (leading zeros
ignored). Every prediction must find its reference; references without a prediction are reported and
left out, because a prediction folder often holds one cross-validation fold only. The lesion maps
that ``liverseg_predict --lesion-maps`` writes beside the label maps (``<case>_lesions.nii.gz``)
are not predictions and are skipped.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from liverseg.errors import LiversegError
from liverseg.io.images import IMAGE_SUFFIXES, image_suffix

log = logging.getLogger(__name__)

_CHANNEL = re.compile(r"^(?P<case>.+)_\d{4}$")
_ATLAS = re.compile(r"^(?:im|lb)(?P<number>\d+)$")
LESION_MAP_SUFFIX = "_lesions"


@dataclass(frozen=True)
class CaseFiles:
    """One case to evaluate: its name, one reference file per rater, and the prediction file."""

    case: str
    references: tuple[Path, ...]
    prediction: Path


def case_name(path: str | Path) -> str:
    """File name without its image ending and without an nnU-Net channel suffix ``_0000``."""
    name = Path(path).name
    stem = name[: -len(image_suffix(name))] if image_suffix(name) else name
    match = _CHANNEL.match(stem)
    return match.group("case") if match else stem


def case_key(path: str | Path) -> str:
    """Key under which a file is matched: its case name, with ATLAS ``im<N>``/``lb<N>`` made equal."""
    name = case_name(path)
    match = _ATLAS.match(name)
    return f"atlas#{int(match.group('number'))}" if match else name


def label_folder(folder: str | Path, role: str = "reference") -> Path:
    """The folder holding label files: ``folder`` itself, or its ``labelsTr`` for a raw dataset folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LiversegError(f"{folder}: {role} folder not found")
    if not _image_files(folder) and (folder / "labelsTr").is_dir():
        log.info("%s holds no label files; using its labelsTr folder", folder)
        return folder / "labelsTr"
    return folder


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and image_suffix(p.name))


def files_by_key(folder: str | Path, role: str = "reference") -> dict[str, Path]:
    """Image files of a folder by :func:`case_key`; two files of one case are an error."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    for path in _image_files(folder):
        key = case_key(path)
        if key in found:
            raise LiversegError(
                f"{folder}: {found[key].name} and {path.name} are the same case for matching; keep one file per case "
                f"in the {role} folder"
            )
        found[key] = path
    return found


def match_cases(references: str | Path | Sequence[str | Path], prediction: str | Path) -> list[CaseFiles]:
    """Cases present in the prediction folder, each with its file in every reference folder."""
    reference_dirs = [references] if isinstance(references, (str, Path)) else list(references)
    if not reference_dirs:
        raise LiversegError("give at least one reference folder")
    prediction_dir = Path(prediction)
    if not prediction_dir.is_dir():
        raise LiversegError(f"{prediction_dir}: prediction folder not found")
    predictions = _without_lesion_maps(files_by_key(prediction_dir, "prediction"))
    if not predictions:
        raise LiversegError(f"{prediction_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) to evaluate")
    per_rater = []
    for directory in reference_dirs:
        directory = label_folder(directory)
        labels = files_by_key(directory)
        if not labels:
            raise LiversegError(f"{directory}: no label files found in the reference folder")
        missing = sorted(predictions[k].name for k in predictions if k not in labels)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise LiversegError(
                f"{directory}: no reference label for {len(missing)} prediction(s) of {prediction_dir}: {shown}. "
                "Predictions are matched by case name (<case>.nii.gz or <case>_0000.nii.gz, ATLAS im<N> to lb<N>)"
            )
        unused = sorted(path.name for k, path in labels.items() if k not in predictions)
        if unused:
            log.warning("%s: %d reference case(s) have no prediction and are not evaluated (%s%s)",
                        directory, len(unused), ", ".join(unused[:5]), ", ..." if len(unused) > 5 else "")
        per_rater.append(labels)
    return [
        CaseFiles(case=case_name(path), references=tuple(labels[key] for labels in per_rater), prediction=path)
        for key, path in sorted(predictions.items(), key=lambda item: _natural(case_name(item[1])))
    ]


def _without_lesion_maps(predictions: dict[str, Path]) -> dict[str, Path]:
    """The predictions minus the lesion instance maps ``<case>_lesions.*`` of cases that are present."""
    names = {case_name(path) for path in predictions.values()}
    maps = {key for key, path in predictions.items()
            if case_name(path).endswith(LESION_MAP_SUFFIX) and case_name(path)[: -len(LESION_MAP_SUFFIX)] in names}
    if maps:
        log.info("skipping %d lesion map(s) (<case>%s.*) beside the label maps", len(maps), LESION_MAP_SUFFIX)
    return {key: path for key, path in predictions.items() if key not in maps}


def _natural(name: str) -> list[object]:
    """Sort key putting ``im2`` before ``im10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
