"""The selection criterion on constructed label maps whose Dice and lesion counts are counted by hand."""
from __future__ import annotations

import numpy as np
import pytest

from liverseg.selection.criterion import Score, better, case_scores, compare, rank, summarise

SPACING = (1.0, 1.0, 1.0)


def _reference() -> np.ndarray:
    label = np.zeros((6, 10, 10), dtype=np.uint8)
    label[1:5, 2:8, 2:8] = 1  # whole liver: 4 * 6 * 6 = 144 voxels
    label[2:4, 4:6, 4:6] = 2  # one lesion of 8 voxels
    return label


def _shifted() -> np.ndarray:
    label = np.zeros((6, 10, 10), dtype=np.uint8)
    label[1:5, 2:8, 3:9] = 1  # 144 voxels, 4 * 6 * 5 = 120 of them in the reference's liver
    label[2:4, 4:6, 5:7] = 2  # 8 voxels, 2 * 2 * 1 = 4 of them in the reference's lesion
    return label


def test_case_scores_count_the_whole_liver_and_the_tumour():
    scores = case_scores(_reference(), _shifted(), SPACING)
    assert scores["liver_dice"] == pytest.approx(2 * 120 / (144 + 144))
    assert scores["tumour_dice"] == pytest.approx(2 * 4 / (8 + 8))
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 0, 0)  # correspondence Dice 0.5 > 0.2: a hit


def test_no_tumour_anywhere_counts_as_one_and_a_missed_tumour_as_zero():
    no_tumour = np.where(_reference() == 2, 1, _reference()).astype(np.uint8)
    both_empty = case_scores(no_tumour, no_tumour, SPACING)
    assert both_empty["tumour_dice"] == 1.0 and both_empty["liver_dice"] == 1.0
    assert (both_empty["tp"], both_empty["fp"], both_empty["fn"]) == (0, 0, 0)
    missed = case_scores(_reference(), no_tumour, SPACING)
    assert missed["tumour_dice"] == 0.0 and missed["liver_dice"] == 1.0 and missed["fn"] == 1
    nothing = np.zeros_like(no_tumour)
    assert case_scores(nothing, nothing, SPACING)["liver_dice"] == 1.0


def test_summary_averages_over_cases_and_pools_lesion_f1():
    no_tumour = np.where(_reference() == 2, 1, _reference()).astype(np.uint8)
    rows = [case_scores(_reference(), _shifted(), SPACING), case_scores(no_tumour, no_tumour, SPACING),
            case_scores(_reference(), no_tumour, SPACING)]
    score = summarise(rows)
    assert score.n_cases == 3
    assert score.liver_dice == pytest.approx((240 / 288 + 1 + 1) / 3)
    assert score.tumour_dice == pytest.approx((0.5 + 1 + 0) / 3)
    assert score.criterion == pytest.approx((score.liver_dice + score.tumour_dice) / 2)
    assert score.lesion_f1 == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))  # TP 1, FP 0, FN 1 over the cases
    assert summarise([rows[1]]).lesion_f1 == 1.0  # no lesion in any reference or prediction


def test_comparison_by_criterion_then_lesion_f1_and_ties_keep_their_order():
    high = Score(0.9, 0.7, 0.1, 4)
    low_f1, high_f1 = Score(0.8, 0.6, 0.2, 4), Score(0.6, 0.8, 0.5, 4)  # the same criterion, 0.7
    assert better(high, high_f1) and compare(low_f1, high) == -1
    assert better(high_f1, low_f1) and not better(low_f1, high_f1)
    same = Score(0.6, 0.8, 0.5, 4)
    assert compare(same, high_f1) == 0 and not better(same, high_f1)
    assert rank([low_f1, same, high, high_f1]) == [2, 1, 3, 0]
