"""Dataset-level lesion detection numbers from the per-case results of
:func:`liverseg.evaluation.lesions.lesion_detection`.

Two views are reported, because the field uses both: *pooled* (micro) counts summed over all cases
(Chlebus et al. 2018: recall, FPs per case, Dice per correspondence over all correspondences) and
the *mean over cases* (macro) of per-case recall, precision and F1 (Hänsch et al. 2022, Table 2,
with median FPs per case). See docs/lesion_metrics.md.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from liverseg.errors import LiversegError

_COUNTS = ("n_reference", "n_predicted", "tp", "fp", "fn", "n_reference_10mm", "tp_10mm",
           "merge_errors", "split_errors")
_PER_CASE_MEANS = ("recall", "precision", "f1", "recall_10mm", "dice_case", "dice_correspondence")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, sample std (NaN for one value), median of the finite values and how many were NaN."""
    values = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0, "n_excluded": int(values.size)}
    std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return {"mean": float(finite.mean()), "std": std, "median": float(np.median(finite)),
            "n": int(finite.size), "n_excluded": int(values.size - finite.size)}


def aggregate_lesion_metrics(per_case: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool per-case detection results over a dataset.

    ``pooled``: recall = ΣTP / Σ reference lesions, precision = ΣTP / (ΣTP + ΣFP),
    F1 = 2ΣTP / (2ΣTP + ΣFP + ΣFN), recall ≥ 10 mm likewise, FPs per case = ΣFP / number of cases
    (every case counts, also those without lesions), summed merge and split errors, and Dice per
    correspondence over all hit correspondences of all cases. ``per_case``: mean ± std and median
    of the per-case values, with the number of cases excluded because the value is undefined (NaN).
    """
    if not per_case:
        raise LiversegError("no cases to aggregate lesion metrics over")
    missing = [k for k in _COUNTS if k not in per_case[0]]
    if missing:
        raise LiversegError(f"per-case lesion results lack {missing}; pass the dicts lesion_detection returns")
    totals = {k: int(sum(case[k] for case in per_case)) for k in _COUNTS}
    n_cases = len(per_case)
    hit_dice = [c["dice"] for case in per_case for c in case.get("correspondences", []) if c["is_hit"]]
    fps = [case["fp"] for case in per_case]
    pooled = {
        "n_cases": n_cases,
        **totals,
        "recall": _ratio(totals["tp"], totals["n_reference"]),
        "precision": _ratio(totals["tp"], totals["tp"] + totals["fp"]),
        "f1": _ratio(2 * totals["tp"], 2 * totals["tp"] + totals["fp"] + totals["fn"]),
        "recall_10mm": _ratio(totals["tp_10mm"], totals["n_reference_10mm"]),
        "fp_per_case": totals["fp"] / n_cases,
        "fp_per_case_median": float(np.median(fps)),
        "dice_correspondence": _stats(hit_dice),
    }
    means = {k: _stats([case.get(k, math.nan) for case in per_case]) for k in _PER_CASE_MEANS}
    means["fp"] = _stats(fps)
    return {"pooled": pooled, "per_case": means}
