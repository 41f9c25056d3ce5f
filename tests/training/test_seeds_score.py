"""The seeds' score: Jaccard counts on hand-made labels, and whole-case Jaccard of constant networks on a real phantom."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from liverseg.errors import LiversegError
from liverseg.planning.plans import RegionOfInterest, load_plan
from liverseg.preprocessing.case import load_preprocessed_case
from liverseg.training.seeds_score import confusion_counts, jaccard_from_counts, mean_score, validation_jaccard
from liverseg.training.validation import scored_region
from liverseg.training.trainer import fold_cases, preprocessed_folder

DATASET = "Dataset902_TrainerPhantom"  # planned once per session by the `planned` fixture (conftest.py)


class Constant(nn.Module):
    """A 'network' that predicts class ``winner`` everywhere (with a parameter, as the sliding window expects)."""

    def __init__(self, num_classes: int, winner: int) -> None:
        super().__init__()
        self.num_classes, self.winner = num_classes, winner
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros((x.shape[0], self.num_classes, *x.shape[2:]), dtype=x.dtype, device=x.device)
        logits[:, self.winner] = 5.0
        return logits + self.offset


def test_counts_and_jaccard_on_a_hand_made_example():
    reference = np.array([0, 1, 1, 1, 2, 2, 0, 0])
    prediction = np.array([1, 1, 1, 0, 2, 1, 0, 2])
    # class 1: TP at 1, 2; FP at 0, 5; FN at 3.  class 2: TP at 4; FP at 7; FN at 5.
    counts = confusion_counts(reference, prediction, 3)
    assert counts.tolist() == [[2, 1], [2, 1], [1, 1]]
    jaccard = jaccard_from_counts(counts)
    assert jaccard == pytest.approx([2 / 5, 1 / 3])
    dice = 2 * 2 / (2 * 2 + 2 + 1)  # J = D / (2 - D)
    assert jaccard[0] == pytest.approx(dice / (2 - dice))
    assert jaccard_from_counts(confusion_counts(np.zeros(4, int), np.zeros(4, int), 3)) == [None, None]
    assert mean_score([0.2, None, 0.4]) == pytest.approx(0.3) and mean_score([None]) is None


@pytest.fixture
def phantom(planned, monkeypatch):
    for name, path in planned.items():
        monkeypatch.setenv(f"LIVERSEG_{name.upper()}", str(path))
    return load_plan(planned["preprocessed"] / DATASET / "plans.json")


def _cases(plan, model):
    folder = preprocessed_folder(plan, model)
    cases = fold_cases(plan, folder, 0)[1]
    loaded = [load_preprocessed_case(folder, c) for c in cases]
    return folder, cases, loaded


def _spacing(properties) -> list[float]:
    return [float(s) for s in properties.get("spacing_after_resampling", properties["spacing_target"])]


def test_a_network_predicting_liver_everywhere_scores_the_liver_share_of_the_volume(phantom):
    plan = phantom
    model = plan.pipeline("multiclass").model("multiclass")
    folder, cases, loaded = _cases(plan, model)
    result = validation_jaccard(Constant(3, 1), model, folder, cases, torch.device("cpu"), use_bf16=False)
    liver = sum(int(np.sum(np.asarray(seg) == 1)) for _, seg, _ in loaded)
    tumour = sum(int(np.sum(np.asarray(seg) == 2)) for _, seg, _ in loaded)
    voxels = sum(np.asarray(seg).size for _, seg, _ in loaded)
    assert liver > 0 and tumour > 0
    # every voxel predicted liver: TP = liver voxels, FP = all others; tumour never predicted: TP 0
    assert result["jaccard"] == pytest.approx([liver / voxels, 0.0])
    assert result["score"] == pytest.approx(liver / voxels / 2)
    assert result["counts"] == [[liver, 0], [voxels - liver, 0], [0, tumour]]


def test_the_tumour_model_is_scored_inside_the_dilated_liver_only(phantom):
    plan = phantom
    model = plan.pipeline("dual_binary").model("tumour")
    folder, cases, loaded = _cases(plan, model)
    result = validation_jaccard(Constant(2, 1), model, folder, cases, torch.device("cpu"), use_bf16=False)
    inside = tumour = 0
    for _, seg, properties in loaded:
        seg = np.asarray(seg)
        distance = ndimage.distance_transform_edt(~np.isin(seg, model.loss_mask_labels), sampling=_spacing(properties))
        region = distance <= model.loss_mask_dilation_mm
        inside += int(region.sum())
        tumour += int(np.sum(region & (seg == 2)))
    assert 0 < tumour < inside < np.asarray(loaded[0][1]).size * len(loaded)
    assert result["jaccard"] == pytest.approx([tumour / inside])


def test_a_cascade_second_stage_is_scored_on_the_box_of_its_labels_with_the_margin():
    seg = np.zeros((10, 40, 40), np.uint8)
    seg[3:6, 10:20, 12:30] = 1
    seg[4, 15, 15] = 2
    spacing = (4.0, 1.0, 2.0)
    roi = RegionOfInterest(labels=(1, 2), margin_mm=8.0, jitter_mm=10.0, from_model="coarse")

    class Model:  # the three fields of a model plan that scored_region reads
        loss_mask_dilation_mm = None
        loss_mask_labels = ()

    model = Model()
    model.roi = roi
    crop, mask = scored_region(model, seg, spacing)
    # 8 mm is 2 slices in z, 8 rows in y, 4 columns in x; clipped to the volume
    assert crop == (slice(1, 8), slice(2, 28), slice(8, 34)) and mask is None
    model.roi = dataclasses.replace(roi, margin_mm=40.0)
    assert scored_region(model, seg, spacing)[0] == (slice(0, 10), slice(0, 40), slice(0, 40))
    model.roi = None
    assert scored_region(model, seg, spacing)[0] == (slice(0, 10), slice(0, 40), slice(0, 40))


def test_no_cases_is_a_user_error(phantom, tmp_path):
    model = phantom.pipeline("multiclass").model("multiclass")
    with pytest.raises(LiversegError, match="no validation cases to compare the seeds on"):
        validation_jaccard(Constant(3, 1), model, tmp_path, [], torch.device("cpu"))
