"""Paired tests, Benjamini–Hochberg and liverseg_compare on fabricated summaries.

Expected p-values come from hand formulas (t statistic and its t distribution, the exact
signed-rank distribution) or from a different implementation (scipy's false_discovery_control).
"""
from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from liverseg.cli.compare import main
from liverseg.errors import LiversegError
from liverseg.evaluation.statistics import (benjamini_hochberg, compare_summaries, metric_direction,
                                            paired_test)

# A clearly normal sample of differences: normal quantiles, mean 0.01, sd ~0.02 (Shapiro p ~ 1).
N = 20
NORMAL_DIFF = stats.norm.ppf((np.arange(1, N + 1) - 0.5) / N) * 0.02 + 0.01
# A skewed one: five small differences and one outlier (Shapiro p ~ 6e-5).
SKEWED_DIFF = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 10.0])


def t_test_p_by_hand(d):
    """One-sided p of H1: mean(d) > 0 from the t statistic mean / (sd / sqrt(n)), n - 1 dof."""
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return stats.t.sf(t, len(d) - 1)


def test_benjamini_hochberg_hand_example():
    # sorted: 0.03 -> 0.03*3/1 = 0.09, 0.04 -> 0.04*3/2 = 0.06, 0.2 -> 0.2*3/3 = 0.2;
    # monotone from the top: 0.09 becomes min(0.09, 0.06) = 0.06. NaN is ignored (m = 3).
    adjusted = benjamini_hochberg([0.04, math.nan, 0.03, 0.2])
    np.testing.assert_allclose(adjusted, [0.06, math.nan, 0.06, 0.2])
    assert np.isnan(benjamini_hochberg([math.nan])).all()


def test_benjamini_hochberg_matches_scipy():
    p = np.random.default_rng(3).random(25) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p, method="bh"))


def test_normal_differences_use_the_t_test():
    b = np.linspace(0.5, 0.9, N)
    a = b + NORMAL_DIFF
    row = paired_test(a, b, higher_is_better=True)
    assert row["shapiro_p"] > 0.05
    assert row["test"] == "t-test" and row["better"] == "A"
    assert row["p"] == pytest.approx(t_test_p_by_hand(NORMAL_DIFF))
    assert row["mean_diff"] == pytest.approx(0.01)
    # The same numbers as distances (lower is better): B is better, with the same p.
    row_hd = paired_test(a, b, higher_is_better=False)
    assert row_hd["better"] == "B" and row_hd["p"] == pytest.approx(row["p"])
    two = paired_test(a, b, two_sided=True)
    assert two["p"] == pytest.approx(2 * t_test_p_by_hand(NORMAL_DIFF))


def test_skewed_differences_use_wilcoxon():
    b = np.zeros(6)
    row = paired_test(SKEWED_DIFF, b)
    assert row["shapiro_p"] < 0.05 and row["test"] == "wilcoxon"
    # all six differences positive and distinct: W+ = 21 is the largest of 2^6 equally likely sign patterns
    assert row["better"] == "A" and row["p"] == pytest.approx(1 / 64)
    row_b = paired_test(b, SKEWED_DIFF)
    assert row_b["better"] == "B" and row_b["p"] == pytest.approx(1 / 64)


