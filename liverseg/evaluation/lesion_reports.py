"""Lesion reports beside the evaluated predictions: the lesion uncertainty analysis of ``liverseg_evaluate``.

``liverseg_predict`` writes ``<case>.lesions.json`` next to each label map
(:mod:`liverseg.postprocessing.report`): one row per predicted lesion with its uncertainty,
1 − mean tumour probability. When such reports are present, every reported lesion is labelled TP or
FP against the reference with the correspondences of the lesion detection metrics
(:func:`liverseg.evaluation.uncertainty.lesion_status`, rule ``hit``: the lesion belongs to a
correspondence with Dice > θ; or rule ``overlap``, the ATLAS paper's: it touches the reference
tumour), and the pooled lesions of all cases go into
:func:`~liverseg.evaluation.uncertainty.uncertainty_analysis` and the figure of Lambert et al. 2023,
Fig. 4. See docs/lesion_metrics.md.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.evaluation.lesions import lesion_detection
from liverseg.evaluation.uncertainty import STATUS_RULES, lesion_status, plot_uncertainty, uncertainty_analysis
from liverseg.io.atomic import read_json

log = logging.getLogger(__name__)

REPORT_SUFFIX = ".lesions.json"
#: What the summary keeps of each reported lesion (the report itself has centroids, boxes, ...).
LESION_KEYS = ("id", "component_id", "volume_ml", "longest_axial_diameter_mm", "uncertainty", "status")


def report_path(prediction_file: str | Path, case: str) -> Path:
    """Where ``liverseg_predict`` puts the lesion report of ``case``: beside its label map."""
    return Path(prediction_file).parent / f"{case}{REPORT_SUFFIX}"


def read_lesion_report(path: str | Path) -> dict[str, Any]:
    """A lesion report file, checked to be a JSON object with a ``lesions`` list of objects."""
    path = Path(path)
    try:
        report = read_json(path)
    except (OSError, ValueError) as error:
        raise LiversegError(f"{path}: cannot read the lesion report ({error}); write it again with "
                            "liverseg_predict or remove it") from None
    lesions = report.get("lesions") if isinstance(report, dict) else None
    if not isinstance(lesions, list) or not all(isinstance(row, dict) for row in lesions):
        raise LiversegError(f"{path}: not a lesion report (it needs a 'lesions' list with one object per lesion, "
                            "as liverseg_predict writes it)")
    return report


def case_uncertainty(path: str | Path, reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                     detection: Mapping[str, Any], rule: str = "hit") -> dict[str, Any]:
    """The per-case entry of the analysis: the report's lesions with their TP/FP status.

    ``detection`` is the case's :func:`~liverseg.evaluation.lesions.lesion_detection` result; when
    the report numbered its lesions with another connectivity, the detection is repeated with the
    report's (same threshold), since a lesion must be the same voxels on both sides. A report made
    without probabilities (uncertainty null) gives ``has_uncertainty`` False and no lesions.
    """
    path = Path(path)
    report = read_lesion_report(path)
    connectivity = int(report.get("connectivity", detection["connectivity"]))
    entry: dict[str, Any] = {"report": str(path), "connectivity": connectivity}
    rows = report["lesions"]
    if any(row.get("uncertainty") is None for row in rows):
        return {**entry, "has_uncertainty": False, "lesions": []}
    if connectivity != detection["connectivity"]:
        detection = lesion_detection(reference, prediction, spacing, detection["threshold"], connectivity)
    labelled = lesion_status(rows, detection, rule, source=str(path))
    return {**entry, "has_uncertainty": True, "lesions": [{k: row.get(k) for k in LESION_KEYS} for row in labelled]}


def summarise_uncertainty(cases: Sequence[Mapping[str, Any]], rule: str, threshold: float,
                          plot_path: str | Path | None = None, folder: str | Path = "") -> dict[str, Any] | None:
    """Pool the per-case entries (``lesion_uncertainty`` of each case row) into the analysis.

    Returns None (one info line) when no case has a report, or when no report carries
    uncertainties. Writes the figure to ``plot_path`` when given. Cases without a report, or whose
    report has no uncertainties, are left out with a warning.
    """
    entries = [(case["case"], case.get("lesion_uncertainty")) for case in cases]
    with_report = [(name, e) for name, e in entries if e is not None]
    if not with_report:
        log.info("no lesion reports (<case>%s) beside the predictions in %s: lesion uncertainty analysis skipped",
                 REPORT_SUFFIX, folder)
        return None
    if len(with_report) < len(entries):
        missing = [name for name, e in entries if e is None]
        log.warning("%d of %d case(s) have no lesion report (%s%s); the uncertainty analysis leaves them out",
                    len(missing), len(entries), ", ".join(missing[:5]), ", ..." if len(missing) > 5 else "")
    usable = [(name, e) for name, e in with_report if e["has_uncertainty"]]
    if len(usable) < len(with_report):
        unusable = [e["report"] for _, e in with_report if not e["has_uncertainty"]]
        log.warning("%d lesion report(s) have no uncertainty (made without tumour probabilities), e.g. %s; "
                    "the uncertainty analysis leaves them out", len(unusable), unusable[0])
    if not usable:
        return None
    lesions = [{"case": name, **row} for name, e in usable for row in e["lesions"]]
    section: dict[str, Any] = {
        "rule": rule, "threshold": float(threshold),
        "connectivity": sorted({e["connectivity"] for _, e in usable}),
        "n_cases": len(usable), "n_cases_left_out": len(entries) - len(usable),
        **uncertainty_analysis(lesions),
        "plot": None,
    }
    if plot_path is not None:
        title = f"{len(lesions)} predicted lesion(s) in {len(usable)} case(s), TP/FP by {_rule_text(rule, threshold)}"
        section["plot"] = str(plot_uncertainty(lesions, plot_path, title=title))
    return section


def _rule_text(rule: str, threshold: float) -> str:
    if rule not in STATUS_RULES:
        raise LiversegError(f"rule must be one of {STATUS_RULES}, got {rule!r}")
    return f"hit (Dice > {threshold:g})" if rule == "hit" else "overlap with the reference tumour"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def uncertainty_table(section: Mapping[str, Any]) -> list[str]:
    """Markdown lines of the analysis: TP vs FP counts and uncertainties, AUC, Spearman's ρ with volume."""
    tp, fp = section["tp"], section["fp"]
    lines = [f"Lesion uncertainty (1 − mean tumour probability) of {section['n_lesions']} predicted lesion(s) in "
             f"{section['n_cases']} case(s); TP/FP by {_rule_text(section['rule'], section['threshold'])}", "",
             "| Lesions | TP | FP |", "|:--|--:|--:|",
             f"| count | {tp['n']} | {fp['n']} |",
             f"| mean uncertainty | {_fmt(tp['mean'])} | {_fmt(fp['mean'])} |",
             f"| median uncertainty | {_fmt(tp['median'])} | {_fmt(fp['median'])} |", "",
             f"AUC (an FP lesion more uncertain than a TP lesion): {_fmt(section['auc_fp_vs_tp'])}, "
             f"one-sided Mann–Whitney p = {_fmt(section['mannwhitney_p'], 4)}",
             f"Spearman ρ (uncertainty vs volume): {_fmt(section['spearman_rho_volume'])}, "
             f"p = {_fmt(section['spearman_p'], 4)}"]
    if section.get("plot"):
        lines.append(f"Figure: {section['plot']}")
    return lines
