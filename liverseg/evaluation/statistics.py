"""Paired comparison of two pipelines evaluated on the same cases, as in Table 3 of the ATLAS paper
(Lambert et al. 2023) with the Benjamini–Hochberg correction of Hänsch et al. 2022.

Input contract (the ``summary.json`` that ``liverseg_evaluate`` writes; only this part is read)::

    {"per_case": [{"case": "<name>", "<metric>": <float | null>, ...}, ...], ...}

Cases are paired by ``case``; a metric is compared on the cases where both summaries have a finite
value (``null``/NaN, e.g. a distance to an empty mask, drops that pair for that metric only), and
the number of pairs is reported. Nested dictionaries in a case row are flattened with ``/``
(``{"lesions": {"f1": x}}`` is the metric ``lesions/f1``, as in the per-case CSV); lists and strings
are ignored, and so are the ``per_rater`` and ``inter_rater`` parts of a several-rater evaluation
(the inter-rater values do not depend on the pipeline; the row's own values are the means over
raters, and φ), and so is the per-lesion ``lesion_uncertainty`` entry. Two summaries made with
different metric definitions (profile, tolerance, lesion threshold or connectivity) are compared
with a warning, since their numbers do not measure the same thing.

Per metric, with d = A − B oriented so that d > 0 means A is better (higher Dice, lower HD, ...):

1. Shapiro–Wilk on d; if its p > ``normality_alpha`` (d may be normal), a paired t-test, else the
   Wilcoxon signed-rank test (zero differences dropped, as in Wilcoxon's original test);
2. both one-sided alternatives are evaluated and the side the data favour is reported as the
   better pipeline with its one-sided p, the "Hypothesis" column of the ATLAS paper. Because the
   side is read from the data, this p is half the two-sided p for the t-test; ``two_sided=True``
   reports the two-sided p instead (the conservative choice);
3. Benjamini–Hochberg adjusted p-values across all tested metrics; a difference is significant
   when its adjusted p ≤ ``alpha``.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from liverseg.errors import LiversegError
from liverseg.io.atomic import read_json, write_json

log = logging.getLogger(__name__)

#: Name tokens that say which way a metric improves. A metric matching neither (or both) is skipped.
#: TP and FN counts are left out on purpose: with the same reference they carry what recall does.
HIGHER_IS_BETTER = frozenset({"dice", "f1", "recall", "precision", "sensitivity", "specificity", "iou",
                              "jaccard", "nsd", "phi", "accuracy"})
LOWER_IS_BETTER = frozenset({"hd", "hd95", "hausdorff", "assd", "asd", "masd", "rmse", "mae", "error",
                             "errors", "fp", "distance"})
#: Parts of a case row that are not results of the compared pipeline alone.
IGNORED_KEYS = frozenset({"case", "per_rater", "inter_rater", "lesion_uncertainty"})
MIN_PAIRS = 3  # Shapiro–Wilk needs three values
#: Summary entries that define what the metrics mean; they should agree between compared summaries.
SETTINGS_KEYS = ("profile", "tolerance_mm", "lesion_threshold", "lesion_connectivity")


def metric_direction(name: str) -> str | None:
    """'higher' or 'lower' (which values are better) from a metric's name, None when unknown."""
    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    higher, lower = bool(tokens & HIGHER_IS_BETTER), bool(tokens & LOWER_IS_BETTER)
    if higher == lower:
        return None
    return "higher" if higher else "lower"


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false discovery rate), in the input order.

    adjusted p_(i) = min over j ≥ i of m·p_(j)/j, capped at 1, for the m finite p-values sorted
    ascending; NaN entries stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted


def paired_test(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True,
                normality_alpha: float = 0.05, two_sided: bool = False) -> dict[str, Any]:
    """Test whether A and B differ on paired values; say which is better and how sure we can be.

    Returns n, the means, the mean difference A − B, the Shapiro–Wilk p on the differences, the
    test used ('t-test', 'wilcoxon' or 'none'), ``better`` ('A', 'B' or '=') and ``p``. With fewer
    than three pairs nothing is tested (p NaN); with all differences zero, better is '=' and p = 1.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = (a - b) if higher_is_better else (b - a)
    row: dict[str, Any] = {"n": int(d.size), "mean_a": float(a.mean()) if a.size else math.nan,
                           "mean_b": float(b.mean()) if b.size else math.nan,
                           "mean_diff": float((a - b).mean()) if a.size else math.nan,
                           "shapiro_p": math.nan, "test": "none", "better": "=", "p": math.nan}
    if d.size < MIN_PAIRS:
        return row
    if np.all(d == 0):
        row["p"] = 1.0
        return row
    if np.ptp(d) > 0:
        row["shapiro_p"] = float(stats.shapiro(d).pvalue)
    # Constant non-zero differences have no variance for a t-test; the signed-rank test still works.
    normal = row["shapiro_p"] > normality_alpha
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's normal approximation with ties
        if normal:
            row["test"] = "t-test"
            greater = stats.ttest_1samp(d, 0.0, alternative="greater").pvalue
            less = stats.ttest_1samp(d, 0.0, alternative="less").pvalue
            both = stats.ttest_1samp(d, 0.0).pvalue
        else:
            # Dropping zeros first (Wilcoxon's convention) keeps scipy's exact distribution for
            # up to 50 non-zero differences without ties, instead of a normal approximation.
            row["test"] = "wilcoxon"
            nonzero = d[d != 0]
            greater = stats.wilcoxon(nonzero, alternative="greater").pvalue
            less = stats.wilcoxon(nonzero, alternative="less").pvalue
            both = stats.wilcoxon(nonzero).pvalue
    row["better"] = "A" if greater < less else "B" if less < greater else "="
    row["p"] = float(both if two_sided else min(greater, less))
    return row


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[name] = math.nan if value is None else float(value)
    return out


def per_case_table(summary: dict[str, Any], source: str = "summary") -> dict[str, dict[str, float]]:
    """{case name: {metric: value}} from a summary's ``per_case`` list (see the module docstring)."""
    rows = summary.get("per_case") if isinstance(summary, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "case" in r for r in rows):
        raise LiversegError(f"{source}: expected a 'per_case' list of rows with a 'case' name; "
                            "pass a summary.json written by liverseg_evaluate")
    table = {}
    for r in rows:
        name = str(r["case"])
        if name in table:
            raise LiversegError(f"{source}: case {name!r} appears twice in 'per_case'")
        table[name] = _flatten({k: v for k, v in r.items() if k not in IGNORED_KEYS})
    return table


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read a summary.json, with a clear error when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise LiversegError(f"{path}: no such summary file; run liverseg_evaluate -o {path} first")
    try:
        return read_json(path)
    except ValueError as e:
        raise LiversegError(f"{path}: not a valid JSON file ({e})") from None


