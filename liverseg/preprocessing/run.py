"""Preprocess every training case of a dataset for each preprocessing spec of a plan.

Output, one folder per distinct spec (models sharing a spec share its files)::

    <output_root>/<spec.folder_name>/
        spec.json                   the spec (PreprocessingSpec.to_dict)
        <case>.npy                  float32 (c, z, y, x) image, normalised, at the target spacing
        <case>_seg.npy              uint8 (z, y, x) label on the same grid
        <case>_locations.npz        sampled voxels per class and per lesion (preprocessing.locations)
        <case>.json                 written last: the case is complete exactly when it exists

Keys of ``<case>.json``:

- ``version``, ``case``;
- ``geometry``: :meth:`liverseg.io.images.Geometry.to_dict` of the original image (canonical
  shape, spacing, origin, direction, and the header on disk to write results back);
- ``shape_original``, ``spacing_original``: the canonical ``(z, y, x)`` grid before cropping;
- ``crop_bbox``: ``[[start, stop], ...]`` per axis; ``shape_after_crop``;
- ``shape_after_resampling``, ``spacing_target``, and ``spacing_after_resampling`` (the grid's
  actual spacing: shapes are rounded);
- ``resampling``: the spec's ``separate_z``, orders and ``label_mode``, so
  :mod:`liverseg.preprocessing.inverse` maps a prediction back from the properties alone;
- ``class_voxels`` and ``class_voxels_original``: voxels per label value (as text keys) after
  and before preprocessing; ``num_lesions``: connected tumour components after resampling;
- ``source``: relative path, size, modification time (ns) and SHA-256 of each raw input file
  (channels, then label); ``spec_digest``: SHA-1 of the spec.

A rerun skips a case whose json is complete and records the same spec and the same raw files
(same size and modification time, or else the same SHA-256: a copied dataset is not redone), and
redoes it otherwise. Outputs of cases no longer in the raw dataset are deleted (and logged), so a
folder always mirrors the dataset, and temporary files left by a killed run are removed. Folders
of specs not asked for (an older plan's) are left alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from liverseg.errors import LiversegError
from liverseg.io.atomic import is_stale_temporary, is_temporary, read_json, write_json
from liverseg.io.dataset import RawDataset, open_dataset
from liverseg.paths import preprocessed_root
from liverseg.preprocessing.case import PROPERTIES_VERSION, STEPS, CaseTimings, case_files, preprocess_case
from liverseg.preprocessing.normalize import NORMALIZATION
from liverseg.preprocessing.spec import PreprocessingSpec

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
_OUTPUT_SUFFIXES = (".npy", ".npz", ".json")
_HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class _Job:
    root: Path
    case: str
    image_files: tuple[Path, ...]
    label_file: Path
    specs: tuple[PreprocessingSpec, ...]
    folders: tuple[Path, ...]
    digests: tuple[str, ...]


def preprocess_dataset(
    dataset: RawDataset | str,
    specs: Sequence[PreprocessingSpec],
    output_root: Path | None = None,
    num_workers: int = 1,
) -> dict[str, Path]:
    """Preprocess every training case for each spec; return ``{spec.folder_name: folder}``.

    ``dataset`` is a :class:`RawDataset`, a dataset folder, or a name/id in ``$LIVERSEG_RAW``;
    ``output_root`` defaults to ``$LIVERSEG_PREPROCESSED/<dataset>``. Cases run in ``num_workers``
    processes (1: in this process), one case per worker at a time. Idempotent and safe to kill
    (see the module docstring). Problems with single cases are collected and raised together
    after the other cases are done.
    """
    dataset = open_dataset(dataset)
    specs = list({spec.folder_name: spec for spec in specs}.values())
    _check_specs(dataset, specs)
    if num_workers < 1:
        raise LiversegError(f"number of worker processes must be at least 1, got {num_workers}")
    root = Path(output_root) if output_root is not None else preprocessed_root() / dataset.name
    cases = dataset.training_cases()
    if not cases:
        raise LiversegError(f"{dataset.root}: no training cases in imagesTr; nothing to preprocess")
    if "spec" in cases:
        raise LiversegError(f"{dataset.root}: a case named 'spec' would collide with {SPEC_FILE}; rename it")
    folders = {spec.folder_name: root / spec.folder_name for spec in specs}
    for spec in specs:
        _prepare_folder(folders[spec.folder_name], spec, cases)

    start = time.perf_counter()
    jobs = _plan_jobs(dataset, cases, specs, folders)
    log.info(
        "preprocessing %d case(s) of %s for %d spec(s) into %s (%d up to date)",
        len(jobs), dataset.name, len(specs), root, len(cases) - len(jobs),
    )
    totals, problems = _run(jobs, num_workers)
    if jobs:
        steps = ", ".join(f"{step} {totals[step]:.1f}" for step in STEPS)
        log.info("preprocessed %d case(s) in %.1f s (summed seconds per step: %s)", len(jobs), time.perf_counter() - start, steps)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise LiversegError(f"{len(problems)} case(s) of {dataset.name} could not be preprocessed (the others are done):\n{listing}")
    return folders


def preprocessed_cases(folder: str | Path) -> list[str]:
    """The complete cases of a preprocessed folder (those whose ``<case>.json`` exists), sorted."""
    return sorted(p.stem for p in Path(folder).glob("*.json") if p.name != SPEC_FILE and not p.name.startswith("."))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (a 30 MB image takes a few hundredths of a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def spec_digest(spec: PreprocessingSpec) -> str:
    """SHA-1 of the spec's JSON form: equal digests mean equal preprocessing."""
    return hashlib.sha1(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()


def _check_specs(dataset: RawDataset, specs: list[PreprocessingSpec]) -> None:
    if not specs:
        raise LiversegError("no preprocessing spec given; the plan names at least one")
    channels = dataset.info.num_channels
    for spec in specs:
        if len(spec.normalization) != channels:
            raise LiversegError(
                f"preprocessing spec {spec.folder_name} names {len(spec.normalization)} normalisation scheme(s) "
                f"but {dataset.root / 'dataset.json'} has {channels} channel(s); give one scheme per channel"
            )
        for name in spec.normalization:
            NORMALIZATION.get(name)  # unknown names raise a LiversegError listing the known ones


def _prepare_folder(folder: Path, spec: PreprocessingSpec, cases: list[str]) -> None:
    """Create the folder, write spec.json, delete leftovers of killed runs and of removed cases."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / SPEC_FILE
    if not spec_path.is_file() or _read_json_or_none(spec_path) != spec.to_dict():
        write_json(spec_path, spec.to_dict())
    expected = {SPEC_FILE} | {p.name for case in cases for p in case_files(folder, case).values()}
    removed = set()
    for path in folder.iterdir():
        temporary = is_temporary(path)
        if temporary and is_stale_temporary(path):
            path.unlink(missing_ok=True)
        elif not temporary and path.is_file() and path.name not in expected and path.name.endswith(_OUTPUT_SUFFIXES):
            removed.add(path.name)
            path.unlink()
    if removed:
        log.info("%s: deleted %d file(s) of cases no longer in the raw dataset: %s", folder, len(removed), ", ".join(sorted(removed)[:10]))


def _plan_jobs(
    dataset: RawDataset, cases: list[str], specs: list[PreprocessingSpec], folders: dict[str, Path]
) -> list[_Job]:
    """One job per case that is out of date for some spec, biggest cases first."""
    digests = {spec.folder_name: spec_digest(spec) for spec in specs}
    jobs: list[tuple[int, _Job]] = []
    for case in cases:
        inputs = [*dataset.image_files(case), dataset.label_file(case)]
        todo = [spec for spec in specs if not _up_to_date(dataset, case, inputs, folders[spec.folder_name], digests[spec.folder_name])]
        if not todo:
            continue
        names = [spec.folder_name for spec in todo]
        folders_todo, digests_todo = tuple(folders[n] for n in names), tuple(digests[n] for n in names)
        job = _Job(dataset.root, case, tuple(inputs[:-1]), inputs[-1], tuple(todo), folders_todo, digests_todo)
        jobs.append((sum(p.stat().st_size for p in inputs if p.is_file()), job))
    # Largest cases first, so the last worker busy is not stuck with the biggest one.
    return [job for _, job in sorted(jobs, key=lambda item: -item[0])]


def _up_to_date(dataset: RawDataset, case: str, inputs: list[Path], folder: Path, digest: str) -> bool:
    files = case_files(folder, case)
    properties = _read_json_or_none(files["json"])
    if not isinstance(properties, dict) or properties.get("version") != PROPERTIES_VERSION or properties.get("spec_digest") != digest:
        return False
    try:
        json_time = files["json"].stat().st_mtime_ns
        if any(files[k].stat().st_mtime_ns > json_time for k in ("data", "seg", "locations")):
            return False  # written after the json: not the files the json describes
        recorded = properties.get("source")
        if not isinstance(recorded, list) or len(recorded) != len(inputs):
            return False
        refreshed, changed_time = [], False
        for old, path in zip(recorded, inputs):
            new = _source_record(dataset.root, path, with_hash=False)
            if old.get("path") != new["path"] or old.get("size") != new["size"]:
                return False
            if old.get("mtime_ns") != new["mtime_ns"]:
                if old.get("sha256") != file_sha256(path):
                    return False
                changed_time = True
            refreshed.append({**new, "sha256": old.get("sha256")})
    except (OSError, LiversegError):
        return False
    if changed_time:  # same bytes, new times (a copied dataset): record the times, skip the work
        write_json(files["json"], {**properties, "source": refreshed})
    return True


def _run(jobs: list[_Job], num_workers: int) -> tuple[dict[str, float], list[str]]:
    """Run the jobs, in-process or in a pool; return summed step times and per-case problems."""
    totals = dict.fromkeys(STEPS, 0.0)
    problems: list[str] = []
    bar = tqdm(total=len(jobs), desc="preprocessing", unit="case", disable=None if jobs else True)

    def collect(job: _Job, outcome: tuple[CaseTimings | None, str | None]) -> None:
        timings, problem = outcome
        if problem:
            problems.append(f"{job.case}: {problem}")
        else:
            for step, seconds in timings.seconds.items():
                totals[step] += seconds
        bar.update()

    try:
        if num_workers == 1 or len(jobs) <= 1:
            for job in jobs:
                collect(job, _run_job(job))
        else:
            pool = ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), initializer=_init_worker)
            try:
                futures = {pool.submit(_run_job, job): job for job in jobs}
                for future in as_completed(futures):
                    collect(futures[future], future.result())
            except BrokenProcessPool:
                raise LiversegError(
                    "a preprocessing worker process died (killed, or out of memory?); the cases finished so far are kept. "
                    "Run again, with fewer worker processes (-np) if memory is short"
                ) from None
            finally:  # on an error, cases not started yet are dropped
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return totals, problems


def _run_job(job: _Job) -> tuple[CaseTimings | None, str | None]:
    """Preprocess one case; a user-fixable problem is returned as text, a bug raises."""
    try:
        source = [_source_record(job.root, p) for p in (*job.image_files, job.label_file)]
        extra = [{"spec_digest": digest, "source": source} for digest in job.digests]
        _, timings = preprocess_case(job.image_files, job.label_file, job.specs, job.folders, job.case, extra)
        return timings, None
    except LiversegError as e:
        return None, str(e)


def _source_record(root: Path, path: Path, with_hash: bool = True) -> dict[str, Any]:
    """What ``<case>.json`` records about one raw input file (path relative to the dataset)."""
    if not path.is_file():
        raise LiversegError(f"{path}: file not found; restore it or remove the case from the dataset")
    stat = path.stat()
    record: dict[str, Any] = {"path": path.relative_to(root).as_posix(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if with_hash:
        record["sha256"] = file_sha256(path)
    return record


def _init_worker() -> None:
    """One torch thread per worker process: the processes already use the cores."""
    import torch

    torch.set_num_threads(1)


def _read_json_or_none(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None
