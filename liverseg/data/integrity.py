"""Check a raw dataset before anything is computed from it, and report every problem at once.

Errors stop planning (missing or unreadable files, header disagreements, undeclared or
non-integral label values, NaN/Inf voxels, non-3D images, a wrong ``numTraining``); warnings are
worth a look but not wrong (cases without tumour, spacing outliers, oblique directions).

``numTraining`` disagreeing with the files found is an error, as in nnU-Net: the case list is taken
from the folders, so when an image and its label were both lost in a copy, this count is the only
sign that the dataset is incomplete.
"""
from __future__ import annotations

import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from liverseg.errors import LiversegError
from liverseg.io.checks import (
    Header,
    geometry_problem,
    label_values,
    nifti_truncation,
    read_header,
    shape_problem,
)
from liverseg.io.dataset import RawDataset, open_dataset

ERROR = "error"
WARNING = "warning"
SPACING_OUTLIER_FACTOR = 3.0
PLAUSIBLE_SPACING_MM = (0.1, 20.0)
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_TUMOUR_NAMES = ("tumor", "tumour", "lesion")
_ZYX = "zyx"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: which file, what is wrong, what to do about it."""

    path: str
    what: str
    fix: str
    severity: str


@dataclass
class IntegrityReport:
    """Everything the integrity check found in one dataset."""

    dataset: str
    num_cases: int
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """Human-readable report: a summary line, then each problem with its file, what and fix."""
        lines = [f"{self.dataset}: {self.num_cases} case(s), {len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        for problem in (*self.errors, *self.warnings):
            lines += [f"{problem.severity.upper()}: {problem.path}", f"    what: {problem.what}", f"    fix:  {problem.fix}"]
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        """Raise one LiversegError listing every error (and how many), so all can be fixed in one go."""
        if not self.errors:
            return
        lines = [f"{self.dataset}: {len(self.errors)} error(s) in the raw dataset (and {len(self.warnings)} warning(s)):"]
        for problem in self.errors:
            lines.append(f"  - {problem.path}: {problem.what}; {problem.fix}")
        raise LiversegError("\n".join(lines))


@dataclass(frozen=True)
class _CaseJob:
    """What a worker needs to check one case (picklable)."""

    case: str
    images: tuple[Path, ...]
    label: Path | None
    allowed_labels: frozenset[int]
    tumour_value: int | None
    tolerance: float


@dataclass
class _CaseResult:
    problems: list[Problem]
    spacing: tuple[float, float, float] | None  # canonical (z, y, x) of the first readable channel
    image: Path | None


def verify_dataset(dataset: RawDataset | str | Path, tolerance: float = 1e-3, num_workers: int = 1) -> IntegrityReport:
    """Check a raw dataset (object, folder, or name in ``$LIVERSEG_RAW``) and report every problem found.

    ``tolerance`` is the largest difference of spacing/origin (mm) and direction cosines accepted
    between the files of one case. Voxels of each file are read once; cases are checked in
    ``num_workers`` processes.
    """
    raw = open_dataset(dataset)
    jobs, layout_problems = _layout(raw, tolerance)
    results = _run(jobs, num_workers)
    problems = layout_problems + [p for r in results for p in r.problems] + _spacing_warnings(results)
    return IntegrityReport(
        dataset=raw.name,
        num_cases=len(jobs),
        errors=[p for p in problems if p.severity == ERROR],
        warnings=[p for p in problems if p.severity == WARNING],
    )


def _layout(raw: RawDataset, tolerance: float) -> tuple[list[_CaseJob], list[Problem]]:
    """Match files to cases and channels; report names, missing partners and numTraining."""
    info, ending = raw.info, raw.info.file_ending
    declared = {int(c) for c in info.channel_names}
    problems: list[Problem] = []
    images_dir, labels_dir = raw.root / "imagesTr", raw.root / "labelsTr"
    channels: dict[str, set[int]] = {}
    if not images_dir.is_dir():
        problems.append(Problem(str(images_dir), "folder is missing", f"put the images in imagesTr/<case>_0000{ending}", ERROR))
    for path in _visible_files(images_dir):
        match = _CHANNEL_FILE.match(path.name[: -len(ending)]) if path.name.endswith(ending) else None
        if match is None:
            problems.append(Problem(
                str(path), f"name does not follow <case>_<4 digits>{ending} (file_ending in dataset.json is {ending})",
                f"rename it to <case>_0000{ending} (one file per channel), or move it out of imagesTr", ERROR))
            continue
        channel = int(match.group("channel"))
        if channel not in declared:
            problems.append(Problem(
                str(path), f"channel {channel:04d} is not declared in dataset.json channel_names {info.channel_names}",
                "declare the channel in channel_names or remove the file", ERROR))
            continue
        channels.setdefault(match.group("case"), set()).add(channel)
    labels = {}
    for path in _visible_files(labels_dir):
        if path.name.endswith(ending):
            labels[path.name[: -len(ending)]] = path
        else:
            problems.append(Problem(str(path), f"does not end with {ending} (file_ending in dataset.json)",
                                    f"convert it to {ending} or move it out of labelsTr", ERROR))

    jobs = []
    tumour = _tumour_value(info.labels)
    for case in sorted(channels):
        for missing in sorted(declared - channels[case]):
            problems.append(Problem(str(images_dir / f"{case}_{missing:04d}{ending}"), f"channel {missing:04d} of case {case} is missing",
                                    "add the file, or remove every file of this case", ERROR))
        if case not in labels:
            problems.append(Problem(str(labels_dir / f"{case}{ending}"), f"label of case {case} is missing",
                                    "add the label file, or move the case's images to imagesTs", ERROR))
        images = tuple(images_dir / f"{case}_{c:04d}{ending}" for c in sorted(channels[case]))
        jobs.append(_CaseJob(case, images, labels.get(case), frozenset(info.label_values()), tumour, tolerance))
    for case in sorted(labels.keys() - channels.keys()):
        problems.append(Problem(str(labels[case]), f"label without image (expected imagesTr/{case}_0000{ending})",
                                "add the image(s) or remove the label", ERROR))
    if info.num_training != len(jobs):
        problems.append(Problem(
            str(raw.root / "dataset.json"), f"numTraining is {info.num_training} but imagesTr holds {len(jobs)} case(s)",
            f"if no case was lost in a copy, set numTraining to {len(jobs)}", ERROR))
    return jobs, problems


def _visible_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _tumour_value(labels: dict[str, int]) -> int | None:
    for name, value in labels.items():
        if name.lower() in _TUMOUR_NAMES:
            return value
    return None


def _run(jobs: list[_CaseJob], num_workers: int) -> list[_CaseResult]:
    progress = tqdm(total=len(jobs), desc="checking cases", unit="case")
    with progress:
        if num_workers <= 1 or len(jobs) <= 1:
            results = []
            for job in jobs:
                results.append(_check_case(job))
                progress.update()
            return results
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            results = []
            for result in pool.map(_check_case, jobs):  # keeps case order, so reports are reproducible
                results.append(result)
                progress.update()
            return results


def _check_case(job: _CaseJob) -> _CaseResult:
    """Every per-file and per-case check of one case; never raises for bad data."""
    problems: list[Problem] = []
    headers: dict[Path, Header] = {}
    for path in (*job.images, *([job.label] if job.label else [])):
        header = _readable_header(path, problems)
        if header is None:
            continue
        headers[path] = header
        try:
            image = sitk.ReadImage(str(path))  # keep a reference: the array below is a view of its buffer
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
            problems.append(_unreadable(path, f"cannot be read as an image ({reason})"))
            continue
        array = sitk.GetArrayViewFromImage(image)
        if path == job.label:
            problems += _label_problems(path, array, job)
        else:
            problems += _image_problems(path, array)
    images = [p for p in job.images if p in headers]
    if not images:
        return _CaseResult(problems, None, None)
    reference = headers[images[0]]
    for path in [*images[1:], *([job.label] if job.label in headers else [])]:
        difference = geometry_problem(reference, headers[path], job.tolerance)
        if difference:
            problems.append(Problem(str(path), f"{difference} compared with {images[0].name} (tolerance {job.tolerance:g})",
                                    "all files of a case must share one voxel grid: resample the file onto the image "
                                    "grid, or if the difference is header noise copy the image header onto it", ERROR))
    problems += _oblique_warning(images[0], reference, job.tolerance)
    return _CaseResult(problems, _canonical_spacing(reference), images[0])


def _readable_header(path: Path, problems: list[Problem]) -> Header | None:
    """Header of a 3D file with all its bytes, or None after recording why not."""
    try:
        header = read_header(path)
    except LiversegError as e:
        problems.append(_unreadable(path, str(e).removeprefix(f"{path}: ")))
        return None
    shape = shape_problem(header)
    if shape:
        problems.append(Problem(str(path), shape.split("; ")[0], "store each case as 3D single-channel files", ERROR))
        return None
    truncated = nifti_truncation(path)
    if truncated:
        problems.append(Problem(str(path), truncated, "replace the file with a complete copy (copy or convert it again)", ERROR))
        return None
    return header


def _unreadable(path: Path, what: str) -> Problem:
    return Problem(str(path), what, "replace the file with a complete copy in a supported format", ERROR)


def _image_problems(path: Path, array: np.ndarray) -> list[Problem]:
    if array.dtype.kind != "f":
        return []
    non_finite = int(array.size - np.count_nonzero(np.isfinite(array)))
    if not non_finite:
        return []
    return [Problem(str(path), f"{non_finite} voxel(s) are NaN or infinite",
                    "replace them (e.g. with the image minimum) before training; check how the file was made", ERROR)]


def _label_problems(path: Path, array: np.ndarray, job: _CaseJob) -> list[Problem]:
    values, bad_examples, num_bad = label_values(array)
    problems = []
    if num_bad:
        problems.append(Problem(str(path), f"{num_bad} voxel(s) hold non-integral values (e.g. {bad_examples})",
                                "labels must be whole numbers: use the original label, not one resampled with linear interpolation", ERROR))
    undeclared = sorted(set(values) - job.allowed_labels)
    if undeclared:
        problems.append(Problem(str(path), f"holds value(s) {undeclared} not declared in dataset.json labels {sorted(job.allowed_labels)}",
                                "map them to declared labels, or declare them in dataset.json", ERROR))
    if job.tumour_value is not None and not num_bad and job.tumour_value not in values:
        problems.append(Problem(str(path), f"holds no tumour voxels (label {job.tumour_value} absent)",
                                "fine if this patient has no tumour; otherwise check the annotation", WARNING))
    return problems


def _axis_permutation(direction: tuple[float, ...]) -> np.ndarray:
    """For each index axis, the world axis it runs along most closely."""
    return np.argmax(np.abs(np.asarray(direction).reshape(3, 3)), axis=0)


def _canonical_spacing(header: Header) -> tuple[float, float, float]:
    """Spacing along world (z, y, x), the order of the canonical arrays, whatever the storage order."""
    world = np.empty(3)
    world[_axis_permutation(header.direction)] = header.spacing
    return tuple(float(s) for s in world[::-1])


def _oblique_warning(path: Path, header: Header, tolerance: float) -> list[Problem]:
    cosines = np.abs(np.asarray(header.direction).reshape(3, 3)).max(axis=0)
    if float(np.min(cosines)) >= 1 - tolerance:
        return []
    angle = float(np.degrees(np.arccos(np.clip(np.min(cosines), -1, 1))))
    return [Problem(str(path), f"direction is oblique: an image axis is {angle:.1f} degrees off the nearest world axis",
                    "fine if intended: liverseg works in voxel axes, so the patient is processed tilted; "
                    "resample to an axis-aligned grid if cases differ in tilt", WARNING)]


def _spacing_warnings(results: list[_CaseResult]) -> list[Problem]:
    """Cases whose spacing is implausible or far from the dataset median along some axis."""
    measured = [(r.image, np.asarray(r.spacing)) for r in results if r.spacing is not None]
    if not measured:
        return []
    median = np.median([s for _, s in measured], axis=0) if len(measured) >= 3 else None
    low, high = PLAUSIBLE_SPACING_MM
    problems = []
    for path, spacing in measured:
        notes = [f"{_ZYX[a]} {spacing[a]:.3g} mm is outside {low}-{high} mm" for a in range(3) if not low <= spacing[a] <= high]
        if median is not None:
            ratio = spacing / median
            notes += [
                f"{_ZYX[a]} {spacing[a]:.3g} mm is {max(ratio[a], 1 / ratio[a]):.1f}x away from the dataset median {median[a]:.3g} mm"
                for a in range(3)
                if max(ratio[a], 1 / ratio[a]) > SPACING_OUTLIER_FACTOR and low <= spacing[a] <= high
            ]
        if notes:
            problems.append(Problem(str(path), "spacing (z, y, x) " + "; ".join(notes),
                                    "check the header (a lost header often reads as 1 mm); fine if the scan really is like this", WARNING))
    return problems
