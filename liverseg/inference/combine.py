"""How a pipeline's models become one label map: the combine rules a plan names.

A rule is ``rule(pipeline, case) -> Combined``: ``pipeline`` is the plan's
:class:`~liverseg.planning.plans.PipelineSpec`, ``case`` a :class:`CaseModels` through which the
rule asks for each model's fold-averaged softmax probabilities on the model's preprocessed grid
(or on a crop of it) and maps probabilities back onto the original image grid. Mapping back
comes *before* any argmax or threshold, as in nnU-Net, so labels keep the sub-voxel information
of the probabilities. Every array of :class:`Combined` is on the canonical original grid.

Built-in rules:

- ``argmax``: one multiclass model (several are averaged): the label with the highest probability;
  each model class counts for the original label it stands for
  (:func:`liverseg.training.validation.output_labels`).
- ``dual_binary_merge``: a liver model (liver and tumour as one class, ``p_liver``) and a tumour
  model (``p_tumour``): liver where ``p_liver > 0.5``, tumour where also ``p_tumour > 0.5`` (tumour
  only inside the liver model's mask), background elsewhere. The probability map is
  ``[1 - p_liver, p_liver (1 - p_tumour), p_liver p_tumour]``: the tumour model is read as the
  probability of tumour *given* liver, so the three sum to 1. The lesion report's tumour
  probability is the tumour model's own ``p_tumour`` (its confidence about the lesion; inside
  a lesion ``p_liver`` is above 0.5 anyway).
- ``cascade_paste``: the first stage (the model the second stage's ``roi.from_model`` names) runs on
  its coarse grid; its whole-liver mask (``roi.labels``) gives a box, scaled onto the fine grid
  (both grids resample the same cropped extent) and grown by ``roi.margin_mm`` per side (in voxels
  of the fine grid, rounded, as at training); the second stage runs on that crop of the fine
  image; its probabilities are pasted into a full-size map whose outside is certain background,
  mapped back, and the argmax taken. Without any liver from stage 1 the second stage sees the
  whole image (and a warning is logged).

Add a rule without editing liverseg::

    from liverseg.inference.combine import COMBINE_RULES

    @COMBINE_RULES.register("my_rule")
    def my_rule(pipeline, case): ...

or from an installed package through the ``liverseg.combine_rules`` entry-point group.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from liverseg.errors import LiversegError
from liverseg.planning.plans import ModelPlan, PipelineSpec
from liverseg.preprocessing.crop import BBox, paste_into
from liverseg.registry import Registry
from liverseg.training.validation import output_labels

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "liverseg.combine_rules"
LIVER, TUMOUR = 1, 2
THRESHOLD = 0.5


@dataclass
class Combined:
    """A pipeline's output on the canonical original grid.

    ``label`` uint8 ``(z, y, x)`` in original label values; ``probabilities`` float32
    ``(num_labels, z, y, x)``, channel ``k`` the probability of label ``k``; ``tumour_probability``
    float32 ``(z, y, x)``, what the lesion report averages over each lesion.
    """

    label: np.ndarray
    probabilities: np.ndarray
    tumour_probability: np.ndarray


class CaseModels(Protocol):
    """What a combine rule may ask about the case being predicted (the predictor provides it)."""

    num_labels: int

    def probabilities(self, model: str, box: BBox | None = None) -> np.ndarray:
        """Fold-averaged softmax ``(classes, z, y, x)`` float32 of ``model`` on its preprocessed grid, or on ``box`` of it."""

    def grid(self, model: str) -> dict:
        """The preprocessing properties of ``model``'s grid (shapes, crop box, spacings)."""

    def to_original(self, model: str, probabilities: np.ndarray) -> np.ndarray:
        """``(k, z, y, x)`` probabilities on ``model``'s whole preprocessed grid, mapped onto the original grid."""


CombineRule = Callable[[PipelineSpec, CaseModels], Combined]
COMBINE_RULES: Registry[CombineRule] = Registry("combine rule", entry_point_group=ENTRY_POINT_GROUP)


def label_probabilities(probabilities: np.ndarray, model: ModelPlan, num_labels: int) -> np.ndarray:
    """A model's class probabilities ``(classes, ...)`` as probabilities of the original labels ``(num_labels, ...)``."""
    table = output_labels(model)
    if len(table) == num_labels and np.array_equal(table, np.arange(num_labels)):
        return probabilities
    out = np.zeros((num_labels, *probabilities.shape[1:]), dtype=np.float32)
    for cls, label in enumerate(table):
        out[label] += probabilities[cls]
    return out


def _tumour(probabilities: np.ndarray) -> np.ndarray:
    if probabilities.shape[0] > TUMOUR:
        return probabilities[TUMOUR]
    return np.zeros(probabilities.shape[1:], dtype=np.float32)


def _from_label_probabilities(probabilities: np.ndarray) -> Combined:
    label = probabilities.argmax(0).astype(np.uint8)
    return Combined(label, probabilities, _tumour(probabilities))


@COMBINE_RULES.register("argmax")
def argmax(pipeline: PipelineSpec, case: CaseModels) -> Combined:
    """The most probable label per voxel, from the mean label probabilities of the pipeline's models."""
    total = None
    for model in pipeline.models:
        mapped = case.to_original(model.name, case.probabilities(model.name))
        probabilities = label_probabilities(mapped, model, case.num_labels)
        total = probabilities if total is None else np.add(total, probabilities, out=total)
    if len(pipeline.models) > 1:
        total /= len(pipeline.models)
    return _from_label_probabilities(total)


