"""Lesion detection on constructed masks whose correspondences and counts are worked out by hand.

Most lesions are bars along x with a 2 x 2 voxel cross-section (z, y), so a lesion's size and every
overlap are 4 x (its length along x); Dice values below are written in those lengths.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

import liverseg.evaluation.lesions as lesions_module
from liverseg.errors import LiversegError
from liverseg.evaluation.lesion_aggregate import aggregate_lesion_metrics
from liverseg.evaluation.lesions import find_lesions, lesion_detection, match_lesions
from liverseg.io.images import read_image

SHAPE = (6, 12, 64)
SPACING = (3.0, 1.0, 1.0)


def bars(*spans, row=0, value=2):
    """A label map with one bar x in [start, stop) per span, all in the same 2 x 2 (z, y) cross-section."""
    label = np.zeros(SHAPE, np.uint8)
    label[:, :, :] = 1  # liver everywhere: only label 2 may count
    for start, stop in spans:
        label[1:3, 1 + 3 * row:3 + 3 * row, start:stop] = value
    return label


def corr(result):
    return [(tuple(c["reference"]), tuple(c["predicted"]), c["is_hit"]) for c in result["correspondences"]]


def test_find_lesions_numbers_tumour_components_only():
    label = bars((0, 5), (10, 12), (20, 30))
    components, count = find_lesions(label)
    assert count == 3
    assert components.dtype == np.uint32
    assert sorted(np.unique(components).tolist()) == [0, 1, 2, 3]
    assert np.array_equal(components > 0, label == 2)
    with pytest.raises(LiversegError, match="connectivity"):
        find_lesions(label, connectivity=4)


def test_one_to_one_hit():
    # reference x in [0, 10), prediction x in [2, 12): overlap 8, Dice = 16 / 20 = 0.8
    r = lesion_detection(bars((0, 10)), bars((2, 12)), SPACING)
    assert corr(r) == [((1,), (1,), True)]
    assert r["correspondences"][0]["dice"] == pytest.approx(0.8)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    assert (r["recall"], r["precision"], r["f1"]) == (1.0, 1.0, 1.0)
    assert r["dice_case"] == pytest.approx(0.8)
    assert r["dice_correspondence"] == pytest.approx(0.8)
    assert (r["merge_errors"], r["split_errors"]) == (0, 0)


def test_miss_and_false_positive():
    # reference lesions at [0, 10) and [20, 30); prediction hits the first and adds one at [40, 45)
    r = lesion_detection(bars((0, 10), (20, 30)), bars((0, 10), (40, 45)), SPACING)
    assert corr(r) == [((1,), (1,), True)]
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["recall"] == 0.5 and r["precision"] == 0.5
    assert r["f1"] == pytest.approx(2 / (2 + 1 + 1))
    status = {(les["source"], les["id"]): (les["status"], les["overlaps"]) for les in r["lesions"]}
    assert status == {("reference", 1): ("TP", True), ("reference", 2): ("FN", False),
                      ("predicted", 1): ("TP", True), ("predicted", 2): ("FP", False)}
    # Dice per case on the whole tumour label: 2 * 10 / (20 + 15)
    assert r["dice_case"] == pytest.approx(20 / 35)


def test_split_one_reference_two_predictions():
    # reference [0, 20); predictions [0, 9) and [11, 20): together Dice = 2 * 18 / (20 + 18)
    r = lesion_detection(bars((0, 20)), bars((0, 9), (11, 20)), SPACING)
    assert corr(r) == [((1,), (1, 2), True)]
    assert r["correspondences"][0]["dice"] == pytest.approx(36 / 38)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    assert (r["merge_errors"], r["split_errors"]) == (0, 1)


def test_merge_two_references_one_prediction():
    # references [0, 9) and [11, 20); prediction [0, 20): one hit counting two TP
    r = lesion_detection(bars((0, 9), (11, 20)), bars((0, 20)), SPACING)
    assert corr(r) == [((1, 2), (1,), True)]
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)
    assert (r["merge_errors"], r["split_errors"]) == (1, 0)
    assert r["precision"] == 1.0


def test_n_to_m_chain_forms_one_correspondence():
    # R1 [0, 10), R2 [12, 22); P1 [5, 17) touches both, P2 [19, 26) touches R2.
    # Overlaps: R1P1 = 5, R2P1 = 5, R2P2 = 3. Candidate Dice:
    #   {R1,R2}{P1,P2} = 2*13/(20+19) = 0.667   {R1,R2}{P1} = 20/32 = 0.625   {R2}{P1,P2} = 16/29 = 0.552
    #   {R1}{P1} = {R2}{P1} = 10/22 = 0.455     {R2}{P2} = 6/17 = 0.353
    # so the whole group is the best correspondence.
    r = lesion_detection(bars((0, 10), (12, 22)), bars((5, 17), (19, 26)), SPACING)
    assert corr(r) == [((1, 2), (1, 2), True)]
    assert r["correspondences"][0]["dice"] == pytest.approx(26 / 39)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 0)
    assert (r["merge_errors"], r["split_errors"]) == (1, 0)


def test_fig2c_prediction_keeps_only_the_large_reference():
    # A [0, 20), B [22, 30); P [0, 23) covers A and 1 voxel-length of B.
    # Dice(A, P) = 40/43 = 0.930 > Dice(A+B, P) = 42/51 = 0.824, so B is left out: a miss.
    r = lesion_detection(bars((0, 20), (22, 30)), bars((0, 23)), SPACING)
    assert corr(r) == [((1,), (1,), True)]
    assert r["correspondences"][0]["dice"] == pytest.approx(40 / 43)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)
    b = next(les for les in r["lesions"] if les["source"] == "reference" and les["id"] == 2)
    assert b["status"] == "FN" and b["overlaps"] is False and b["correspondence"] is None
    assert r["merge_errors"] == 0


def test_fig2c_as_drawn_prediction_keeps_only_the_small_reference():
    # Chlebus Fig. 2c: A [0, 20), B [22, 26); P [19, 26) covers B and touches A.
    # Dice(B, P) = 8/11 = 0.727 > Dice(A+B, P) = 10/31 = 0.323 > Dice(A, P) = 2/27.
    r = lesion_detection(bars((0, 20), (22, 26)), bars((19, 26)), SPACING)
    assert corr(r) == [((2,), (1,), True)]
    assert r["correspondences"][0]["dice"] == pytest.approx(8 / 11)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)


def test_low_dice_overlap_counts_as_miss_and_false_positive():
    # [0, 20) vs [18, 38): Dice = 4/40 = 0.1 <= 0.2
    r = lesion_detection(bars((0, 20)), bars((18, 38)), SPACING)
    assert corr(r) == [((1,), (1,), False)]
    assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 1)
    assert r["f1"] == 0.0 and math.isnan(r["dice_correspondence"])
    assert [les["overlaps"] for les in r["lesions"]] == [True, True]
    assert lesion_detection(bars((0, 20)), bars((18, 38)), SPACING, threshold=0.05)["tp"] == 1


def test_dice_exactly_at_threshold_is_not_a_hit():
    # [0, 10) vs [8, 18): Dice = 4/20 = 0.2 exactly; a hit needs Dice > θ
    r = lesion_detection(bars((0, 10)), bars((8, 18)), SPACING)
    assert r["correspondences"][0]["dice"] == 0.2
    assert r["tp"] == 0


def test_recist_recall_uses_in_plane_diameter_with_anisotropic_spacing(tmp_path):
    """Spacing (z, y, x) = (5, 0.5, 2) mm, written to NIfTI and read back through the image layer.

    L1: 1 row (y) x 6 columns (x) in one slice: 12 x 0.5 mm edge to edge (10 mm centre to centre),
        longest axial diameter >= 10 mm: measurable, though it has only 6 voxels.
    L2: 19 rows x 1 column: 9.5 x 2 mm (9.7 mm diagonal; 9 mm centre to centre): not measurable,
        though it is the longest lesion in voxels.
    L3: one pixel over 6 slices: 30 mm along z, which RECIST does not measure: not measurable.
    The prediction finds L2 and L3 only: recall 2/3, recall >= 10 mm 0/1.
    """
    ref = np.zeros((8, 30, 20), np.uint8)
    ref[1, 2, 2:8] = 2  # L1
    ref[1, 5:24, 15] = 2  # L2
    ref[1:7, 27, 2] = 2  # L3
    pred = ref.copy()
    pred[ref == 2] = 0
    pred[1, 5:24, 15] = 2
    pred[1:7, 27, 2] = 2
    for name, array in (("ref", ref), ("pred", pred)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((2.0, 0.5, 5.0))  # SimpleITK order (x, y, z)
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    ref_read, geometry = read_image(tmp_path / "ref.nii.gz")
    pred_read, _ = read_image(tmp_path / "pred.nii.gz")
    r = lesion_detection(ref_read, pred_read, geometry.spacing)
    assert (r["tp"], r["fn"], r["n_reference_10mm"], r["tp_10mm"]) == (2, 1, 1, 0)
    assert r["recall"] == pytest.approx(2 / 3) and r["recall_10mm"] == 0.0
    measurable = [les for les in r["lesions"] if les["source"] == "reference" and les["longest_axial_diameter_mm"] >= 10]
    assert [les["num_voxels"] for les in measurable] == [6]
    volumes = sorted(les["volume_ml"] for les in r["lesions"] if les["source"] == "reference")
    assert volumes == pytest.approx(sorted(n * 5 * 0.5 * 2 / 1000 for n in (6, 19, 6)))
    # The same prediction swapped: only L1 found, recall >= 10 mm is 1/1.
    only_l1 = np.zeros_like(ref_read)
    only_l1[1, 2, 2:8] = 2
    r2 = lesion_detection(ref_read, only_l1, geometry.spacing)
    assert (r2["tp"], r2["tp_10mm"], r2["recall_10mm"]) == (1, 1, 1.0)


def test_connectivity_6_splits_diagonally_touching_lesions():
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[0:2, 0:2, 0:2] = 2
    ref[2:4, 2:4, 2:4] = 2  # touches the first cube at one corner only
    pred = np.zeros_like(ref)
    pred[0:2, 0:2, 0:2] = 2
    assert find_lesions(ref, connectivity=26)[1] == 1
    assert find_lesions(ref, connectivity=6)[1] == 2
    r26 = lesion_detection(ref, pred, (1, 1, 1), connectivity=26)
    # one lesion of 16 voxels, prediction covers 8: Dice = 16/24
    assert (r26["tp"], r26["fn"], r26["recall"]) == (1, 0, 1.0)
    assert r26["correspondences"][0]["dice"] == pytest.approx(16 / 24)
    r6 = lesion_detection(ref, pred, (1, 1, 1), connectivity=6)
    assert (r6["tp"], r6["fn"], r6["recall"]) == (1, 1, 0.5)
    assert r6["connectivity"] == 6


def test_empty_cases():
    empty = bars()
    both = lesion_detection(empty, empty, SPACING)
    assert (both["tp"], both["fp"], both["fn"]) == (0, 0, 0)
    assert both["dice_case"] == 1.0
    for key in ("recall", "precision", "f1", "recall_10mm", "dice_correspondence"):
        assert math.isnan(both[key]), key
    fp_only = lesion_detection(empty, bars((0, 5)), SPACING)
    assert (fp_only["fp"], fp_only["dice_case"], fp_only["precision"], fp_only["f1"]) == (1, 0.0, 0.0, 0.0)
    assert math.isnan(fp_only["recall"])
    fn_only = lesion_detection(bars((0, 5)), empty, SPACING)
    assert (fn_only["fn"], fn_only["recall"], fn_only["f1"], fn_only["dice_case"]) == (1, 0.0, 0.0, 0.0)
    assert math.isnan(fn_only["precision"])


def test_bad_input_is_a_user_error():
    with pytest.raises(LiversegError, match="shape"):
        lesion_detection(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), SPACING)
    with pytest.raises(LiversegError, match="spacing"):
        lesion_detection(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), (1.0, 0.0, 1.0))


@pytest.mark.parametrize("name,ref_spans,pred_spans", [
    ("split", [(0, 20)], [(0, 9), (11, 20)]),
    ("merge", [(0, 9), (11, 20)], [(0, 20)]),
    ("chain", [(0, 10), (12, 22)], [(5, 17), (19, 26)]),
    ("fig2c", [(0, 20), (22, 30)], [(0, 23)]),
    ("fig2c_drawn", [(0, 20), (22, 26)], [(19, 26)]),
])
def test_greedy_matching_agrees_with_exhaustive_on_the_small_cases(monkeypatch, name, ref_spans, pred_spans):
    ref_c, _ = find_lesions(bars(*ref_spans))
    pred_c, _ = find_lesions(bars(*pred_spans))
    exhaustive = match_lesions(ref_c, pred_c)
    monkeypatch.setattr(lesions_module, "MAX_EXHAUSTIVE_SUBSETS", 0)
    assert match_lesions(ref_c, pred_c) == exhaustive


def test_large_group_is_matched_greedily():
    # One reference bar of length 40 and 20 one-voxel-long predicted pieces on every other x:
    # 2^20 - 1 subsets exceed the exhaustive limit. Dice of k pieces = 2k / (40 + k) grows with k,
    # so all 20 pieces join: Dice 40/60, one TP, split error 19.
    r = lesion_detection(bars((0, 40)), bars(*[(x, x + 1) for x in range(0, 40, 2)]), SPACING)
    assert r["n_predicted"] == 20
    assert corr(r) == [((1,), tuple(range(1, 21)), True)]
    assert r["correspondences"][0]["dice"] == pytest.approx(40 / 60)
    assert (r["tp"], r["fp"], r["split_errors"]) == (1, 0, 19)


def test_random_blobs_are_partitioned_consistently():
    """Each lesion is in at most one correspondence, counts add up, and each correspondence's Dice
    equals the Dice of the voxel masks of its members, computed directly."""
    rng = np.random.default_rng(7)
    from scipy.ndimage import binary_dilation
    ref = 2 * binary_dilation(rng.random((12, 40, 40)) > 0.985, iterations=2).astype(np.uint8)
    pred = 2 * binary_dilation(rng.random((12, 40, 40)) > 0.985, iterations=2).astype(np.uint8)
    r = lesion_detection(ref, pred, (2.0, 1.0, 1.0))
    ref_c, _ = find_lesions(ref)
    pred_c, _ = find_lesions(pred)
    seen_r = [i for c in r["correspondences"] for i in c["reference"]]
    seen_p = [i for c in r["correspondences"] for i in c["predicted"]]
    assert len(seen_r) == len(set(seen_r)) and len(seen_p) == len(set(seen_p))
    assert r["tp"] + r["fn"] == r["n_reference"] > 3
    assert r["n_predicted"] - r["fp"] == sum(len(c["predicted"]) for c in r["correspondences"] if c["is_hit"])
    for c in r["correspondences"]:
        a, b = np.isin(ref_c, c["reference"]), np.isin(pred_c, c["predicted"])
        assert c["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
        assert (a & b).any()


def test_aggregate_pools_counts_over_cases():
    cases = [
        lesion_detection(bars((0, 10), (20, 30)), bars((0, 10), (40, 45)), SPACING),  # TP1 FP1 FN1
        lesion_detection(bars((0, 20)), bars((0, 9), (11, 20)), SPACING),  # TP1, split, Dice 36/38
        lesion_detection(bars(), bars(), SPACING),  # nothing
        lesion_detection(bars(), bars((0, 5), (10, 15)), SPACING),  # FP2
    ]
    agg = aggregate_lesion_metrics(cases)
    pooled = agg["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"], pooled["n_reference"]) == (2, 3, 1, 3)
    assert pooled["recall"] == pytest.approx(2 / 3)
    assert pooled["precision"] == pytest.approx(2 / 5)
    assert pooled["f1"] == pytest.approx(4 / (4 + 3 + 1))
    assert pooled["fp_per_case"] == pytest.approx(3 / 4)
    assert pooled["fp_per_case_median"] == pytest.approx(0.5)
    assert pooled["split_errors"] == 1
    assert pooled["dice_correspondence"]["mean"] == pytest.approx((1.0 + 36 / 38) / 2)
    assert pooled["dice_correspondence"]["n"] == 2
    # per-case means: recall over cases 1-2 (0.5, 1), cases 3-4 have no reference lesions
    assert agg["per_case"]["recall"]["mean"] == pytest.approx(0.75)
    assert agg["per_case"]["recall"]["n_excluded"] == 2
    # dice per case: 20/35, 36/38, 1 (both empty), 0
    assert agg["per_case"]["dice_case"]["mean"] == pytest.approx((20 / 35 + 36 / 38 + 1 + 0) / 4)
    with pytest.raises(LiversegError):
        aggregate_lesion_metrics([])
