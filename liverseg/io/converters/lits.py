"""Convert the LiTS training data (liver tumour CT) into a raw dataset.

LiTS ships ``volume-<i>.nii`` and ``segmentation-<i>.nii`` (i = 0..130), often spread over
``Training Batch 1/`` and ``Training Batch 2/``; they are found at any depth below the given folder.
Case ids are ``lits_<i:03d>``: zero-padded so that listings sort in case order, and prefixed so that
LiTS cases stay distinguishable from ATLAS cases (``im<N>``) when datasets are combined. Images are
re-compressed as ``.nii.gz``; integral float volumes are stored as int16 (lossless, smaller, faster).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from liverseg.io.converters.common import (
    default_labels,
    is_ignored,
    natural_key,
    nothing_found,
    opened_source,
    output_folder,
    pair_cases,
    write_raw_dataset,
)
from liverseg.io.dataset import DatasetInfo
from liverseg.paths import raw_root

log = logging.getLogger(__name__)

_VOLUME = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")
_SEGMENTATION = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$")
_EXPECTED = "volume-<i>.nii and segmentation-<i>.nii (in any sub-folder, e.g. 'Training Batch 1/')"


def lits_case_id(index: int) -> str:
    """Raw-dataset case id of LiTS volume ``index``."""
    return f"lits_{index:03d}"


def convert_lits(
    source: Path, dataset_name: str = "LiTS", overwrite: bool = False, num_workers: int = 1, tolerance: float = 1e-3
) -> Path:
    """Convert the LiTS training data (folder, or one zip) into ``$LIVERSEG_RAW/<dataset_name>``.

    Returns the dataset folder. Every problem found is reported together in one LiversegError, and
    then nothing is written. ``tolerance`` is as in :func:`liverseg.io.converters.convert_atlas`.
    """
    source = Path(source).expanduser().resolve()
    target = output_folder(dataset_name, overwrite)
    with opened_source(source, raw_root()) as folder:
        volumes, segmentations = _find(folder)
        if not volumes and not segmentations:
            raise nothing_found(folder, _EXPECTED)
        volume_folder = {case_id: paths[0].parent for case_id, paths in volumes.items()}
        cases, problems = pair_cases(
            volumes,
            segmentations,
            lambda case_id: volume_folder[case_id] / f"segmentation-{int(case_id.removeprefix('lits_'))}.nii",
        )
        info = DatasetInfo(
            channel_names={"0": "CT"},
            labels=default_labels(),
            num_training=len(cases),
            file_ending=".nii.gz",
            extra={
                "name": dataset_name,
                "description": "LiTS liver tumour segmentation challenge, contrast-enhanced abdominal CT (training data)",
                "source": {"dataset": "LiTS", "path": str(source), "case_ids": "lits_<i:03d> from volume-<i>.nii"},
            },
        )
        return write_raw_dataset(cases, problems, target, info, source, (), num_workers, tolerance)


def _find(folder: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """LiTS volumes and segmentations at any depth below ``folder``, keyed by case id."""
    volumes: dict[str, list[Path]] = {}
    segmentations: dict[str, list[Path]] = {}
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(d for d in subfolders if not is_ignored(Path(d)))
        for name in sorted(files, key=natural_key):
            for pattern, found in ((_VOLUME, volumes), (_SEGMENTATION, segmentations)):
                match = pattern.match(name)
                if match:
                    found.setdefault(lits_case_id(int(match.group(1))), []).append(Path(directory) / name)
    return volumes, segmentations
