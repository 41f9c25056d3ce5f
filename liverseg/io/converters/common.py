"""What the ATLAS and LiTS converters share: opening the download, pairing files, writing the dataset.

A dataset is built in a hidden staging folder beside its final place and moved there only when
every case converted, so a failed or interrupted conversion never leaves a half dataset behind
(and with ``overwrite`` the old dataset survives until the new one is complete).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from liverseg.errors import LiversegError
from liverseg.io.converters.case import CaseSource, convert_case
from liverseg.io.dataset import ATLAS_LABELS, DatasetInfo, write_dataset_json
from liverseg.paths import raw_root

log = logging.getLogger(__name__)

_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IGNORED_NAMES = ("__MACOSX",)


def natural_key(text: str) -> list[int | str]:
    """Sort key putting ``im2`` before ``im10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def is_ignored(path: Path) -> bool:
    """True for hidden files and archive debris (``.DS_Store``, ``__MACOSX/``, ``._im0.nii.gz``)."""
    return path.name.startswith(".") or path.name in _IGNORED_NAMES


def output_folder(dataset_name: str, overwrite: bool) -> Path:
    """The raw folder a conversion writes to, after checking the name and the overwrite rule."""
    if not _DATASET_NAME.match(dataset_name):
        raise LiversegError(
            f"dataset name '{dataset_name}' is not a plain folder name; use letters, digits, '_', '-' or '.' (e.g. ATLAS or Dataset501_ATLAS)"
        )
    target = raw_root() / dataset_name
    if target.exists():
        is_dataset = (target / "dataset.json").is_file()
        if not overwrite:
            raise LiversegError(f"{target} already exists; pass --overwrite (overwrite=True) to replace it, or choose another name")
        if not is_dataset and any(target.iterdir()):
            raise LiversegError(f"{target} exists and is not a raw dataset (no dataset.json); move it away or choose another name")
    return target


@contextlib.contextmanager
def opened_source(source: Path, scratch: Path) -> Iterator[Path]:
    """Yield a folder holding the download: ``source`` itself, or a zip extracted under ``scratch``."""
    source = Path(source).expanduser()
    if not source.exists():
        raise LiversegError(f"{source}: not found; give the downloaded folder or zip file")
    if source.is_dir():
        yield source
        return
    if not zipfile.is_zipfile(source):
        raise LiversegError(f"{source}: neither a folder nor a zip file; give the downloaded folder or zip file")
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".extract-") as tmp:
        log.info("extracting %s", source)
        try:
            with zipfile.ZipFile(source) as archive:
                archive.extractall(tmp)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise LiversegError(f"{source}: the zip file cannot be extracted ({e}); download it again") from None
        yield Path(tmp)


def pair_cases(
    images: dict[str, list[Path]], labels: dict[str, list[Path]], expected_label: Callable[[str], Path]
) -> tuple[list[CaseSource], list[str]]:
    """Match images and labels by case id; also return every missing partner or duplicate found."""
    problems = []
    for kind, found in (("image", images), ("label", labels)):
        for case_id, paths in found.items():
            if len(paths) > 1:
                listing = ", ".join(str(p) for p in paths)
                problems.append(f"{case_id}: {len(paths)} {kind} files ({listing}); keep exactly one")
    for case_id in sorted(images.keys() - labels.keys(), key=natural_key):
        problems.append(f"{images[case_id][0]}: no label file (expected {expected_label(case_id)}); add it or remove the image")
    for case_id in sorted(labels.keys() - images.keys(), key=natural_key):
        problems.append(f"{labels[case_id][0]}: no image file for this label; add the image or remove the label")
    cases = [
        CaseSource(case_id, images[case_id][0], labels[case_id][0])
        for case_id in sorted(images.keys() & labels.keys(), key=natural_key)
        if len(images[case_id]) == 1 and len(labels[case_id]) == 1
    ]
    return cases, problems


def nothing_found(folder: Path, expected: str) -> LiversegError:
    """The error for a folder without any recognisable file: what was expected and what is there."""
    entries = sorted((p for p in folder.iterdir() if not is_ignored(p)), key=lambda p: natural_key(p.name))
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:15]) or "nothing"
    more = f" and {len(entries) - 15} more" if len(entries) > 15 else ""
    return LiversegError(f"{folder}: no recognisable files; expected {expected}. Found: {shown}{more}")


def write_raw_dataset(
    cases: Sequence[CaseSource],
    problems: Sequence[str],
    target: Path,
    info: DatasetInfo,
    source: Path,
    extra_files: Sequence[Path] = (),
    num_workers: int = 1,
    tolerance: float = 1e-3,
) -> Path:
    """Convert ``cases`` into ``target`` all-or-nothing, raising one error that lists every problem."""
    problems = list(problems)
    staging = target.with_name(f".{target.name}.converting-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        problems += _convert_all(cases, staging, frozenset(info.label_values()), tolerance, num_workers)
        if problems:
            listing = "\n".join(f"  - {p}" for p in problems)
            raise LiversegError(
                f"conversion of {source} failed with {len(problems)} problem(s); nothing was written to {target}:\n{listing}"
            )
        for path in extra_files:
            shutil.copyfile(path, staging / path.name)
        write_dataset_json(staging, info)
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %d cases to %s", len(cases), target)
    return target


def _convert_all(
    cases: Sequence[CaseSource], root: Path, allowed: frozenset[int], tolerance: float, num_workers: int
) -> list[str]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    results: dict[str, list[str]] = {}
    progress = tqdm(total=len(cases), desc="converting", unit="case")
    with progress:
        if num_workers <= 1 or len(cases) <= 1:
            for case in cases:
                results[case.case_id] = convert_case(case, root, allowed, tolerance)
                progress.update()
        else:
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                futures = {pool.submit(convert_case, case, root, allowed, tolerance): case.case_id for case in cases}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.update()
    return [p for case in cases for p in results[case.case_id]]


def _move_into_place(staging: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old)


def default_labels() -> dict[str, int]:
    """Labels of both supported datasets: 0 background, 1 liver, 2 tumour."""
    return dict(ATLAS_LABELS)