def compare_summaries(summary_a: dict[str, Any], summary_b: dict[str, Any], alpha: float = 0.05,
                      normality_alpha: float = 0.05, two_sided: bool = False,
                      directions: dict[str, str] | None = None,
                      sources: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Paired tests of every metric the two summaries share, with Benjamini–Hochberg adjustment.

    ``directions`` maps metric names to 'higher'/'lower' and overrides :func:`metric_direction`;
    metrics whose direction is unknown are listed under ``skipped``. Returns the rows (one per
    tested metric, in the order of the first summary) and how the cases paired up.
    """
    if not 0 < alpha < 1:
        raise LiversegError(f"alpha must be between 0 and 1, got {alpha}")
    table_a, table_b = per_case_table(summary_a, sources[0]), per_case_table(summary_b, sources[1])
    common = [c for c in table_a if c in table_b]
    if not common:
        raise LiversegError(f"{sources[0]} and {sources[1]} share no case names; "
                            "compare evaluations of the same cases")
    _warn_on_different_settings(summary_a, summary_b, sources)
    only_a = sorted(set(table_a) - set(table_b))
    only_b = sorted(set(table_b) - set(table_a))
    if only_a or only_b:
        log.warning("cases only in A: %d, only in B: %d (left out)", len(only_a), len(only_b))
    metrics = [m for m in table_a[common[0]] if all(m in table_a[c] and m in table_b[c] for c in common)]
    directions = directions or {}
    rows, skipped = [], []
    for metric in metrics:
        direction = directions.get(metric) or metric_direction(metric)
        if direction not in ("higher", "lower"):
            skipped.append(metric)
            continue
        a = np.array([table_a[c][metric] for c in common])
        b = np.array([table_b[c][metric] for c in common])
        keep = np.isfinite(a) & np.isfinite(b)
        row = {"metric": metric, "direction": direction,
               **paired_test(a[keep], b[keep], direction == "higher", normality_alpha, two_sided)}
        row["n_dropped"] = int((~keep).sum())
        rows.append(row)
    if skipped:
        log.info("not compared (unknown whether higher or lower is better): %s", ", ".join(skipped))
    adjusted = benjamini_hochberg([r["p"] for r in rows])
    for row, p_adj in zip(rows, adjusted):
        row["p_adjusted"] = float(p_adj)
        row["significant"] = bool(p_adj <= alpha)
    return {"alpha": alpha, "normality_alpha": normality_alpha, "two_sided": two_sided,
            "n_cases": len(common), "only_in_a": only_a, "only_in_b": only_b,
            "rows": rows, "skipped": skipped}


def _warn_on_different_settings(summary_a: dict[str, Any], summary_b: dict[str, Any],
                                sources: tuple[str, str]) -> None:
    for key in SETTINGS_KEYS:
        if summary_a.get(key) != summary_b.get(key):
            log.warning("%s and %s were evaluated with different %s (%s vs %s): their metrics are not defined the same "
                        "way; evaluate both with the same options", sources[0], sources[1], key,
                        _setting_text(summary_a.get(key)), _setting_text(summary_b.get(key)))


def _setting_text(value: Any) -> str:
    return str(value.get("name", value)) if isinstance(value, dict) else str(value)


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_ready(v) for v in obj]
    return obj


def write_comparison(path: str | Path, result: dict[str, Any]) -> None:
    """Write a :func:`compare_summaries` result as standard JSON (NaN becomes null), atomically."""
    write_json(path, _json_ready(result))


def _fmt(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def format_comparison(result: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """The comparison as a markdown table (one row per metric), with a legend naming A and B."""
    sided = "two-sided" if result["two_sided"] else "one-sided"
    lines = [f"A = {name_a}", f"B = {name_b}",
             f"{result['n_cases']} paired cases; {sided} p-values, Benjamini–Hochberg adjusted, "
             f"significant when adjusted p ≤ {result['alpha']}", "",
             "| metric | better when | n | mean A | mean B | better | Shapiro p | test | p | adjusted p | significant |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['metric']} | {r['direction']} | {r['n']} | {_fmt(r['mean_a'])} | {_fmt(r['mean_b'])} "
                     f"| {r['better']} | {_fmt(r['shapiro_p'])} | {r['test']} | {_fmt(r['p'])} "
                     f"| {_fmt(r['p_adjusted'])} | {'yes' if r['significant'] else 'no'} |")
    return "\n".join(lines)
