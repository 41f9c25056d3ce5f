"""Evaluation against several raters, and the uncertainty-aware score φ (Moltz; Hänsch et al. 2022).

With several reference segmentations of the same cases, an algorithm is judged against the
disagreement between humans: every metric is reported against each rater, averaged over raters,
and next to the mean pairwise agreement between the raters. Per case and structure,

    φ = max(1 − α · ε̂ / ε̄, 0),  ε̂ = 1 − mean_i Dice(algorithm, rater_i),
                                ε̄ = 1 − mean_{i<j} Dice(rater_i, rater_j),

with α = 0.1, so φ = 0.9 means "as far from the raters as they are from each other" and 1 means
perfect agreement. When the raters agree perfectly (ε̄ = 0), φ is 1 if the algorithm agrees too
and 0 otherwise (the limit of the formula); φ is NaN when a Dice it needs is NaN.
"""
from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from liverseg.evaluation.metrics import STRUCTURES, evaluate_case, rmse
from liverseg.evaluation.profiles import MetricProfile
from liverseg.evaluation.report import describe, describe_metrics

ALPHA = 0.1


def rater_names(folders: Sequence[str | Path]) -> list[str]:
    """Short unique names for the reference folders: their folder names, else ``rater1``, ``rater2``, ..."""
    names = [Path(f).name for f in folders]
    if len(set(names)) == len(names) and all(names):
        return names
    return [f"rater{i + 1}" for i in range(len(folders))]


def phi(algorithm_dice: Sequence[float], inter_rater_dice: Sequence[float], alpha: float = ALPHA) -> float:
    """Uncertainty-aware score from the Dice values against each rater and between rater pairs."""
    values = [*algorithm_dice, *inter_rater_dice]
    if len(algorithm_dice) == 0 or len(inter_rater_dice) == 0 or any(math.isnan(d) for d in values):
        return math.nan
    error = 1.0 - float(np.mean(algorithm_dice))
    inter_error = 1.0 - float(np.mean(inter_rater_dice))
    if inter_error <= 0.0:
        return 1.0 if error <= 0.0 else 0.0
    return max(1.0 - alpha * error / inter_error, 0.0)


def _nanmean(values: Sequence[float]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN gives NaN, which is the answer
        return float(np.nanmean(np.asarray(values, dtype=float))) if len(values) else math.nan


def _mean_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean per numeric key over rows (NaN-aware), descending into nested dictionaries."""
    result: dict[str, Any] = {}
    for key, value in (rows[0].items() if rows else []):
        if isinstance(value, Mapping):
            result[key] = _mean_of([row[key] for row in rows if isinstance(row.get(key), Mapping)])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            result[key] = _nanmean([math.nan if row.get(key) is None else row[key] for row in rows])
    return result


def evaluate_case_raters(
    references: Sequence[np.ndarray],
    prediction: np.ndarray,
    spacing: Sequence[float],
    names: Sequence[str],
    profile: str | MetricProfile = "default",
    tolerance_mm: float = 5.0,
    threads: int = 1,
    lesion_metrics: Callable[[np.ndarray, np.ndarray, Sequence[float]], dict] | None = None,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Metrics of one case against each rater, their mean, the inter-rater agreement and φ.

    The returned flat keys (``liver_dice``, ...) are the means over raters, so a several-rater
    summary can be read like a single-rater one; ``per_rater`` and ``inter_rater`` hold the rest.
    ``lesion_metrics`` (reference, prediction, spacing) -> dict is applied per rater and per pair.
    """
    if len(references) < 2 or len(references) != len(names):
        raise ValueError("need at least two references and one name per reference")
    per_rater = {name: evaluate_case(ref, prediction, spacing, profile, tolerance_mm, threads)
                 for name, ref in zip(names, references)}
    pairs = list(itertools.combinations(range(len(references)), 2))
    pair_rows = [evaluate_case(references[i], references[j], spacing, profile, tolerance_mm, threads) for i, j in pairs]
    mean_over_raters = _mean_of(list(per_rater.values()))
    inter_rater = _mean_of(pair_rows)
    result: dict[str, Any] = dict(mean_over_raters)
    for structure in STRUCTURES:
        key = f"{structure}_dice"
        result[f"{structure}_phi"] = phi([row[key] for row in per_rater.values()],
                                         [row[key] for row in pair_rows], alpha)
    # Burden pairs for the inter-rater RMSE: rater i's burden is the "reference", rater j's the "prediction".
    inter_rater["burden_pairs"] = [[row["tumor_burden_reference"], row["tumor_burden_prediction"]] for row in pair_rows]
    if lesion_metrics is not None:
        for name, ref in zip(names, references):
            per_rater[name]["lesions"] = lesion_metrics(ref, prediction, spacing)
        inter_rater["lesions"] = [lesion_metrics(references[i], references[j], spacing) for i, j in pairs]
    result["per_rater"] = per_rater
    result["inter_rater"] = inter_rater
    return result


def summarise_raters(
    cases: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    aggregate_lesions: Callable[[list[dict]], dict] | None = None,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Dataset-level statistics of :func:`evaluate_case_raters` results (one per case)."""
    per_rater: dict[str, Any] = {}
    for name in names:
        rows = [case["per_rater"][name] for case in cases]
        entry: dict[str, Any] = {
            "metrics": describe_metrics(rows),
            "tumor_burden_rmse": rmse([r["tumor_burden_reference"] for r in rows],
                                      [r["tumor_burden_prediction"] for r in rows]),
        }
        if aggregate_lesions is not None and all("lesions" in r for r in rows):
            entry["lesions"] = aggregate_lesions([r["lesions"] for r in rows])
        per_rater[name] = entry
    num_pairs = len(names) * (len(names) - 1) // 2
    pair_rmse = [
        rmse([case["inter_rater"]["burden_pairs"][p][0] for case in cases],
             [case["inter_rater"]["burden_pairs"][p][1] for case in cases])
        for p in range(num_pairs)
    ]
    inter_rater: dict[str, Any] = {
        "metrics": describe_metrics([case["inter_rater"] for case in cases]),
        "tumor_burden_rmse": _nanmean(pair_rmse),
    }
    if aggregate_lesions is not None and all("lesions" in case["inter_rater"] for case in cases):
        per_pair = [aggregate_lesions([case["inter_rater"]["lesions"][p] for case in cases]) for p in range(num_pairs)]
        inter_rater["lesions"] = _mean_of(per_pair)
    return {
        "raters": list(names),
        "alpha": alpha,
        "metrics": describe_metrics(cases),
        "tumor_burden_rmse": _nanmean([per_rater[n]["tumor_burden_rmse"] for n in names]),
        "per_rater": per_rater,
        "inter_rater": inter_rater,
        "phi": {s: describe(case[f"{s}_phi"] for case in cases) for s in STRUCTURES},
    }