def test_degenerate_samples():
    few = paired_test([0.9, 0.8], [0.7, 0.6])
    assert few["test"] == "none" and math.isnan(few["p"]) and few["n"] == 2
    same = paired_test([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert (same["better"], same["p"]) == ("=", 1.0)
    constant = paired_test([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0])  # d = 1 everywhere
    assert constant["test"] == "wilcoxon" and constant["p"] == pytest.approx(1 / 16)


def test_wilcoxon_drops_zero_differences():
    # 17 zeros and three positive, distinct differences: the signed-rank test runs on the three,
    # where W+ = 6 is the largest of 2^3 sign patterns: p = 1/8.
    d = np.concatenate([np.zeros(17), [0.1, 0.2, 0.3]])
    row = paired_test(d, np.zeros(20))
    assert row["test"] == "wilcoxon" and row["n"] == 20
    assert row["p"] == pytest.approx(1 / 8)


@pytest.mark.parametrize("name,direction", [
    ("liver_dice", "higher"), ("tumour_surface_dice_5mm", "higher"), ("f1", "higher"), ("recall_10mm", "higher"),
    ("tumor_hd95", "lower"), ("liver_HD", "lower"), ("tumour_assd", "lower"), ("burden_rmse", "lower"),
    ("lesions/fp", "lower"), ("lesions/merge_errors", "lower"), ("tumor_burden_abs_error", "lower"),
    ("lesions/n_reference", None), ("lesions/tp", None), ("volume_ml", None), ("tumor_burden_reference", None),
])
def test_metric_direction(name, direction):
    assert metric_direction(name) == direction


def summary(values: dict[str, list], cases=None):
    names = cases or [f"case_{i:02d}" for i in range(len(next(iter(values.values()))))]
    return {"per_case": [{"case": c, **{m: v[i] for m, v in values.items()}} for i, c in enumerate(names)]}


def test_compare_pairs_cases_by_name_and_drops_missing_values():
    b_f1 = np.linspace(0.5, 0.9, N)
    a = summary({"lesions": [{"f1": float(v), "lesions": []} for v in b_f1 + NORMAL_DIFF], "volume_ml": [1.0] * N,
                 "inter_rater": [{"liver_dice": 0.9}] * N})
    # B lists the cases in reverse order and has one extra case and one null value.
    rows_b = [{"case": f"case_{i:02d}", "lesions": {"f1": float(b_f1[i])}, "volume_ml": 2.0,
               "inter_rater": {"liver_dice": 0.9}} for i in reversed(range(N))]
    rows_b[0]["lesions"]["f1"] = None  # case_19
    rows_b.append({"case": "extra", "lesions": {"f1": 0.1}, "volume_ml": 2.0})
    result = compare_summaries(a, {"per_case": rows_b})
    assert result["n_cases"] == N and result["only_in_b"] == ["extra"] and result["only_in_a"] == []
    assert result["skipped"] == ["volume_ml"]  # and inter_rater/... is not even considered
    (row,) = result["rows"]
    assert row["metric"] == "lesions/f1" and row["n"] == N - 1 and row["n_dropped"] == 1
    assert row["test"] == "t-test" and row["better"] == "A"
    assert row["p"] == pytest.approx(t_test_p_by_hand(NORMAL_DIFF[:-1]))
    assert row["p_adjusted"] == row["p"] and row["significant"] == (row["p"] <= 0.05)


def test_compare_adjusts_across_metrics():
    a = summary({"liver_dice": list(SKEWED_DIFF), "tumour_hd": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                 "lesion_f1": [0.5, 0.6, 0.7, 0.5, 0.6, 0.7]})
    b = summary({"liver_dice": [0.0] * 6, "tumour_hd": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                 "lesion_f1": [0.4, 0.65, 0.6, 0.55, 0.5, 0.75]})
    result = compare_summaries(a, b)
    rows = {r["metric"]: r for r in result["rows"]}
    assert rows["tumour_hd"]["better"] == "=" and rows["tumour_hd"]["p"] == 1.0
    expected = benjamini_hochberg([rows[m]["p"] for m in ("liver_dice", "tumour_hd", "lesion_f1")])
    assert [rows[m]["p_adjusted"] for m in ("liver_dice", "tumour_hd", "lesion_f1")] == pytest.approx(expected)
    # liver Dice: p = 1/64 alone, but three metrics are tested: 1/64 * 3 / 1 = 0.047 <= 0.05 still
    assert rows["liver_dice"]["p_adjusted"] == pytest.approx(min(3 / 64, rows["lesion_f1"]["p_adjusted"]))


def test_compare_rejects_bad_summaries():
    with pytest.raises(LiversegError, match="per_case"):
        compare_summaries({"mean": {}}, summary({"dice": [1.0]}))
    with pytest.raises(LiversegError, match="no case names"):
        compare_summaries(summary({"dice": [1.0]}, ["x"]), summary({"dice": [1.0]}, ["y"]))


def write_pair(tmp_path: Path) -> tuple[Path, Path]:
    b_dice = np.linspace(0.5, 0.9, N)
    a = summary({"liver_dice": list(b_dice + NORMAL_DIFF), "liver_hd95": list(5 + NORMAL_DIFF * 100),
                 "n_reference": [3] * N})
    b = summary({"liver_dice": list(b_dice), "liver_hd95": [None] + [5.0] * (N - 1), "n_reference": [3] * N})
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    return tmp_path / "a.json", tmp_path / "b.json"


def test_cli_end_to_end(tmp_path, capsys):
    a, b = write_pair(tmp_path)
    assert main([str(a), str(b), "-o", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| liver")]
    assert len(table) == 2
    dice_row = next(line for line in table if line.startswith("| liver_dice "))
    assert "| A |" in dice_row and "t-test" in dice_row and dice_row.endswith("| yes |")
    hd_row = next(line for line in table if line.startswith("| liver_hd95 "))
    assert "| 19 |" in hd_row and "| B |" in hd_row  # A's HD95 is higher on average: B is better
    saved = json.loads((tmp_path / "cmp.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [r["metric"] for r in saved["rows"]] == ["liver_dice", "liver_hd95"]
    assert saved["skipped"] == ["n_reference"]


def test_cli_bad_input_exits_with_a_message(tmp_path, capsys):
    a, _ = write_pair(tmp_path)
    assert main([str(a), str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main([str(a), str(tmp_path / "bad.json")]) == 2
    assert "not a valid JSON" in capsys.readouterr().err


def test_console_script_runs(tmp_path):
    a, b = write_pair(tmp_path)
    script = Path(sys.executable).with_name("liverseg_compare")
    done = subprocess.run([str(script), str(a), str(b), "--two-sided"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "two-sided" in done.stdout and "| liver_dice |" in done.stdout


def test_compare_warns_when_the_metrics_were_defined_differently(caplog):
    values = {"liver_dice": list(np.linspace(0.5, 0.9, N))}
    a, b = summary(values), summary(values)
    a.update(profile={"name": "atlas"}, lesion_threshold=0.2)
    b.update(profile={"name": "atlas"}, lesion_threshold=0.5)
    with caplog.at_level(logging.WARNING, logger="liverseg.evaluation"):
        compare_summaries(a, b, sources=("a.json", "b.json"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lesion_threshold (0.2 vs 0.5)" in warnings[0]
    caplog.clear()
    b["lesion_threshold"] = 0.2
    with caplog.at_level(logging.WARNING, logger="liverseg.evaluation"):
        compare_summaries(a, b)
    assert not caplog.records
