"""The dataset fingerprint: every training case measured (in parallel) and summarised as distributions.

:func:`compute_fingerprint` returns the JSON-ready dictionary described in
:mod:`liverseg.fingerprint`; :func:`write_fingerprint` runs the integrity check first and writes
``fingerprint.json`` and ``fingerprint.png`` into the dataset's preprocessed folder.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from liverseg.data.integrity import IntegrityReport, verify_dataset
from liverseg.errors import LiversegError
from liverseg.fingerprint.case import DEFAULT_SAMPLES_PER_CASE, CaseFingerprint, compute_case_fingerprint, intensity_statistics
from liverseg.fingerprint.plot import plot_fingerprint
from liverseg.io.atomic import atomic_output, read_json
from liverseg.io.dataset import RawDataset, open_dataset
from liverseg.paths import preprocessed_dataset_dir, preprocessed_root

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"
FINGERPRINT_PLOT = "fingerprint.png"
DISTRIBUTION_PERCENTILES = (5, 25, 50, 75, 95)
_DISTRIBUTION_KEYS = ("p5", "p25", "median", "p75", "p95")
_LESION_LABEL_NAMES = ("tumor", "tumour", "lesion", "tumors", "tumours", "lesions")
_SIGNIFICANT_DIGITS = 6
_ONE_LINE_LIST = 100  # characters


def lesion_label_of(labels: dict[str, int]) -> int:
    """The label value whose connected components are lesions: the one named tumour/lesion, else 2."""
    for name, value in labels.items():
        if name.lower() in _LESION_LABEL_NAMES:
            return int(value)
    return 2


def distribution(values: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Count, mean, min, percentiles 5/25/50/75/95 and max of some numbers (None when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"n": 0, "mean": None, "min": None, **dict.fromkeys(_DISTRIBUTION_KEYS), "max": None}
    percentiles = np.percentile(values, DISTRIBUTION_PERCENTILES)
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "min": float(values.min()),
        **{k: float(p) for k, p in zip(_DISTRIBUTION_KEYS, percentiles)},
        "max": float(values.max()),
    }


def axis_distribution(rows: Sequence[Sequence[float]] | np.ndarray) -> dict[str, Any]:
    """:func:`distribution` per axis of ``(n, 3)`` rows; each statistic is a ``[z, y, x]`` list."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    per_axis = [distribution(rows[:, a]) for a in range(3)]
    return {key: (per_axis[0][key] if key == "n" else [d[key] for d in per_axis]) for key in per_axis[0]}


