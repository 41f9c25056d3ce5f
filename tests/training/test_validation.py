"""Online pseudo-Dice counts and how model classes map back to labels (whole-case validation: test_trainer.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from liverseg.planning.plans import ModelPlan, NetworkTopology, SamplingSpec, TrainingSchedule
from liverseg.training.validation import class_names, dice_from_counts, output_labels, overlap_counts, single_output


def _logits_voting(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Logits whose argmax is ``labels`` ``(B, *spatial)``."""
    return torch.nn.functional.one_hot(torch.from_numpy(labels), num_classes).movedim(-1, 1).float() * 5


def test_counts_match_a_count_by_hand():
    prediction = np.array([[[0, 1, 1, 2], [2, 2, 0, 1]]])  # (1, 2, 4)
    reference = np.array([[[0, 1, 0, 2], [2, 1, 1, 1]]])
    counts = overlap_counts(_logits_voting(prediction, 3), torch.from_numpy(reference)[:, None], None, 3)
    # class 1: predicted at 3 voxels, 2 of them right; reference has 4 → TP 2, FP 1, FN 2
    # class 2: predicted at 3 voxels, 2 right (the two reference voxels) → TP 2, FP 1, FN 0
    assert counts.tolist() == [[2, 2], [1, 1], [2, 0]]
    assert dice_from_counts(counts) == pytest.approx([4 / 7, 4 / 5])


def test_counts_only_inside_the_mask():
    prediction = np.array([[1, 1, 0, 1]])
    reference = np.array([[1, 0, 1, 0]])
    mask = torch.tensor([[True, True, True, False]])[:, None]
    counts = overlap_counts(_logits_voting(prediction, 2), torch.from_numpy(reference)[:, None], mask, 2)
    assert counts.tolist() == [[1], [1], [1]]  # the last voxel (a false positive) is outside the mask


def test_a_class_never_seen_has_no_dice():
    counts = torch.tensor([[3, 0], [1, 0], [0, 0]])
    assert dice_from_counts(counts) == [pytest.approx(6 / 7), None]


def _model(learns: dict[int, int]) -> ModelPlan:
    topology = NetworkTopology(network="unet", patch_size=(8, 16, 16), kernel_sizes=((3, 3, 3), (3, 3, 3)),
                               strides=((1, 1, 1), (2, 2, 2)), features_per_stage=(4, 8))
    schedule = TrainingSchedule(1, 1, 1, "sgd", 0.01, 0.99, 0.0, "poly", 0.9, "dice_ce")
    return ModelPlan("m", learns, "fullres", "liver", topology, 2, SamplingSpec(), schedule)


@pytest.mark.parametrize("learns, table, names", [
    ({1: 1, 2: 2}, [0, 1, 2], ["liver", "tumor"]),       # multiclass: classes are the labels
    ({1: 1, 2: 1}, [0, 1], ["liver+tumor"]),             # liver model: class 1 is the whole liver, written as 1
    ({2: 1}, [0, 2], ["tumor"]),                         # tumour model: class 1 is written as tumour
])
def test_model_classes_become_the_labels_they_stand_for(learns, table, names):
    model = _model(learns)
    assert output_labels(model).tolist() == table
    assert class_names(model, {"background": 0, "liver": 1, "tumor": 2}) == names


def test_deep_supervision_is_off_while_predicting_whole_cases_and_restored_after():
    from liverseg.networks import build_network

    network = build_network("unet", 1, 2, **_model({1: 1}).topology.network_kwargs())
    assert network.deep_supervision
    with single_output(network):
        assert isinstance(network(torch.zeros(1, 1, 8, 16, 16)), torch.Tensor)
    assert network.deep_supervision
    plain = nn.Conv3d(1, 2, 1)  # a network without deep supervision passes through untouched
    with single_output(plain) as same:
        assert same is plain


def test_a_masked_model_is_scored_only_inside_its_loss_region(tmp_path):
    """The tumour model never learned outside the dilated liver: false positives there do not count."""
    import dataclasses

    import SimpleITK as sitk

    from liverseg.training.validation import _scores

    reference = np.zeros((4, 20, 20), np.uint8)
    reference[1:3, 2:8, 2:8] = 1          # liver
    reference[1:3, 4:6, 4:6] = 2          # a tumour of 8 voxels inside it
    label_file = tmp_path / "case.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(reference), str(label_file))
    classes = np.zeros_like(reference)
    classes[1:3, 4:6, 4:6] = 1            # the tumour found (8 voxels)
    classes[1:3, 4:6, 6:7] = 1            # 4 false positive voxels in the liver
    classes[0:4, 15:20, 15:20] = 1        # 100 false positive voxels far from the liver
    tumour = dataclasses.replace(_model({2: 1}), loss_mask_labels=(1, 2), loss_mask_dilation_mm=2.0)
    inside = _scores(classes, label_file, tumour)
    assert inside["dice"]["1"] == pytest.approx(2 * 8 / (8 + 12), abs=1e-5)  # summaries round to 5 digits
    unmasked = _scores(classes, label_file, _model({2: 1}))
    assert unmasked["dice"]["1"] == pytest.approx(2 * 8 / (8 + 112), abs=1e-5)


def test_a_cascade_second_stage_is_scored_inside_the_box_it_is_handed(tmp_path):
    """Stage 2 only ever sees the liver box plus the margin: false positives beyond it do not count."""
    import dataclasses

    import SimpleITK as sitk

    from liverseg.planning.plans import RegionOfInterest
    from liverseg.training.validation import _scores

    reference = np.zeros((4, 30, 30), np.uint8)
    reference[1:3, 5:10, 5:10] = 1                       # liver: box y, x 5..9
    label_file = tmp_path / "case.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(reference), str(label_file))
    classes = np.zeros_like(reference)
    classes[1:3, 5:10, 5:10] = 1                         # the liver found (50 voxels)
    classes[1:3, 11:12, 5:10] = 1                        # 10 false positives within the 2 mm margin
    classes[:, 20:30, 20:30] = 1                         # 400 false positives far outside the box
    fine = dataclasses.replace(_model({1: 1, 2: 1}), roi=RegionOfInterest((1, 2), 2.0, 0.0, "coarse"))
    assert _scores(classes, label_file, fine)["dice"]["1"] == pytest.approx(2 * 50 / (50 + 60), abs=1e-5)
    assert _scores(classes, label_file, _model({1: 1, 2: 1}))["dice"]["1"] == pytest.approx(2 * 50 / (50 + 460), abs=1e-5)
