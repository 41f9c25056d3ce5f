"""Several raters: metrics per rater, mean over raters, inter-rater agreement and φ, by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.evaluation.evaluate import evaluate_folders
from liverseg.evaluation.raters import evaluate_case_raters, phi, rater_names
from liverseg.evaluation.report import markdown_table

SPACING = (3.0, 0.8, 0.8)


def _liver(x0, shape=(6, 14, 16)):
    """A 4 x 10 x 10 liver box starting at column ``x0``: boxes shifted by s share 10 - s columns."""
    label = np.zeros(shape, np.uint8)
    label[1:5, 2:12, x0:x0 + 10] = 1
    return label


def test_phi_by_hand():
    # mean Dice with the raters 0.7 -> error 0.3; raters agree at 0.8 -> error 0.2
    assert phi([0.8, 0.6], [0.8]) == pytest.approx(1 - 0.1 * 0.3 / 0.2)
    assert phi([0.8, 0.8], [0.8]) == pytest.approx(0.9)  # as good as a human rater
    assert phi([0.0, 0.0], [0.99]) == 0.0  # clipped at zero
    assert phi([1.0, 1.0], [1.0]) == 1.0  # raters agree perfectly and so does the algorithm
    assert phi([0.9, 1.0], [1.0]) == 0.0  # raters agree perfectly, the algorithm does not
    assert math.isnan(phi([math.nan, 0.8], [0.8]))
    assert phi([0.7], [0.8], alpha=0.2) == pytest.approx(1 - 0.2 * 0.3 / 0.2)


def test_rater_names_fall_back_when_folder_names_repeat(tmp_path):
    assert rater_names([tmp_path / "anna", tmp_path / "ben"]) == ["anna", "ben"]
    assert rater_names([tmp_path / "a" / "labels", tmp_path / "b" / "labels"]) == ["rater1", "rater2"]


def test_case_against_two_raters():
    r1, r2, prediction = _liver(0), _liver(1), _liver(2)
    result = evaluate_case_raters([r1, r2], prediction, SPACING, ["r1", "r2"], profile="default")
    assert result["per_rater"]["r1"]["liver_dice"] == pytest.approx(0.8)
    assert result["per_rater"]["r2"]["liver_dice"] == pytest.approx(0.9)
    assert result["liver_dice"] == pytest.approx(0.85)  # mean over raters
    assert result["inter_rater"]["liver_dice"] == pytest.approx(0.9)
    assert result["liver_phi"] == pytest.approx(1 - 0.1 * 0.15 / 0.1)
    # Liver HD: two columns (1.6 mm) from rater 1, one column (0.8 mm) from rater 2.
    assert result["per_rater"]["r1"]["liver_hd"] == pytest.approx(1.6)
    assert result["liver_hd"] == pytest.approx(1.2)
    assert result["inter_rater"]["liver_hd"] == pytest.approx(0.8)
    # Nobody drew a tumour: lesion-style Dice 1 everywhere gives φ = 1; the atlas profile gives NaN.
    assert result["tumor_phi"] == 1.0
    atlas = evaluate_case_raters([r1, r2], prediction, SPACING, ["r1", "r2"], profile="atlas")
    assert math.isnan(atlas["tumor_phi"]) and math.isnan(atlas["tumor_dice"])


def test_three_raters_use_all_three_pairs():
    raters = [_liver(0), _liver(1), _liver(3)]
    result = evaluate_case_raters(raters, _liver(1), SPACING, ["a", "b", "c"])
    # algorithm vs raters: 0.9, 1.0, 0.8 -> 0.9; pairs: (0,1) 0.9, (0,3) 0.7, (1,3) 0.8 -> 0.8
    assert result["liver_dice"] == pytest.approx(0.9)
    assert result["inter_rater"]["liver_dice"] == pytest.approx(0.8)
    assert result["liver_phi"] == pytest.approx(1 - 0.1 * 0.1 / 0.2)


def _write(path, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING[::-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_folders_with_two_raters(tmp_path):
    for case, shift in (("c1", 0), ("c2", 1)):
        _write(tmp_path / "anna" / f"{case}.nii.gz", _liver(0 + shift))
        _write(tmp_path / "ben" / f"{case}.nii.gz", _liver(1 + shift))
        _write(tmp_path / "preds" / f"{case}.nii.gz", _liver(2))
    summary = evaluate_folders([tmp_path / "anna", tmp_path / "ben"], tmp_path / "preds", lesions=False,
                               output=tmp_path / "summary.json")
    # c1: Dice 0.8 (anna), 0.9 (ben); c2: 0.9 (anna), 1.0 (ben); raters agree at 0.9 in both cases.
    assert summary["raters"] == ["anna", "ben"]
    assert summary["per_rater"]["anna"]["metrics"]["liver_dice"]["mean"] == pytest.approx(0.85)
    assert summary["per_rater"]["ben"]["metrics"]["liver_dice"]["mean"] == pytest.approx(0.95)
    assert summary["metrics"]["liver_dice"]["mean"] == pytest.approx(0.9)
    assert summary["inter_rater"]["metrics"]["liver_dice"]["mean"] == pytest.approx(0.9)
    phis = [1 - 0.1 * 0.15 / 0.1, 1 - 0.1 * 0.05 / 0.1]
    assert summary["phi"]["liver"]["mean"] == pytest.approx(np.mean(phis))
    assert [row["liver_phi"] for row in summary["per_case"]] == pytest.approx(phis)
    table = markdown_table(summary)
    assert "vs anna" in table and "inter-rater" in table and "φ (Dice, α=0.1)" in table
    assert (tmp_path / "summary_per_case.csv").read_text().splitlines()[0].count("per_rater/anna/liver_dice") == 1


def test_lesion_metrics_per_rater_and_between_raters(tmp_path):
    pytest.importorskip("liverseg.evaluation.lesions")
    r1, r2, prediction = _liver(0), _liver(1), _liver(1)
    r1[2:4, 4:7, 3:6] = 2  # one lesion in rater 1 only
    prediction[2:4, 4:7, 3:6] = 2
    _write(tmp_path / "r1" / "c.nii.gz", r1)
    _write(tmp_path / "r2" / "c.nii.gz", r2)
    _write(tmp_path / "preds" / "c.nii.gz", prediction)
    summary = evaluate_folders([tmp_path / "r1", tmp_path / "r2"], tmp_path / "preds", lesions=True)
    assert summary["per_rater"]["r1"]["lesions"]["pooled"]["tp"] == 1
    assert summary["per_rater"]["r2"]["lesions"]["pooled"]["fp"] == 1
    assert summary["inter_rater"]["lesions"]["pooled"]["fn"] == 1  # rater 2 misses rater 1's lesion