def _round(obj: Any) -> Any:
    """Floats to a readable number of significant digits, everywhere in a JSON-ready structure."""
    if isinstance(obj, float):
        return float(f"{obj:.{_SIGNIFICANT_DIGITS}g}")
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def to_json_text(obj: Any, indent: int = 0) -> str:
    """Indented JSON that keeps short lists (triples, boxes) on one line, so a person can read it."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {to_json_text(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj:
        flat = json.dumps(obj)
        if len(flat) <= _ONE_LINE_LIST and "{" not in flat:
            return flat
        return "[\n" + ",\n".join(inner + to_json_text(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def _case_job(job: tuple[str, list[Path], Path, int, int, int]) -> tuple[str, CaseFingerprint]:
    case_id, image_paths, label_path, samples, seed, lesion_label = job
    return case_id, compute_case_fingerprint(image_paths, label_path, case_id, samples, seed, lesion_label)


def _run_cases(jobs: list[tuple], num_workers: int, progress: bool) -> dict[str, CaseFingerprint]:
    results: dict[str, CaseFingerprint] = {}
    bar = tqdm(total=len(jobs), desc="fingerprint", unit="case", disable=not progress)
    try:
        if num_workers <= 1:
            for job in jobs:
                case_id, fp = _case_job(job)
                results[case_id] = fp
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs))) as pool:
                futures = [pool.submit(_case_job, job) for job in jobs]
                for future in as_completed(futures):
                    case_id, fp = future.result()
                    results[case_id] = fp
                    bar.update()
    finally:
        bar.close()
    return results


def summarise(cases: dict[str, dict[str, Any]], samples: dict[str, np.ndarray]) -> dict[str, Any]:
    """Dataset-level distributions of the per-case statistics; ``samples`` maps channel to pooled voxels."""
    stats = list(cases.values())
    spacing = np.array([c["spacing"] for c in stats])
    lesions = [lesion for c in stats for lesion in c["lesions"]]
    livers = [c["liver"] for c in stats if c["liver"] is not None]
    diameters = [lesion["longest_axial_diameter_mm"] for lesion in lesions]
    return {
        "spacing": axis_distribution(spacing),
        "anisotropy": distribution(spacing[:, 0] / spacing[:, 1:].max(axis=1)),
        "shape": axis_distribution([c["shape"] for c in stats]),
        "shape_after_crop": axis_distribution([c["shape_after_crop"] for c in stats]),
        "extent_mm": axis_distribution([c["extent_mm"] for c in stats]),
        "cases_not_axis_aligned": [case for case, c in cases.items() if not c["axis_aligned"]],
        "cases_without_liver": [case for case, c in cases.items() if c["liver"] is None],
        "liver_extent_mm": axis_distribution([liver["extent_mm"] for liver in livers]),
        "liver_volume_ml": distribution([liver["volume_ml"] for liver in livers]),
        "num_lesions": len(lesions),
        "lesions_per_case": distribution([c["num_lesions"] for c in stats]),
        "cases_without_lesions": sum(1 for c in stats if c["num_lesions"] == 0),
        "lesion_extent_mm": axis_distribution([lesion["extent_mm"] for lesion in lesions]),
        "lesion_volume_ml": distribution([lesion["volume_ml"] for lesion in lesions]),
        "lesion_diameter_mm": distribution(diameters),
        "lesions_at_least_10mm": sum(1 for d in diameters if d >= 10.0),
        "foreground_intensity": {channel: intensity_statistics(values) for channel, values in samples.items()},
    }


def compute_fingerprint(
    dataset: RawDataset | str | Path,
    num_workers: int = 1,
    samples_per_case: int = DEFAULT_SAMPLES_PER_CASE,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every training case of a raw dataset and summarise them (the content of fingerprint.json).

    Cases run in ``num_workers`` processes (1: in this process), one case per worker at a time.
    The result does not depend on ``num_workers``.
    """
    raw = open_dataset(dataset)
    case_ids = raw.training_cases()
    if not case_ids:
        raise LiversegError(f"{raw.root}: no training cases in imagesTr; add <case>_0000{raw.info.file_ending} files")
    lesion_label = lesion_label_of(raw.info.labels)
    jobs = [(c, raw.image_files(c), raw.label_file(c), samples_per_case, seed, lesion_label) for c in case_ids]
    log.info("fingerprinting %d cases of %s with %d worker(s)", len(jobs), raw.name, num_workers)
    results = _run_cases(jobs, num_workers, progress)

    cases = {c: results[c].stats for c in case_ids}
    channels = sorted(raw.info.channel_names, key=int)
    samples = {
        channel: np.concatenate([results[c].foreground_samples[i] for c in case_ids])
        for i, channel in enumerate(channels)
    }
    fingerprint = {
        "version": FINGERPRINT_VERSION,
        "axis_order": "zyx",
        "dataset": raw.name,
        "channel_names": {c: raw.info.channel_names[c] for c in channels},
        "labels": raw.info.labels,
        "lesion_label": lesion_label,
        "lesion_connectivity": 26,
        "intensity_sampling": {"foreground_voxels_per_case": samples_per_case, "seed": seed},
        "num_cases": len(case_ids),
        "summary": summarise(cases, samples),
        "cases": cases,
    }
    return _round(fingerprint)


def _triple(values: Sequence[float] | None, fmt: str = "{:.3g}") -> str:
    return "-" if values is None or values[0] is None else " x ".join(fmt.format(v) for v in values)


