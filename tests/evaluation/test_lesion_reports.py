"""liverseg_evaluate with lesion reports beside the predictions: TP/FP lesions and their uncertainty.

The folders are what liverseg_predict writes: label maps, ``<case>.lesions.json`` made by
:func:`liverseg.postprocessing.report.lesion_report` from the label file and a constructed tumour
probability map (constant per lesion, so each lesion's uncertainty is known), and the
``<case>_lesions.nii.gz`` instance maps. Which lesion is TP or FP is known by construction.
"""
from __future__ import annotations

import itertools
import json
import logging

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import stats

from liverseg.cli.evaluate import main
from liverseg.errors import LiversegError
from liverseg.evaluation.evaluate import evaluate_folders
from liverseg.io.images import read_image
from liverseg.postprocessing.report import lesion_instance_map, lesion_report, write_case_report

SPACING_XYZ = (0.8, 0.8, 3.0)
VOXEL_ML = 0.8 * 0.8 * 3.0 / 1000
SHAPE = (6, 16, 64)

# Case c1. Reference lesions R1 (2 x 4 x 8 = 64 voxels) and R2 (2 x 4 x 10 = 80). Predicted:
# P1 = R1 (hit, Dice 1); P2 (2 x 4 x 20 = 160) overlaps R2 in 2 x 4 x 2 = 16 voxels, Dice 32 / 240 < 0.2:
# not a hit, but it overlaps; P3 (2 x 2 x 4 = 16) overlaps nothing. Case c2: one lesion predicted exactly.
R1, R2 = np.s_[2:4, 3:7, 4:12], np.s_[2:4, 3:7, 20:30]
P1, P2, P3 = R1, np.s_[2:4, 3:7, 28:48], np.s_[2:4, 10:12, 52:56]
PROBABILITY = {"P1": 0.9, "P2": 0.25, "P3": 0.3, "P4": 0.8}  # uncertainty = 1 - probability


def _liver():
    label = np.zeros(SHAPE, np.uint8)
    label[1:5, 1:15, 1:63] = 1
    return label


def _write(path, array):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(SPACING_XYZ)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _predict(folder, case, lesions, probabilities=True):
    """Write a predicted label map with the given lesions (slice -> tumour probability), its report and lesion map."""
    label = _liver()
    probability = np.zeros(SHAPE, np.float32)
    for box, p in lesions:
        label[box] = 2
        probability[box] = p
    _write(folder / f"{case}.nii.gz", label)
    array, geometry = read_image(folder / f"{case}.nii.gz")
    report = lesion_report(array, geometry, probability if probabilities else None, case)
    write_case_report(report, folder, lesion_instance_map(array), geometry)


@pytest.fixture
def folders(tmp_path):
    ref, pred = tmp_path / "labels", tmp_path / "preds"
    c1 = _liver()
    c1[R1] = c1[R2] = 2
    _write(ref / "c1.nii.gz", c1)
    c2 = _liver()
    c2[R1] = 2
    _write(ref / "c2.nii.gz", c2)
    _predict(pred, "c1", [(P1, PROBABILITY["P1"]), (P2, PROBABILITY["P2"]), (P3, PROBABILITY["P3"])])
    _predict(pred, "c2", [(R1, PROBABILITY["P4"])])
    return ref, pred


def _auc(fp, tp):
    """P(FP more uncertain than TP), counting every pair (ties 1/2)."""
    return np.mean([1.0 if f > t else 0.5 if f == t else 0.0 for f, t in itertools.product(fp, tp)])


def test_reported_lesions_are_labelled_by_hit_and_analysed(folders, tmp_path):
    ref, pred = folders
    summary = evaluate_folders(ref, pred, output=tmp_path / "out" / "summary.json")
    # The report numbers lesions by size: P2 (160 voxels), P1 (64), P3 (16).
    rows = summary["per_case"][0]["lesion_uncertainty"]["lesions"]
    assert [r["volume_ml"] for r in rows] == pytest.approx([160 * VOXEL_ML, 64 * VOXEL_ML, 16 * VOXEL_ML])
    assert [r["status"] for r in rows] == ["FP", "TP", "FP"]
    assert [r["status"] for r in summary["per_case"][1]["lesion_uncertainty"]["lesions"]] == ["TP"]
    tp = [1 - PROBABILITY["P1"], 1 - PROBABILITY["P4"]]
    fp = [1 - PROBABILITY["P2"], 1 - PROBABILITY["P3"]]
    section = summary["lesion_uncertainty"]
    assert (section["rule"], section["threshold"], section["connectivity"]) == ("hit", 0.2, [26])
    assert (section["n_lesions"], section["tp"]["n"], section["fp"]["n"], section["n_cases"]) == (4, 2, 2, 2)
    assert section["tp"]["mean"] == pytest.approx(np.mean(tp), abs=1e-6)
    assert section["fp"]["mean"] == pytest.approx(np.mean(fp), abs=1e-6)
    assert section["auc_fp_vs_tp"] == pytest.approx(_auc(fp, tp)) == pytest.approx(1.0)
    uncertainty = [1 - PROBABILITY[p] for p in ("P2", "P1", "P3", "P4")]
    volume = [160 * VOXEL_ML, 64 * VOXEL_ML, 16 * VOXEL_ML, 64 * VOXEL_ML]
    expected = stats.spearmanr(uncertainty, volume)
    assert section["spearman_rho_volume"] == pytest.approx(expected.statistic)
    assert section["spearman_p"] == pytest.approx(expected.pvalue)
    png = tmp_path / "out" / "summary_lesion_uncertainty.png"
    assert section["plot"] == str(png)
    assert matplotlib.image.imread(png).shape[:2] == (400, 1000)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["lesion_uncertainty"]["fp"]["n"] == 2
    # The lesion maps beside the label maps were not taken for predictions.
    assert [row["case"] for row in summary["per_case"]] == ["c1", "c2"]


