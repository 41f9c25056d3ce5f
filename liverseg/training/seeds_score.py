"""The score that multi-seed selection ranks seeds by: whole-case Jaccard on the fold's inner validation cases.

Hänsch et al. (2022) kept the seeds with the highest validation Jaccard. liverseg computes it on
**whole cases**, not on the online validation patches: each seed draws its own validation patches
(they are seeded by the run's seed), so patch scores of two seeds are measured on different
samples, and a few patches an epoch are noisy. Predicting the same cases whole gives every seed the
same test, the one the fold's model will face, and the cost is small next to training (one sliding
window pass per case, step 0.5, no mirroring, for each seed still in the race at a rung).

The cases are the fold's ``inner_val`` cases (the trainer's online validation cases; the fold's
``val`` cases when splits.json has no inner split, which the caller warns about). Prediction and
reference stay on the preprocessed grid, so no case is resampled back; the reference is the
preprocessed label mapped to the model's classes. As in the final validation, a masked model (the
tumour model) is scored inside its loss region only, and a cascade's second stage on the reference
box of its region labels grown by the plan's margin (what it trains on, without the jitter).

**Jaccard** per class is ``TP / (TP + FP + FN)`` with the voxel counts *pooled over the cases*
(equal to ``D / (2 - D)`` of the pooled Dice), so a case without tumour adds its false positives
instead of an undefined ratio. The score is the mean over the classes that occur in the reference
or the prediction of any case; None when none does.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from liverseg.errors import LiversegError
from liverseg.inference.sliding_window import predict_sliding_window
from liverseg.planning.plans import ModelPlan
from liverseg.preprocessing.case import load_preprocessed_case
from liverseg.training.sampler import map_labels
from liverseg.training.validation import scored_region, single_output

log = logging.getLogger(__name__)

STEP_FRACTION = 0.5


def confusion_counts(reference: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """True positives, false positives and false negatives of each foreground class: int64 ``(3, num_classes - 1)``."""
    pairs = reference.astype(np.int64).ravel() * num_classes + prediction.astype(np.int64).ravel()
    matrix = np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    tp = np.diag(matrix)
    return np.stack([tp, matrix.sum(0) - tp, matrix.sum(1) - tp])[:, 1:].astype(np.int64)


def jaccard_from_counts(counts: np.ndarray) -> list[float | None]:
    """Jaccard ``TP / (TP + FP + FN)`` per class from :func:`confusion_counts`; None where the class never occurred."""
    tp, fp, fn = (np.asarray(counts, dtype=np.float64)[i] for i in range(3))
    union = tp + fp + fn
    return [None if u == 0 else float(t / u) for t, u in zip(tp, union)]


def mean_score(per_class: Sequence[float | None]) -> float | None:
    """The mean of the defined per-class scores; None when no class is defined."""
    values = [v for v in per_class if v is not None]
    return float(np.mean(values)) if values else None


def validation_jaccard(network: nn.Module, model: ModelPlan, data_folder: Path, cases: Sequence[str], device: torch.device,
                       use_bf16: bool | str = "auto") -> dict[str, Any]:
    """Whole-case Jaccard of ``network`` on the preprocessed ``cases``: ``{"score", "jaccard" per class, "counts"}``."""
    if not cases:
        raise LiversegError(f"{data_folder}: no validation cases to compare the seeds on")
    counts = np.zeros((3, model.num_classes - 1), dtype=np.int64)
    with single_output(network):
        for case in tqdm(cases, desc="seed score", unit="case", disable=None, leave=False):
            data, seg, properties = load_preprocessed_case(data_folder, case)
            if seg is None:
                raise LiversegError(f"{data_folder}: case {case} has no preprocessed label to score the seeds against; "
                                    "run liverseg_plan --preprocess-only again")
            spacing = [float(s) for s in properties.get("spacing_after_resampling", properties.get("spacing_target"))]
            crop, mask = scored_region(model, seg, spacing)
            image = np.ascontiguousarray(data[(slice(None), *crop)], dtype=np.float32)
            probabilities = predict_sliding_window(network, image, model.topology.patch_size, model.num_classes,
                                                   step_fraction=STEP_FRACTION, mirror_axes=None, compute_device=device,
                                                   accumulate_device="cpu", use_bf16=use_bf16)
            prediction = probabilities.argmax(0).numpy()
            reference = map_labels(np.asarray(seg[crop]), model.learns)
            if mask is not None:
                reference, prediction = reference[mask], prediction[mask]
            counts += confusion_counts(reference, prediction, model.num_classes)
    per_class = jaccard_from_counts(counts)
    return {"score": mean_score(per_class), "jaccard": per_class, "counts": counts.tolist()}
