"""A synthetic ATLAS-like raw dataset on disk: phantom cases written in the nnU-Net v2 layout.

The set has what a segmentation model must cope with in real data: anisotropic and varying
spacing, arbitrary intensity scales, several contrast phases, flipped storage orientations,
cases without tumours and cases with several touching ones. Cases are generated in parallel
processes; each case depends only on ``(seed, index)``. See :mod:`liverseg.data.phantom_case`.
"""
from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from liverseg.data.phantom_case import SIZES, PhantomCase, generate_case
from liverseg.errors import LiversegError
from liverseg.data.metadata import CASE_METADATA_FILE
from liverseg.io.atomic import atomic_output, write_json
from liverseg.io.dataset import ATLAS_LABELS, DatasetInfo, write_dataset_json

__all__ = ["PhantomCase", "generate_case", "generate_dataset", "case_id", "write_case"]

log = logging.getLogger(__name__)
FILE_ENDING = ".nii.gz"
CASES_JSON = "phantom_cases.json"


def case_id(index: int) -> str:
    """Identifier of case ``index`` (``phantom_000``)."""
    return f"phantom_{index:03d}"


def _stored_image(array: np.ndarray, case: PhantomCase) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in case.spacing[::-1]))
    image.SetOrigin(case.origin)
    if case.orientation != "LPS":
        image = sitk.DICOMOrient(image, case.orientation)
        image.SetDirection(case.direction)  # exact values, no float drift
    return image


def write_case(case: PhantomCase, root: Path, identifier: str) -> None:
    """Write one case's image (int16) and label (uint8) in its stored orientation, atomically."""
    for array, path in (
        (case.image.astype(np.int16), root / "imagesTr" / f"{identifier}_0000{FILE_ENDING}"),
        (case.label, root / "labelsTr" / f"{identifier}{FILE_ENDING}"),
    ):
        with atomic_output(path) as tmp:
            sitk.WriteImage(_stored_image(array, case), str(tmp), useCompression=True)


def _make_and_write(job: tuple[int, int, str, str, str]) -> dict:
    index, seed, size, root, identifier = job
    start = time.perf_counter()
    case = generate_case(index, seed, size)
    generated = time.perf_counter()
    write_case(case, Path(root), identifier)
    return {
        "case": identifier,
        "index": index,
        "shape": list(case.image.shape),
        "spacing": list(case.spacing),
        "orientation": case.orientation,
        "phase": case.phase,
        "lesion_diameters_mm": case.lesion_diameters_mm,
        "seconds_generate": round(generated - start, 3),
        "seconds_write": round(time.perf_counter() - generated, 3),
    }


def _prepare_folder(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise LiversegError(f"{root}: exists and is not a folder; choose another dataset name or --output-dir")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise LiversegError(
                f"{root}: dataset folder exists and is not empty; pass --overwrite to replace it, or choose another name"
            )
        log.info("overwriting %s", root)
        for name in ("imagesTr", "labelsTr"):
            shutil.rmtree(root / name, ignore_errors=True)
        for name in ("dataset.json", CASES_JSON, CASE_METADATA_FILE, "preview.png"):
            (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def generate_dataset(
    root: str | Path, num_cases: int, seed: int = 0, size: str = "tiny", num_workers: int = 1, overwrite: bool = False
) -> Path:
    """Write a raw phantom dataset with ``num_cases`` cases into the folder ``root`` and return it.

    Cases are ``phantom_000``, ``phantom_001``, ...; ``dataset.json`` follows nnU-Net v2 and
    ``phantom_cases.json`` records what the generator drew for each case (lesion diameters,
    contrast phase, stored orientation); ``case_metadata.json`` carries the contrast phase as a
    case attribute, as the ATLAS converter does, so folds can be stratified by it. An existing non-empty folder is only replaced with
    ``overwrite``.
    """
    if size not in SIZES:
        raise LiversegError(f"unknown phantom size '{size}'; use one of {', '.join(SIZES)}")
    if num_cases < 1:
        raise LiversegError(f"number of cases must be at least 1, got {num_cases}")
    if num_workers < 1:
        raise LiversegError(f"number of worker processes must be at least 1, got {num_workers}")
    root = Path(root)
    _prepare_folder(root, overwrite)
    jobs = [(i, seed, size, str(root), case_id(i)) for i in range(num_cases)]
    start = time.perf_counter()
    progress = tqdm(total=num_cases, desc=f"phantom {root.name}", unit="case", disable=None)
    records = []
    if num_workers == 1 or num_cases == 1:
        for job in jobs:
            records.append(_make_and_write(job))
            progress.update()
    else:
        with ProcessPoolExecutor(max_workers=min(num_workers, num_cases)) as pool:
            for record in pool.map(_make_and_write, jobs):
                records.append(record)
                progress.update()
    progress.close()
    info = DatasetInfo(
        channel_names={"0": "MRI"},
        labels=dict(ATLAS_LABELS),
        num_training=num_cases,
        file_ending=FILE_ENDING,
        extra={"name": root.name, "description": f"liverseg synthetic liver MRI phantom (seed {seed}, size {size})"},
    )
    write_json(root / CASES_JSON, {"seed": seed, "size": size, "cases": records})
    write_json(root / CASE_METADATA_FILE, {r["case"]: {"contrast_phase": r["phase"]} for r in records})
    write_dataset_json(root, info)
    log.info("wrote %d %s phantom cases to %s in %.1f s", num_cases, size, root, time.perf_counter() - start)
    return root
