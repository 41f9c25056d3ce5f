"""Evaluate a folder of predicted label maps against one or several folders of reference labels.

For every matched case both files are read in canonical ``(z, y, x)`` layout, their grids are
checked to agree, and the metrics of :func:`~liverseg.evaluation.metrics.evaluate_case` (plus the
lesion detection metrics, when available, and the lesion uncertainty analysis when the predictions
carry lesion reports) are computed, in parallel over cases. The result is a summary dictionary,
optionally written as ``summary.json`` with a per-case CSV (and the uncertainty figure) beside it.
"""
from __future__ import annotations

import functools
import importlib
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from liverseg.errors import LiversegError
from liverseg.evaluation.lesion_reports import case_uncertainty, report_path, summarise_uncertainty
from liverseg.evaluation.matching import CaseFiles, match_cases
from liverseg.evaluation.metrics import check_label, evaluate_case, rmse
from liverseg.evaluation.profiles import MetricProfile, get_profile
from liverseg.evaluation.raters import evaluate_case_raters, rater_names, summarise_raters
from liverseg.evaluation.report import describe_metrics, json_ready, write_case_csv
from liverseg.evaluation.uncertainty import STATUS_RULES
from liverseg.io.atomic import write_json
from liverseg.io.images import Geometry, read_image

log = logging.getLogger(__name__)

LESION_MODULE = "liverseg.evaluation.lesions"
SUMMARY_VERSION = 1
LESION_CONNECTIVITIES = (6, 18, 26)


@dataclass(frozen=True)
class _Settings:
    profile: MetricProfile
    tolerance_mm: float
    lesions: bool
    threads: int
    geometry_tolerance: float
    rater_names: tuple[str, ...]
    lesion_threshold: float = 0.2
    lesion_connectivity: int = 26
    uncertainty_rule: str = "hit"


@functools.lru_cache(maxsize=1)
def lesion_module() -> ModuleType | None:
    """The lesion detection module, or None (with one warning) when it is not installed."""
    try:
        return importlib.import_module(LESION_MODULE)
    except ModuleNotFoundError as e:
        if e.name != LESION_MODULE:
            raise
        log.warning("lesion detection metrics are unavailable (%s is missing); evaluating segmentation only",
                    LESION_MODULE)
        return None


def _lesion_function(settings: _Settings) -> Callable[[np.ndarray, np.ndarray, Sequence[float]], dict] | None:
    module = lesion_module()
    if module is None:
        return None
    return functools.partial(module.lesion_detection, threshold=settings.lesion_threshold,
                             connectivity=settings.lesion_connectivity)


def _lesion_aggregator() -> Callable[[list[dict]], dict]:
    module = lesion_module()
    aggregate = getattr(module, "aggregate_lesion_metrics", None)
    if aggregate is None:  # kept beside lesions.py by its author
        aggregate = importlib.import_module("liverseg.evaluation.lesion_aggregate").aggregate_lesion_metrics
    return aggregate


def geometry_problem(reference: Geometry, prediction: Geometry, tolerance: float = 1e-3) -> str:
    """How a prediction's voxel grid differs from its reference's ('' when they agree within ``tolerance``)."""
    if reference.shape != prediction.shape:
        return f"shape (z, y, x) {prediction.shape} differs from the reference's {reference.shape}"
    for name, unit in (("spacing", " mm"), ("origin", " mm"), ("direction", "")):
        a, b = np.asarray(getattr(reference, name)), np.asarray(getattr(prediction, name))
        difference = float(np.max(np.abs(a - b)))
        if difference > tolerance:
            return (f"{name} {tuple(np.round(b, 4).tolist())} differs from the reference's "
                    f"{tuple(np.round(a, 4).tolist())} (by up to {difference:.4g}{unit}, tolerance {tolerance:g})")
    return ""


def _read_label(path: Path) -> tuple[np.ndarray, Geometry]:
    array, geometry = read_image(path)
    return check_label(array, str(path)), geometry