def _binary_label(model: ModelPlan) -> frozenset[int] | None:
    """The original labels a binary model's class 1 stands for, None for a model with more classes."""
    if model.num_classes != 2:
        return None
    return frozenset(original for original, learned in model.learns.items() if learned == 1)


@COMBINE_RULES.register("dual_binary_merge")
def dual_binary_merge(pipeline: PipelineSpec, case: CaseModels) -> Combined:
    """Tumour where the tumour model says so inside the liver model's mask, liver where the liver model says so."""
    liver = [m for m in pipeline.models if _binary_label(m) is not None and LIVER in _binary_label(m)]
    tumour = [m for m in pipeline.models if _binary_label(m) == frozenset({TUMOUR})]
    if len(liver) != 1 or len(tumour) != 1 or len(pipeline.models) != 2:
        raise LiversegError(f"pipeline {pipeline.name}: dual_binary_merge needs one binary liver model (learning label "
                            f"{LIVER}, and {TUMOUR} with it) and one binary tumour model (learning label {TUMOUR} only); got "
                            f"{', '.join(f'{m.name} learns {m.learns}' for m in pipeline.models)}")
    p_liver = case.to_original(liver[0].name, case.probabilities(liver[0].name)[1:])[0]
    p_tumour = case.to_original(tumour[0].name, case.probabilities(tumour[0].name)[1:])[0]
    inside = p_liver > THRESHOLD
    label = np.where(inside, np.where(p_tumour > THRESHOLD, TUMOUR, LIVER), 0).astype(np.uint8)
    probabilities = np.zeros((max(case.num_labels, TUMOUR + 1), *label.shape), dtype=np.float32)
    np.subtract(1.0, p_liver, out=probabilities[0])
    np.multiply(p_liver, p_tumour, out=probabilities[TUMOUR])
    np.subtract(p_liver, probabilities[TUMOUR], out=probabilities[LIVER])
    return Combined(label, probabilities, p_tumour)


def stage_box(coarse_mask: np.ndarray, coarse_grid: dict, fine_grid: dict, margin_mm: float) -> BBox | None:
    """The fine-grid crop of a cascade's second stage: the coarse mask's box, scaled and grown by the margin.

    None when the mask is empty. Both grids are resamplings of the same cropped extent, so a
    coarse voxel range ``[lo, hi)`` covers the fine range ``[floor(lo f), ceil(hi f))`` with
    ``f`` = fine shape / coarse shape per axis.
    """
    if list(coarse_grid["crop_bbox"]) != list(fine_grid["crop_bbox"]):
        raise ValueError(f"the cascade's grids crop different boxes: {coarse_grid['crop_bbox']} and {fine_grid['crop_bbox']}")
    if not coarse_mask.any():
        return None
    fine_shape = fine_grid["shape_after_resampling"]
    spacing = fine_grid["spacing_after_resampling"]
    box = []
    for axis, (n_fine, n_coarse, s) in enumerate(zip(fine_shape, coarse_mask.shape, spacing)):
        hits = np.flatnonzero(coarse_mask.any(axis=tuple(a for a in range(3) if a != axis)))
        factor = n_fine / n_coarse
        margin = int(round(margin_mm / s))
        start = max(0, math.floor(hits[0] * factor) - margin)
        stop = min(n_fine, math.ceil((hits[-1] + 1) * factor) + margin)
        box.append(slice(start, stop))
    return tuple(box)  # type: ignore[return-value]


@COMBINE_RULES.register("cascade_paste")
def cascade_paste(pipeline: PipelineSpec, case: CaseModels) -> Combined:
    """Stage 1 finds the liver box on a coarse grid; stage 2 segments that box (plus margin) at full resolution."""
    stages = [m for m in pipeline.models if m.roi is not None]
    if len(stages) != 1 or len(pipeline.models) != 2:
        raise LiversegError(f"pipeline {pipeline.name}: cascade_paste needs two models, the second with a region of interest "
                            f"(roi) taken from the first; got {', '.join(m.name for m in pipeline.models)}")
    fine = stages[0]
    coarse = pipeline.model(fine.roi.from_model)
    coarse_labels = output_labels(coarse)[case.probabilities(coarse.name).argmax(0)]
    mask = np.isin(coarse_labels, np.asarray(fine.roi.labels, dtype=coarse_labels.dtype))
    fine_grid = case.grid(fine.name)
    box = stage_box(mask, case.grid(coarse.name), fine_grid, fine.roi.margin_mm)
    shape = tuple(fine_grid["shape_after_resampling"])
    if box is None:
        log.warning("cascade: stage 1 (%s) found no voxel of labels %s; stage 2 (%s) runs on the whole image",
                    coarse.name, list(fine.roi.labels), fine.name)
        box = tuple(slice(0, n) for n in shape)
    log.debug("cascade: stage 2 on the box %s of the fine grid %s", [(s.start, s.stop) for s in box], shape)
    cropped = case.probabilities(fine.name, box)
    fill = [1.0] + [0.0] * (cropped.shape[0] - 1)
    full = paste_into(shape, box, cropped, fill=fill)
    mapped = case.to_original(fine.name, full)
    return _from_label_probabilities(label_probabilities(mapped, fine, case.num_labels))


def get_combine_rule(name: str) -> CombineRule:
    """The combine rule called ``name``; loads an entry-point plugin the first time it is asked for."""
    return COMBINE_RULES.get(name)
