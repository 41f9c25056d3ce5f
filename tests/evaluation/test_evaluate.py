"""liverseg_evaluate end to end on tiny NIfTI folders with ATLAS naming, values derived by hand."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from liverseg.cli.evaluate import main
from liverseg.errors import LiversegError
from liverseg.evaluation.evaluate import evaluate_folders
from liverseg.evaluation.report import markdown_table

SPACING_XYZ = (0.8, 0.8, 3.0)
SHAPE = (8, 24, 24)


def _write(path, array, spacing=SPACING_XYZ, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _liver(x0=2):
    label = np.zeros(SHAPE, np.uint8)
    label[1:7, 2:22, x0:x0 + 20] = 1  # 6 x 20 x 20 = 2400 voxels
    return label


def _with_tumour(label, width=5):
    label = label.copy()
    label[2:5, 5:10, 5:5 + width] = 2  # 3 x 5 x width voxels, inside the liver
    return label


@pytest.fixture
def folders(tmp_path):
    """Three cases: perfect; liver shifted one column and tumour one column narrower; no tumour at all."""
    ref, pred = tmp_path / "labels", tmp_path / "preds"
    _write(ref / "lb0.nii.gz", _with_tumour(_liver()))
    _write(pred / "im0.nii.gz", _with_tumour(_liver()))
    _write(ref / "lb1.nii.gz", _with_tumour(_liver()))
    _write(pred / "im1.nii.gz", _with_tumour(_liver(x0=3), width=4))
    _write(ref / "lb2.nii.gz", _liver())
    _write(pred / "im2.nii.gz", _liver())
    return ref, pred


LIVER_DICE = [1.0, 2 * (6 * 20 * 19) / 4800, 1.0]
TUMOUR_DICE_1 = 2 * 60 / (75 + 60)
BURDEN_ERRORS = [0.0, 75 / 2400 - 60 / 2400, 0.0]


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"invalid JSON constant {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_atlas_profile_values_and_excluded_counts(folders, tmp_path):
    ref, pred = folders
    summary = evaluate_folders(ref, pred, output=tmp_path / "out" / "summary.json", profile="atlas", lesions=False)
    metrics = summary["metrics"]
    assert summary["num_cases"] == 3
    assert metrics["liver_dice"]["mean"] == pytest.approx(np.mean(LIVER_DICE))
    assert metrics["liver_dice"]["std"] == pytest.approx(np.std(LIVER_DICE, ddof=1))
    assert metrics["liver_dice"]["median"] == pytest.approx(1.0)
    # Case 2 has no tumour in reference and prediction: excluded under the atlas profile.
    assert metrics["tumor_dice"]["mean"] == pytest.approx((1.0 + TUMOUR_DICE_1) / 2)
    assert metrics["tumor_dice"]["excluded"] == 1 and metrics["tumor_dice"]["n"] == 2
    assert metrics["tumor_hd"]["excluded"] == 1
    # Liver HD: the shifted case's worst boundary voxel is one column (0.8 mm) away.
    assert metrics["liver_hd"]["mean"] == pytest.approx(0.8 / 3)
    assert summary["tumor_burden_rmse"] == pytest.approx(math.sqrt(np.mean(np.square(BURDEN_ERRORS))))
    saved = _strict_json(tmp_path / "out" / "summary.json")
    assert saved["per_case"][2]["tumor_dice"] is None
    assert saved["profile"]["name"] == "atlas"
    with open(tmp_path / "out" / "summary_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["im0", "im1", "im2"]
    assert float(rows[1]["liver_dice"]) == pytest.approx(LIVER_DICE[1])
    assert rows[2]["tumor_dice"] == "nan"


def test_default_profile_counts_two_empty_tumours_as_agreement(folders):
    ref, pred = folders
    metrics = evaluate_folders(ref, pred, profile="default", lesions=False)["metrics"]
    assert metrics["tumor_dice"]["mean"] == pytest.approx((1.0 + TUMOUR_DICE_1 + 1.0) / 3)
    assert metrics["tumor_dice"]["excluded"] == 0
    assert metrics["tumor_hd"]["excluded"] == 1  # distances stay undefined


def test_markdown_table_has_the_layout_of_atlas_table_2(folders):
    ref, pred = folders
    table = markdown_table(evaluate_folders(ref, pred, profile="atlas", lesions=False))
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| Liver") or line.startswith("| Tumor")]
    labels = [(region.strip(), metric.strip().split(" ")[0]) for region, metric in rows]
    assert labels == [("Liver", m) for m in ("ASD", "Dice", "HD", "HD95", "SD")] + \
                     [("Tumor", m) for m in ("ASD", "Dice", "HD", "HD95", "SD", "RMSE")]
    dice_row = next(line for line in table.splitlines() if line.startswith("| Tumor | Dice"))
    assert "(1 excluded)" in dice_row
    assert f"{100 * (1 + TUMOUR_DICE_1) / 2:.1f}" in dice_row  # challenge units column


def test_cli_end_to_end_in_parallel(folders, tmp_path, capsys):
    ref, pred = folders
    single = evaluate_folders(ref, pred, profile="atlas", lesions=False)
    code = main(["-r", str(ref), "-p", str(pred), "-o", str(tmp_path / "s.json"), "--profile", "atlas", "-np", "2", "--no-lesions"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| Liver | Dice ↑ |" in out and "ATLAS units" in out
    saved = _strict_json(tmp_path / "s.json")
    assert saved["per_case"] == single["per_case"]
    assert (tmp_path / "s_per_case.csv").is_file()


def test_default_output_goes_into_the_prediction_folder(folders, capsys):
    ref, pred = folders
    assert main(["-r", str(ref), "-p", str(pred), "-np", "1", "--no-lesions", "--hd95", "pooled"]) == 0
    saved = _strict_json(pred / "summary.json")
    assert saved["profile"]["hd95"] == "pooled" and saved["profile"]["name"].startswith("default+")


def test_cli_reports_a_grid_mismatch_naming_the_case(folders, capsys):
    ref, pred = folders
    _write(pred / "im1.nii.gz", _liver(), spacing=(0.8, 0.8, 2.5))
    code = main(["-r", str(ref), "-p", str(pred), "-np", "1", "--no-lesions"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: case im1" in err and "spacing" in err and "Traceback" not in err


def test_bad_label_values_name_the_file(folders):
    ref, pred = folders
    _write(pred / "im2.nii.gz", np.where(_liver() > 0, 4, 0))
    with pytest.raises(LiversegError, match="im2.nii.gz.*values \\[4\\]"):
        evaluate_folders(ref, pred, lesions=False)


def test_prediction_stored_in_another_orientation_is_the_same_case(folders):
    """A flipped x axis in array and header is the same physical image: it reads identically."""
    ref, pred = folders
    label = _with_tumour(_liver(x0=3), width=4)
    _write(pred / "im1.nii.gz", label[:, :, ::-1], direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1),
           origin=((SHAPE[2] - 1) * SPACING_XYZ[0], 0.0, 0.0))
    summary = evaluate_folders(ref, pred, profile="atlas", lesions=False)
    assert summary["per_case"][1]["liver_dice"] == pytest.approx(LIVER_DICE[1])


def test_lesion_metrics_are_added_per_case_and_pooled(folders):
    pytest.importorskip("liverseg.evaluation.lesions")
    ref, pred = folders
    summary = evaluate_folders(ref, pred, profile="atlas", lesions=True)
    assert [row["lesions"]["tp"] for row in summary["per_case"]] == [1, 1, 0]
    assert summary["lesions"]["pooled"]["tp"] == 2
    assert "Lesions" in markdown_table(summary)
    assert "lesions" not in evaluate_folders(ref, pred, lesions=False)


@pytest.fixture
def lesion_case(tmp_path):
    """One case, two reference lesions. A (2 x 2 x 4 = 16 voxels) is predicted exactly, plus one voxel B
    touching A's corner voxel (3, 4, 7) only diagonally: one lesion of 17 voxels when 26-connected, A
    and a separate one-voxel FP when 6-connected. R (2 x 2 x 10 = 40) is predicted shifted by 6
    columns: overlap 2 x 2 x 4 = 16, Dice 32 / 80 = 0.4."""
    ref, pred = tmp_path / "labels", tmp_path / "preds"
    reference, prediction = _liver(), _liver()
    reference[2:4, 3:5, 4:8] = 2
    prediction[2:4, 3:5, 4:8] = 2
    prediction[4, 5, 8] = 2
    reference[2:4, 15:17, 6:16] = 2
    prediction[2:4, 15:17, 12:22] = 2
    _write(ref / "c.nii.gz", reference)
    _write(pred / "c.nii.gz", prediction)
    return ref, pred


@pytest.mark.parametrize("options, expected", [
    ([], dict(n_predicted=2, tp=2, fp=0, fn=0)),
    (["--lesion-connectivity", "6"], dict(n_predicted=3, tp=2, fp=1, fn=0)),        # B is its own lesion
    (["--lesion-threshold", "0.5"], dict(n_predicted=2, tp=1, fp=1, fn=1)),         # Dice 0.4 is no hit
    (["--lesion-threshold", "0.39", "--lesion-connectivity", "6"], dict(n_predicted=3, tp=2, fp=1, fn=0)),
])
def test_lesion_threshold_and_connectivity_reach_the_lesion_metrics(lesion_case, tmp_path, options, expected, capsys):
    ref, pred = lesion_case
    out = tmp_path / "summary.json"
    assert main(["-r", str(ref), "-p", str(pred), "-o", str(out), "-np", "1", *options]) == 0
    saved = _strict_json(out)
    case = saved["per_case"][0]["lesions"]
    assert {k: case[k] for k in expected} == expected
    given = dict(zip(options[::2], options[1::2]))
    threshold = float(given.get("--lesion-threshold", 0.2))
    connectivity = int(given.get("--lesion-connectivity", 26))
    assert (saved["lesion_threshold"], saved["lesion_connectivity"]) == (threshold, connectivity)
    assert (case["threshold"], case["connectivity"]) == (threshold, connectivity)
    assert f"{connectivity}-connected, hit when Dice > {threshold:g}" in capsys.readouterr().out


def test_bad_lesion_settings_are_refused(lesion_case, capsys):
    ref, pred = lesion_case
    with pytest.raises(LiversegError, match="threshold"):
        evaluate_folders(ref, pred, lesion_threshold=1.5)
    with pytest.raises(LiversegError, match="connectivity"):
        evaluate_folders(ref, pred, lesion_connectivity=8)
    with pytest.raises(SystemExit):
        main(["-r", str(ref), "-p", str(pred), "--lesion-connectivity", "8"])
    assert "invalid choice" in capsys.readouterr().err


def test_old_flag_name_still_works(folders, tmp_path):
    ref, pred = folders
    assert main(["-r", str(ref), "-p", str(pred), "-o", str(tmp_path / "s.json"), "--num-processes", "1",
                 "--no-lesions"]) == 0
    assert _strict_json(tmp_path / "s.json")["num_cases"] == 3
