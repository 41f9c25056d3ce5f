"""Lesion uncertainty analysis: TP/FP labelling of a lesion report, statistics, the PNG."""
from __future__ import annotations

import itertools

import matplotlib.image
import numpy as np
import pytest
from scipy import stats

from liverseg.errors import LiversegError
from liverseg.evaluation.lesions import lesion_detection
from liverseg.evaluation.uncertainty import lesion_status, plot_uncertainty, spearman, uncertainty_analysis
from liverseg.lesion_measures import lesion_table
from liverseg.postprocessing.report import lesion_report

SPACING = (2.0, 1.0, 1.0)


def constructed_case():
    """Reference: lesions at x [0, 10) and [20, 30). Prediction: x [0, 10) (hit), [28, 48) (overlaps
    the second reference lesion by 2 of 10 + 20: Dice 4/30 < 0.2, not a hit) and [55, 60) (no overlap)."""
    ref = np.zeros((4, 4, 64), np.uint8)
    pred = np.zeros_like(ref)
    for start, stop in ((0, 10), (20, 30)):
        ref[1:3, 1:3, start:stop] = 2
    for start, stop in ((0, 10), (28, 48), (55, 60)):
        pred[1:3, 1:3, start:stop] = 2
    return ref, pred


def report_for(pred, uncertainties):
    rows = lesion_table(pred, SPACING)
    return [{**row, "uncertainty": u} for row, u in zip(rows, uncertainties)]


def test_status_by_overlap_and_by_hit():
    ref, pred = constructed_case()
    detection = lesion_detection(ref, pred, SPACING)
    report = report_for(pred, [0.1, 0.4, 0.8])
    assert [r["volume_ml"] for r in report] == pytest.approx([40 * 2e-3, 80 * 2e-3, 20 * 2e-3])
    assert [r["status"] for r in lesion_status(report, detection, "overlap")] == ["TP", "TP", "FP"]
    assert [r["status"] for r in lesion_status(report, detection, "hit")] == ["TP", "FP", "FP"]
    assert lesion_status(report, detection)[0]["uncertainty"] == 0.1  # other keys are kept


def test_status_rejects_a_report_of_another_prediction():
    ref, pred = constructed_case()
    detection = lesion_detection(ref, pred, SPACING)
    report = report_for(pred, [0.1, 0.4, 0.8])
    with pytest.raises(LiversegError, match="id 9"):
        lesion_status([{**report[0], "id": 9}], detection)
    with pytest.raises(LiversegError, match="not a lesion"):
        lesion_status([{**report[0], "volume_ml": 1.0}], detection)
    with pytest.raises(LiversegError, match="uncertainty"):
        lesion_status([{"id": 1, "volume_ml": 0.08}], detection)
    with pytest.raises(LiversegError, match="rule"):
        lesion_status(report, detection, rule="iou")


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    volume = np.round(rng.lognormal(0, 1.5, 40), 1)  # rounding makes ties
    uncertainty = np.clip(0.6 - 0.1 * np.log(volume + 0.05) + rng.normal(0, 0.1, 40), 0, 1)
    rho, p = spearman(uncertainty, volume)
    expected = stats.spearmanr(uncertainty, volume)
    assert rho == pytest.approx(expected.statistic) and rho < -0.5
    assert p == pytest.approx(expected.pvalue)
    assert np.isnan(spearman([1.0, 2.0], [3.0, 4.0])[0])
    assert spearman([1, 2, 3, 4], [8, 6, 4, 2])[0] == pytest.approx(-1.0)


def test_uncertainty_analysis_separates_fp_from_tp():
    tp = [0.05, 0.1, 0.2, 0.3, 0.5]
    fp = [0.3, 0.45, 0.6, 0.7]
    lesions = ([{"status": "TP", "uncertainty": u, "volume_ml": 10 - 10 * u} for u in tp]
               + [{"status": "FP", "uncertainty": u, "volume_ml": 5 - 5 * u} for u in fp])
    result = uncertainty_analysis(lesions)
    assert (result["tp"]["n"], result["fp"]["n"], result["n_lesions"]) == (5, 4, 9)
    assert result["fp"]["median"] == pytest.approx(0.525)
    # AUC by counting all FP x TP pairs: FP more uncertain = 1, tie = 1/2
    pairs = [1.0 if f > t else 0.5 if f == t else 0.0 for f, t in itertools.product(fp, tp)]
    assert result["auc_fp_vs_tp"] == pytest.approx(np.mean(pairs)) == pytest.approx(17.5 / 20)
    assert result["mannwhitney_p"] < 0.05
    only_tp = uncertainty_analysis(lesions[:5])
    assert np.isnan(only_tp["auc_fp_vs_tp"]) and only_tp["spearman_rho_volume"] == pytest.approx(-1.0)


def test_plot_is_written(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.lognormal(0, 1.5, 60)
    uncertainty = np.clip(0.5 - 0.12 * np.log(volume) + rng.normal(0, 0.08, 60), 0, 1)
    status = np.where(uncertainty + rng.normal(0, 0.1, 60) > 0.5, "FP", "TP")
    lesions = [{"status": s, "uncertainty": u, "volume_ml": v} for s, u, v in zip(status, uncertainty, volume)]
    path = plot_uncertainty(lesions, tmp_path / "plots" / "lesion_uncertainty.png", title="constructed")
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (400, 1000)
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert list((tmp_path / "plots").iterdir()) == [path]  # no temporary file left behind


def test_plot_without_any_lesion_is_still_written(tmp_path):
    """A model that predicts no tumour at all must not break the evaluation's figure."""
    path = plot_uncertainty([], tmp_path / "empty.png")
    assert matplotlib.image.imread(path).shape[:2] == (400, 1000)


def test_lesion_report_rows_are_found_by_component_id():
    """The post-processing lesion report numbers ids by size; its component_id is the raster-order id."""
    reference = np.zeros((4, 20, 20), np.uint8)
    predicted = np.zeros_like(reference)
    reference[1:3, 2:4, 2:4] = 2          # small lesion first in raster order, hit
    predicted[1:3, 2:4, 2:4] = 2
    predicted[1:3, 10:16, 10:16] = 2      # larger lesion later in raster order, false positive
    probability = np.where(predicted == 2, 0.8, 0.0).astype(np.float32)
    report = lesion_report(predicted, spacing=(1.0, 1.0, 1.0), tumour_probability=probability)["lesions"]
    assert [row["id"] for row in report] == [1, 2] and [row["component_id"] for row in report] == [2, 1]
    detection = lesion_detection(reference, predicted, (1.0, 1.0, 1.0))
    status = {row["id"]: row["status"] for row in lesion_status(report, detection)}
    assert status == {1: "FP", 2: "TP"}


def test_status_rejects_an_incomplete_report_or_a_lesion_listed_twice():
    ref, pred = constructed_case()
    detection = lesion_detection(ref, pred, SPACING)
    report = report_for(pred, [0.1, 0.4, 0.8])
    with pytest.raises(LiversegError, match=r"has 3 lesion\(s\), the report lists 2; missing: 1 lesion\(s\) of 0.04 "):
        lesion_status(report[:2], detection, source="c1.lesions.json")
    assert len(lesion_status(report[:2], detection, complete=False)) == 2
    with pytest.raises(LiversegError, match="listed twice"):
        lesion_status([report[0], report[0], report[1], report[2]], detection)
