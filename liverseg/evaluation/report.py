"""Summaries of per-case metrics: statistics with excluded-case counts, the CSV and the markdown table.

Means, standard deviations (sample, ddof=1) and medians ignore NaN values, and every statistic
carries ``excluded``, the number of cases whose value was NaN (e.g. a distance with an empty mask),
so that a model which predicts no tumour cannot look good on tumour HD by silence.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from liverseg.evaluation.lesion_reports import uncertainty_table
from liverseg.evaluation.metrics import SEGMENTATION_METRICS, STRUCTURES
from liverseg.io.atomic import atomic_output

# Rows of the table, in the layout of Table 2 of Lambert et al. 2023 (ATLAS): per region, metrics
# in alphabetical order; HD95 is ours (the challenge reports the maximum HD only).
_ROW_METRICS = ("assd", "dice", "hd", "hd95", "surface_dice")
_LABELS = {"assd": "ASD (mm) ↓", "dice": "Dice ↑", "hd": "HD (mm) ↓", "hd95": "HD95 (mm) ↓",
           "surface_dice": "SD ↑"}
_ATLAS_SCALE = {"dice": 100.0, "surface_dice": 100.0}
_REGIONS = {"liver": "Liver", "tumor": "Tumor"}


def describe(values: Iterable[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation, median, number of values used and number excluded (NaN)."""
    array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    finite = array[~np.isnan(array)]
    n = int(finite.size)
    return {
        "mean": float(finite.mean()) if n else math.nan,
        "std": float(finite.std(ddof=1)) if n > 1 else math.nan,
        "median": float(np.median(finite)) if n else math.nan,
        "n": n,
        "excluded": int(array.size - n),
    }


def metric_keys() -> list[str]:
    """Per-case keys of the segmentation metrics, e.g. ``liver_dice``."""
    return [f"{s}_{m}" for s in STRUCTURES for m in SEGMENTATION_METRICS] + [
        "tumor_burden_reference", "tumor_burden_prediction", "tumor_burden_abs_error"]


def describe_metrics(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, dict[str, float | int]]:
    """:func:`describe` of each metric over the cases."""
    return {key: describe(row.get(key, math.nan) for row in rows) for key in (keys or metric_keys())}


