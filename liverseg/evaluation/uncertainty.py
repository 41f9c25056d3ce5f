"""Does a lesion's uncertainty tell true from false positives? (Lambert et al. 2023, Fig. 4)

Input: a *lesion report* per case, one row per predicted lesion::

    {"id": <int>, "component_id": <int, optional>, "volume_ml": <float>, "uncertainty": <float>, ...}

The lesion is found in the predicted label map by ``component_id`` when present (the lesion
report of :mod:`liverseg.postprocessing.report` numbers its ``id`` by size and keeps the raster-order
component id there), else by ``id``: the connected-component id as
:func:`liverseg.lesion_measures.lesion_table` and :func:`liverseg.evaluation.lesions.find_lesions`
number them (same tumour label and connectivity). So both a lesion report and a lesion table with
an added ``uncertainty`` (1 − mean tumour probability over the lesion's voxels) are valid input.
Other keys are kept.

:func:`lesion_status` labels each reported lesion TP or FP against the reference using the result of
:func:`liverseg.evaluation.lesions.lesion_detection`; :func:`uncertainty_analysis` summarises the
pooled lesions of all cases and :func:`plot_uncertainty` draws the figure.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.io.atomic import save_figure

STATUS_RULES = ("overlap", "hit")


def lesion_status(report: Sequence[dict[str, Any]], detection: dict[str, Any], rule: str = "overlap",
                  source: str = "lesion report", complete: bool = True) -> list[dict[str, Any]]:
    """Copies of the report rows with ``status`` 'TP' or 'FP' added.

    ``rule='overlap'`` (the ATLAS paper's): TP when the lesion overlaps the reference tumour at all.
    ``rule='hit'`` (Chlebus et al.): TP when the lesion belongs to a correspondence with Dice > θ.
    The report must describe the prediction that ``detection`` was computed from: every id must
    exist there with the same volume, else the numbering differs and the labels would be wrong;
    with ``complete`` it must also list every predicted lesion once, so none is silently left out.
    """
    if rule not in STATUS_RULES:
        raise LiversegError(f"rule must be one of {STATUS_RULES}, got {rule!r}")
    predicted = {les["id"]: les for les in detection["lesions"] if les["source"] == "predicted"}
    rows, seen = [], set()
    for row in report:
        _check_row(row, source)
        component = int(row.get("component_id", row["id"]))
        found = predicted.get(component)
        if found is None or not math.isclose(found["volume_ml"], float(row["volume_ml"]), rel_tol=1e-3):
            raise LiversegError(
                f"{source}: lesion id {row['id']} ({row['volume_ml']} ml) is not a lesion of the evaluated "
                "prediction; make the report from the same label map with the same connectivity")
        if component in seen:
            raise LiversegError(f"{source}: lesion id {row['id']} is listed twice; make the report again from its "
                                "label map")
        seen.add(component)
        tp = found["overlaps"] if rule == "overlap" else found["status"] == "TP"
        rows.append({**row, "status": "TP" if tp else "FP"})
    missing = sorted(set(predicted) - seen)
    if complete and missing:
        volumes = ", ".join(f"{predicted[i]['volume_ml']:.4g}" for i in missing[:5])
        raise LiversegError(
            f"{source}: the evaluated prediction has {len(predicted)} lesion(s), the report lists {len(seen)}; "
            f"missing: {len(missing)} lesion(s) of {volumes}{' ...' if len(missing) > 5 else ''} ml. The report "
            "belongs to another label map: make it again from this one (liverseg_predict writes both together)")
    return rows


def _check_row(row: dict[str, Any], source: str) -> None:
    for key in ("id", "volume_ml", "uncertainty"):
        if key not in row:
            raise LiversegError(f"{source}: a lesion row lacks {key!r} (row: {row})")
    if not math.isfinite(float(row["uncertainty"])) or not float(row["volume_ml"]) > 0:
        raise LiversegError(f"{source}: lesion {row['id']} needs a finite uncertainty and a positive volume (row: {row})")


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rank correlation and its two-sided p-value (t approximation, n − 2 dof).

    The Pearson correlation of the average ranks (ties share their mean rank); NaN for fewer than
    three values or a constant variable.
    """
    from scipy import stats  # here, not at the top: evaluation workers import this module but never call it

    rx, ry = stats.rankdata(x), stats.rankdata(y)
    n = len(rx)
    if n < 3 or np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return math.nan, math.nan
    rho = float(np.corrcoef(rx, ry)[0, 1])
    if abs(rho) >= 1.0:
        return rho, 0.0
    t = rho * math.sqrt((n - 2) / (1 - rho**2))
    return rho, float(2 * stats.t.sf(abs(t), n - 2))


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan}
    return {"n": int(values.size), "mean": float(values.mean()), "median": float(np.median(values))}