def format_summary(fingerprint: dict[str, Any]) -> str:
    """A few lines a person reads after fingerprinting: sizes, spacing, boxes and lesions."""
    s = fingerprint["summary"]
    channels = ", ".join(fingerprint["channel_names"].values())
    lesion_d = s["lesion_diameter_mm"]
    lines = [
        f"{fingerprint['dataset']}: {fingerprint['num_cases']} cases, channels: {channels}",
        f"spacing (z, y, x) mm: median {_triple(s['spacing']['median'])}, min {_triple(s['spacing']['min'])}, max {_triple(s['spacing']['max'])}",
        f"anisotropy (slice / in-plane spacing): median {s['anisotropy']['median']:.3g}, max {s['anisotropy']['max']:.3g}",
        f"shape (z, y, x): median {_triple(s['shape']['median'], '{:.0f}')}, after crop {_triple(s['shape_after_crop']['median'], '{:.0f}')}",
        f"liver box (z, y, x) mm: median {_triple(s['liver_extent_mm']['median'])}, p95 {_triple(s['liver_extent_mm']['p95'])}, "
        f"max {_triple(s['liver_extent_mm']['max'])}",
        f"lesion box (z, y, x) mm: median {_triple(s['lesion_extent_mm']['median'])}, p95 {_triple(s['lesion_extent_mm']['p95'])}, "
        f"max {_triple(s['lesion_extent_mm']['max'])}",
        f"lesions: {s['num_lesions']} (per case median {s['lesions_per_case']['median']:.3g}, max {s['lesions_per_case']['max']:.0f}; "
        f"{s['cases_without_lesions']} cases without), {s['lesions_at_least_10mm']} with diameter >= 10 mm"
        + (f", diameter median {lesion_d['median']:.3g} mm, max {lesion_d['max']:.3g} mm" if lesion_d["n"] else ""),
    ]
    if s["cases_not_axis_aligned"]:
        lines.append(f"oblique (not axis-aligned) cases: {', '.join(s['cases_not_axis_aligned'])}")
    return "\n".join(lines)


def check_dataset(dataset: RawDataset | str | Path, num_workers: int = 1) -> IntegrityReport:
    """Run the dataset integrity check: log its warnings, raise a LiversegError listing its errors.

    The fingerprint is only as good as the files, so this runs before measuring anything.
    """
    report = verify_dataset(open_dataset(dataset), num_workers=num_workers)
    for problem in report.warnings:
        log.warning("%s: %s (%s)", problem.path, problem.what, problem.fix)
    report.raise_if_errors()
    return report


def write_fingerprint(
    dataset: RawDataset | str | Path,
    num_workers: int = 1,
    verify: bool = True,
    samples_per_case: int = DEFAULT_SAMPLES_PER_CASE,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Check, measure and write ``fingerprint.json`` and ``fingerprint.png`` to the preprocessed store.

    The files go to ``$LIVERSEG_PREPROCESSED/<dataset folder name>/``; returns the JSON path.
    """
    raw = open_dataset(dataset)
    if verify:
        check_dataset(raw, num_workers)
    fingerprint = compute_fingerprint(raw, num_workers, samples_per_case, seed, progress)
    out_dir = preprocessed_root() / raw.name
    json_path = out_dir / FINGERPRINT_FILE
    with atomic_output(json_path) as tmp:
        tmp.write_text(to_json_text(fingerprint) + "\n", encoding="utf-8")
    plot_fingerprint(fingerprint, out_dir / FINGERPRINT_PLOT)
    log.info("wrote %s and %s", json_path, FINGERPRINT_PLOT)
    return json_path


def load_fingerprint(dataset: str) -> dict[str, Any]:
    """Read the fingerprint of a dataset (name, folder name or id) from the preprocessed store."""
    path = preprocessed_dataset_dir(dataset) / FINGERPRINT_FILE
    if not path.is_file():
        raise LiversegError(f"{path}: no fingerprint yet; run liverseg_fingerprint -d {dataset}")
    fingerprint = read_json(path)
    if fingerprint.get("version") != FINGERPRINT_VERSION:
        raise LiversegError(
            f"{path}: fingerprint version {fingerprint.get('version')} is not {FINGERPRINT_VERSION}; "
            f"run liverseg_fingerprint -d {dataset} again"
        )
    return fingerprint