def json_ready(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (null), numpy scalars by Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dictionaries as one level with ``a/b`` keys; lists are left out (they stay in the JSON)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        elif not isinstance(value, (list, tuple)):
            flat[name] = value
    return flat


def write_case_csv(path: str | Path, cases: Sequence[Mapping[str, Any]]) -> None:
    """One row per case, one column per (flattened) value, written atomically."""
    rows = [flatten(case) for case in cases]
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def _number(value: float | None, metric: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if metric in ("dice", "surface_dice"):
        return f"{value * scale:.1f}" if scale != 1.0 else f"{value:.3f}"
    if metric == "rmse":
        return f"{value * scale:.2f}" if scale != 1.0 else f"{value:.4f}"
    if metric == "lesion":
        return f"{value:.3f}"
    return f"{value:.2f}"


def _cell(stats: Mapping[str, Any] | None, metric: str, scale: float = 1.0) -> str:
    if not stats:
        return ""
    std = stats.get("std")
    text = _number(stats.get("mean"), metric, scale)
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {_number(std, metric, scale)}"
    excluded = stats.get("excluded", stats.get("n_excluded"))
    if excluded:
        text += f" ({excluded:g} excluded)"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":--", ":--"] + ["--:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _segmentation_rows(columns: list[tuple[Mapping[str, Any], float | None]], tolerance_mm: float,
                       scale_columns: frozenset[int] | set[int] = frozenset()) -> list[list[str]]:
    """Rows of Table 2; ``columns`` holds (metric statistics, tumour-burden RMSE) per column."""
    rows = []
    for structure in STRUCTURES:
        for metric in _ROW_METRICS:
            label = _LABELS[metric] + (f" @{tolerance_mm:g} mm" if metric == "surface_dice" else "")
            cells = [_cell(stats.get(f"{structure}_{metric}"), metric,
                           _ATLAS_SCALE.get(metric, 1.0) if i in scale_columns else 1.0)
                     for i, (stats, _) in enumerate(columns)]
            rows.append([_REGIONS[structure], label] + cells)
    rows.append(["Tumor", "RMSE (tumour burden) ↓"]
                + [_number(rmse, "rmse", 100.0 if i in scale_columns else 1.0) for i, (_, rmse) in enumerate(columns)])
    return rows


def _lesion_entries(aggregate: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars and statistics (dicts with a ``mean``) of a nested lesion aggregate, by ``a/b`` name."""
    entries: dict[str, Any] = {}
    for key, value in aggregate.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            entries.update({name: value} if "mean" in value else _lesion_entries(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            entries[name] = value
    return entries


def _lesion_rows(columns: list[Mapping[str, Any] | None]) -> list[list[str]]:
    """Rows of the lesion detection numbers; a column without lesion results stays blank."""
    flat = [None if aggregate is None else _lesion_entries(aggregate) for aggregate in columns]
    keys: list[str] = []
    for entries in flat:
        keys.extend(k for k in (entries or {}) if k not in keys)
    rows = []
    for key in keys:
        cells = []
        for entries in flat:
            value = None if entries is None else entries.get(key)
            if entries is None:
                cells.append("")
            elif isinstance(value, Mapping):
                cells.append(_cell(value, "lesion"))
            elif isinstance(value, float):
                cells.append(_number(value, "lesion"))
            else:
                cells.append("n/a" if value is None else str(value))
        rows.append(["Lesions", key] + cells)
    return rows


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The summary as markdown in the layout of Table 2 of the ATLAS paper (mean ± std per metric).

    One value column for one reference folder; with several raters one column per rater, the mean
    over raters, the inter-rater agreement and the uncertainty-aware score φ. The ``atlas`` profile
    adds a column in the challenge's units (Dice, Surface Dice and RMSE x100). The lesion
    uncertainty analysis, when made, follows as a short table of its own.
    """
    tolerance = float(summary["tolerance_mm"])
    profile = summary["profile"]
    heading = (f"liverseg evaluation: {summary['num_cases']} case(s), profile `{profile['name']}`, "
               f"Surface Dice tolerance {tolerance:g} mm")
    if "lesion_threshold" in summary:
        heading += (f"; lesions: {summary['lesion_connectivity']}-connected, "
                    f"hit when Dice > {summary['lesion_threshold']:g}")
    lines = [heading, ""]
    if "raters" not in summary:
        title = Path(str(summary["prediction"])).name or "prediction"
        columns = [(summary["metrics"], summary.get("tumor_burden_rmse"))]
        header = ["Region", "Metric", title]
        scaled: set[int] = set()
        if profile["name"].startswith("atlas"):
            columns.append(columns[0])
            header.append("ATLAS units (×100: Dice, SD, RMSE)")
            scaled = {1}
        lesions = [summary.get("lesions")] + [None] * (len(columns) - 1)
        lines += _table(header, _segmentation_rows(columns, tolerance, scaled) + _lesion_rows(lesions))
    else:
        raters = list(summary["raters"])
        per_rater = summary["per_rater"]
        columns = [(per_rater[r]["metrics"], per_rater[r].get("tumor_burden_rmse")) for r in raters]
        columns.append((summary["metrics"], summary.get("tumor_burden_rmse")))
        columns.append((summary["inter_rater"]["metrics"], summary["inter_rater"].get("tumor_burden_rmse")))
        header = ["Region", "Metric"] + [f"vs {r}" for r in raters] + ["mean over raters", "inter-rater"]
        rows = _segmentation_rows(columns, tolerance)
        for structure in STRUCTURES:
            phi = summary["phi"][structure]
            rows.append([_REGIONS[structure], f"φ (Dice, α={summary['alpha']:g}) ↑"] + [""] * len(raters)
                        + [_cell(phi, "dice"), ""])
        lesions = [per_rater[r].get("lesions") for r in raters] + [None, summary["inter_rater"].get("lesions")]
        lines += _table(header, rows + _lesion_rows(lesions))
    lines += ["", f"Definitions: {profile.get('description') or profile['name']}"]
    if summary.get("lesion_uncertainty"):
        lines += [""] + uncertainty_table(summary["lesion_uncertainty"])
    return "\n".join(lines)