def test_overlap_rule_counts_the_touching_miss_as_tp(folders):
    ref, pred = folders
    section = evaluate_folders(ref, pred, uncertainty_rule="overlap")["lesion_uncertainty"]
    tp = [1 - PROBABILITY[p] for p in ("P1", "P2", "P4")]
    fp = [1 - PROBABILITY["P3"]]
    assert (section["tp"]["n"], section["fp"]["n"]) == (3, 1)
    assert section["tp"]["mean"] == pytest.approx(np.mean(tp), abs=1e-6)
    assert section["auc_fp_vs_tp"] == pytest.approx(_auc(fp, tp)) == pytest.approx(2 / 3)


def test_cli_prints_the_table_and_records_the_analysis(folders, tmp_path, capsys):
    ref, pred = folders
    assert main(["-r", str(ref), "-p", str(pred), "-np", "1", "--uncertainty-rule", "hit"]) == 0
    out = capsys.readouterr().out
    assert "| count | 2 | 2 |" in out
    assert f"| mean uncertainty | {np.mean([0.1, 0.2]):.3f} | {np.mean([0.75, 0.7]):.3f} |" in out
    assert (pred / "summary_lesion_uncertainty.png").is_file()
    assert json.loads((pred / "summary.json").read_text())["lesion_uncertainty"]["rule"] == "hit"


def test_without_reports_the_analysis_is_skipped_with_one_line(folders, caplog):
    ref, pred = folders
    for report in pred.glob("*.lesions.json"):
        report.unlink()
    with caplog.at_level(logging.INFO, logger="liverseg.evaluation"):
        summary = evaluate_folders(ref, pred)
    assert "lesion_uncertainty" not in summary and "tp" in summary["lesions"]["pooled"]
    assert sum("lesion uncertainty analysis skipped" in r.getMessage() for r in caplog.records) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_reports_without_probabilities_are_left_out_with_a_warning(folders, caplog):
    ref, pred = folders
    _predict(pred, "c2", [(R1, 0.8)], probabilities=False)
    with caplog.at_level(logging.INFO, logger="liverseg.evaluation"):
        section = evaluate_folders(ref, pred)["lesion_uncertainty"]
    assert (section["n_cases"], section["n_cases_left_out"], section["n_lesions"]) == (1, 1, 3)
    assert any("no uncertainty" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_a_report_of_another_label_map_is_an_error_naming_it(folders, capsys):
    ref, pred = folders
    # The label map loses P3 after its report was written: the report names a lesion that is not there.
    report = (pred / "c1.lesions.json").read_text()
    _predict(pred, "c1", [(P1, 0.9), (P2, 0.25)])
    (pred / "c1.lesions.json").write_text(report)
    with pytest.raises(LiversegError, match=r"c1\.lesions\.json: lesion id 3 .* is not a lesion"):
        evaluate_folders(ref, pred)
    # ... and a report that leaves out a lesion of its label map.
    _predict(pred, "c1", [(P1, 0.9), (P2, 0.25)])
    report = (pred / "c1.lesions.json").read_text()
    _predict(pred, "c1", [(P1, 0.9), (P2, 0.25), (P3, 0.3)])
    (pred / "c1.lesions.json").write_text(report)
    assert main(["-r", str(ref), "-p", str(pred), "-np", "1"]) == 2
    err = capsys.readouterr().err
    assert "c1.lesions.json" in err and "missing: 1 lesion" in err and "Traceback" not in err
    (pred / "c1.lesions.json").write_text("{not json")
    with pytest.raises(LiversegError, match=r"c1\.lesions\.json: cannot read the lesion report"):
        evaluate_folders(ref, pred)


def test_report_connectivity_decides_its_lesions(tmp_path):
    """A 26-connected report evaluated with 6-connectivity: the report's lesion (two boxes touching at a
    corner) is labelled with a detection at the report's connectivity, not split."""
    ref, pred = tmp_path / "labels", tmp_path / "preds"
    a, b = np.s_[2:4, 3:5, 4:8], np.s_[4:5, 5:6, 8:9]  # b touches a's corner voxel (3, 4, 7) diagonally
    reference = _liver()
    reference[a] = 2
    _write(ref / "c.nii.gz", reference)
    _predict(pred, "c", [(a, 0.9), (b, 0.9)])
    summary = evaluate_folders(ref, pred, lesion_connectivity=6)
    assert summary["per_case"][0]["lesions"]["n_predicted"] == 2  # the metrics use 6-connectivity
    entry = summary["per_case"][0]["lesion_uncertainty"]
    assert entry["connectivity"] == 26
    assert [(r["volume_ml"], r["status"]) for r in entry["lesions"]] == [(pytest.approx(17 * VOXEL_ML), "TP")]


def test_several_raters_skip_the_analysis(folders, tmp_path, caplog):
    ref, pred = folders
    with caplog.at_level(logging.INFO, logger="liverseg.evaluation"):
        summary = evaluate_folders([ref, ref], pred)
    assert "lesion_uncertainty" not in summary
    assert any("several reference folders" in r.getMessage() for r in caplog.records)