def evaluate_files(files: CaseFiles, settings: _Settings) -> dict[str, Any]:
    """Metrics of one case read from its files (run in a worker process)."""
    prediction, prediction_geometry = _read_label(files.prediction)
    references = []
    for path in files.references:
        reference, reference_geometry = _read_label(path)
        problem = geometry_problem(reference_geometry, prediction_geometry, settings.geometry_tolerance)
        if problem:
            raise LiversegError(
                f"case {files.case}: prediction {files.prediction} does not lie on the grid of reference {path}: "
                f"{problem}. Predictions must be written in the reference image's geometry "
                "(resample them back before evaluating)"
            )
        references.append(reference)
    spacing = reference_geometry.spacing
    lesion_metrics = _lesion_function(settings) if settings.lesions else None
    row: dict[str, Any] = {"case": files.case, "prediction": str(files.prediction)}
    if len(references) == 1:
        row["reference"] = str(files.references[0])
        row.update(evaluate_case(references[0], prediction, spacing, settings.profile, settings.tolerance_mm,
                                 settings.threads))
        if lesion_metrics is not None:
            row["lesions"] = lesion_metrics(references[0], prediction, spacing)
            report = report_path(files.prediction, files.case)
            if report.is_file():
                row["lesion_uncertainty"] = case_uncertainty(report, references[0], prediction, spacing,
                                                             row["lesions"], settings.uncertainty_rule)
    else:
        row["references"] = [str(p) for p in files.references]
        row.update(evaluate_case_raters(references, prediction, spacing, settings.rater_names, settings.profile,
                                        settings.tolerance_mm, settings.threads, lesion_metrics))
    return row


def _evaluate_task(task: tuple[CaseFiles, _Settings]) -> dict[str, Any]:
    return evaluate_files(*task)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run(tasks: list[tuple[CaseFiles, _Settings]], num_workers: int) -> Iterator[dict[str, Any]]:
    progress = dict(total=len(tasks), desc="evaluating", unit="case", disable=None)
    if num_workers <= 1 or len(tasks) <= 1:
        yield from tqdm(map(_evaluate_task, tasks), **progress)
        return
    # spawn: workers must not inherit locks or threads (e.g. of torch) from the parent.
    with multiprocessing.get_context("spawn").Pool(min(num_workers, len(tasks))) as pool:
        yield from tqdm(pool.imap(_evaluate_task, tasks), **progress)