def uncertainty_analysis(lesions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Uncertainty of TP vs FP lesions and its correlation with lesion volume, over all given lesions.

    ``lesions``: rows with ``status``, ``volume_ml`` and ``uncertainty`` (from :func:`lesion_status`,
    pooled over cases). Returns per-status count/mean/median, ``auc_fp_vs_tp`` = the probability that
    a random FP lesion is more uncertain than a random TP lesion (ties count half; 0.5 = no
    separation) with the one-sided Mann–Whitney p, and Spearman's ρ of uncertainty vs volume.
    """
    from scipy import stats

    unc = np.array([float(les["uncertainty"]) for les in lesions])
    vol = np.array([float(les["volume_ml"]) for les in lesions])
    is_fp = np.array([les["status"] == "FP" for les in lesions], dtype=bool)
    fp, tp = unc[is_fp], unc[~is_fp]
    rho, rho_p = spearman(unc, vol)
    result = {"n_lesions": int(unc.size), "tp": _summary(tp), "fp": _summary(fp),
              "auc_fp_vs_tp": math.nan, "mannwhitney_p": math.nan,
              "spearman_rho_volume": rho, "spearman_p": rho_p}
    if fp.size and tp.size:
        ranks = stats.rankdata(np.concatenate([fp, tp]))
        u = ranks[: fp.size].sum() - fp.size * (fp.size + 1) / 2
        result["auc_fp_vs_tp"] = float(u / (fp.size * tp.size))
        result["mannwhitney_p"] = float(stats.mannwhitneyu(fp, tp, alternative="greater").pvalue)
    return result


def plot_uncertainty(lesions: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write the PNG of Lambert et al. Fig. 4: uncertainty histograms of TP and FP lesions (left) and
    uncertainty against lesion volume on a log scale (right), with Spearman's ρ."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, NullFormatter

    analysis = uncertainty_analysis(lesions)
    unc = np.array([float(les["uncertainty"]) for les in lesions])
    vol = np.array([float(les["volume_ml"]) for les in lesions])
    is_fp = np.array([les["status"] == "FP" for les in lesions], dtype=bool)
    low, high = (0.0, 1.0) if unc.size == 0 or (unc.min() >= 0 and unc.max() <= 1) else (unc.min(), unc.max())
    bins = np.linspace(low, high, 21)
    fig = Figure(figsize=(10, 4), dpi=100)
    hist, scatter = fig.subplots(1, 2)
    for mask, name, colour in ((~is_fp, "TP", "tab:blue"), (is_fp, "FP", "tab:red")):
        hist.hist(unc[mask], bins=bins, alpha=0.6, color=colour, label=f"{name} (n = {int(mask.sum())})")
        scatter.scatter(vol[mask], unc[mask], s=14, alpha=0.7, color=colour, label=name)
    hist.set_xlabel("lesion uncertainty")
    hist.set_ylabel("lesions")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    hist.legend()
    hist.set_title(f"TP vs FP, AUC(FP > TP) = {analysis['auc_fp_vs_tp']:.2f}")
    if (vol > 0).any():  # a log axis needs a positive value (no lesions at all: a linear, empty axis)
        scatter.set_xscale("log")
        scatter.xaxis.set_minor_formatter(NullFormatter())  # crowded labels between decades
    margin = 0.02 * (high - low)
    scatter.set_ylim(low - margin, high + margin)
    scatter.set_xlabel("lesion volume (ml)")
    scatter.set_ylabel("lesion uncertainty")
    scatter.set_title(f"Spearman ρ = {analysis['spearman_rho_volume']:.2f}")
    scatter.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