def evaluate_folders(
    reference: Path | str | Sequence[Path | str],
    prediction: Path | str,
    output: Path | str | None = None,
    profile: str | MetricProfile = "default",
    tolerance_mm: float = 5.0,
    num_workers: int = 1,
    lesions: bool = True,
    csv_path: Path | str | None = None,
    geometry_tolerance: float = 1e-3,
    lesion_threshold: float = 0.2,
    lesion_connectivity: int = 26,
    uncertainty_rule: str = "hit",
) -> dict[str, Any]:
    """Evaluate every prediction in ``prediction`` against its label in the ``reference`` folder(s).

    With several reference folders (raters) every metric is computed against each rater, averaged
    over raters and set beside the inter-rater agreement and φ (see :mod:`liverseg.evaluation.raters`).
    ``lesions`` adds the lesion detection metrics when :mod:`liverseg.evaluation.lesions` exists:
    lesions are ``lesion_connectivity``-connected components of the tumour label, and a
    correspondence with Dice > ``lesion_threshold`` is a hit. With one reference folder and lesion
    reports (``<case>.lesions.json``) beside the predictions, the reported lesions are labelled TP or
    FP (``uncertainty_rule``: ``hit`` or ``overlap``) and their uncertainties analysed
    (``lesion_uncertainty``; see :mod:`liverseg.evaluation.lesion_reports`).
    When ``output`` is given, the summary is written there as JSON (NaN as null), the per-case
    table as CSV to ``csv_path`` (default: ``<output stem>_per_case.csv`` beside it) and the
    uncertainty figure to ``<output stem>_lesion_uncertainty.png``.
    Returns the summary (NaN as None); its ``per_case`` list holds the per-case values.
    """
    references = [reference] if isinstance(reference, (str, Path)) else list(reference)
    profile = get_profile(profile)
    if not tolerance_mm >= 0:
        raise LiversegError(f"the Surface Dice tolerance must be a non-negative number of mm, got {tolerance_mm}")
    if num_workers < 1:
        raise LiversegError(f"the number of worker processes must be at least 1, got {num_workers}")
    if not 0 <= lesion_threshold < 1:
        raise LiversegError(f"the lesion hit threshold is a Dice in [0, 1), got {lesion_threshold}")
    if lesion_connectivity not in LESION_CONNECTIVITIES:
        raise LiversegError(f"lesion connectivity must be one of {LESION_CONNECTIVITIES}, got {lesion_connectivity}")
    if uncertainty_rule not in STATUS_RULES:
        raise LiversegError(f"the uncertainty status rule must be one of {STATUS_RULES}, got {uncertainty_rule!r}")
    cases = match_cases(references, prediction)
    names = tuple(rater_names(references)) if len(references) > 1 else ()
    use_lesions = lesions and lesion_module() is not None
    workers = min(num_workers, len(cases))
    settings = _Settings(profile, float(tolerance_mm), use_lesions, max(1, _available_cores() // workers),
                         float(geometry_tolerance), names, float(lesion_threshold), int(lesion_connectivity),
                         uncertainty_rule)
    log.info("evaluating %d case(s) of %s against %s with profile %s", len(cases), prediction,
             ", ".join(str(r) for r in references), profile.name)
    _explain_skipped_reports(cases, use_lesions, len(references))
    rows = list(_run([(case, settings) for case in cases], workers))
    summary: dict[str, Any] = {
        "liverseg_evaluation": SUMMARY_VERSION,
        "profile": profile.to_dict(),
        "tolerance_mm": float(tolerance_mm),
        "reference": [str(r) for r in references],
        "prediction": str(prediction),
        "num_cases": len(rows),
    }
    if use_lesions:
        summary.update(lesion_threshold=float(lesion_threshold), lesion_connectivity=int(lesion_connectivity))
    if names:
        aggregate = _lesion_aggregator() if use_lesions else None
        summary.update(summarise_raters(rows, names, aggregate))
    else:
        summary["metrics"] = describe_metrics(rows)
        summary["tumor_burden_rmse"] = rmse([r["tumor_burden_reference"] for r in rows],
                                            [r["tumor_burden_prediction"] for r in rows])
        if use_lesions:
            summary["lesions"] = _lesion_aggregator()([r["lesions"] for r in rows])
            plot = None if output is None else Path(output).with_name(f"{Path(output).stem}_lesion_uncertainty.png")
            section = summarise_uncertainty(rows, uncertainty_rule, lesion_threshold, plot, prediction)
            if section is not None:
                summary["lesion_uncertainty"] = section
    summary["per_case"] = rows
    summary = json_ready(summary)
    if output is not None:
        output = Path(output)
        write_json(output, summary)
        csv_path = Path(csv_path) if csv_path is not None else output.with_name(f"{output.stem}_per_case.csv")
        write_case_csv(csv_path, rows)
        log.info("wrote %s and %s", output, csv_path)
    return summary


def _explain_skipped_reports(cases: Sequence[CaseFiles], use_lesions: bool, num_references: int) -> None:
    """One info line when lesion reports are present but the uncertainty analysis cannot use them."""
    if use_lesions and num_references == 1:
        return
    if any(report_path(c.prediction, c.case).is_file() for c in cases):
        reason = "with several reference folders" if use_lesions else "without the lesion metrics (--no-lesions)"
        log.info("the predictions carry lesion reports, but the lesion uncertainty analysis is not made %s", reason)
