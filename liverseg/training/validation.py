"""How well a model does on its fold's validation cases: online pseudo-Dice and the final full-case check.

During training, :func:`overlap_counts` counts true positives, false positives and false
negatives per foreground class on validation *patches*; summed over an epoch they give nnU-Net's
pseudo-Dice (:func:`dice_from_counts`), cheap enough to compute every epoch.

At the end of training, :func:`validate_cases` predicts every validation case whole: sliding
window on the preprocessed image (step 0.5, no mirroring: test-time augmentation costs 4-8 passes
and is for the final predictor), probabilities mapped back onto the original grid, argmax, and
the model's classes written as the original labels they stand for (a multiclass model's classes
are the labels; the liver model's class 1 becomes label 1, the whole liver; the tumour model's
class 1 becomes label 2). Into ``validation/``: ``<case><file_ending>`` (the label map with the
input's geometry), ``<case>.npz`` (``probabilities``: float16 ``(classes, Z, Y, X)`` on the
original grid, for ensembling and model selection) and ``summary.json`` (per case and mean Dice of
each model class against the raw reference label mapped the same way; for a model whose loss is
masked, such as the tumour model that only ever sees the dilated liver, or a cascade's second
stage that only ever sees the liver's box, both are counted inside that region of the reference
only: :func:`scored_region`; ``"scored_within"`` in the summary says so). The full ATLAS metrics
come from ``liverseg_evaluate``.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from liverseg.evaluation.metrics import dice
from liverseg.inference.sliding_window import predict_sliding_window
from liverseg.io.atomic import atomic_output, write_json
from liverseg.io.dataset import RawDataset
from liverseg.io.images import read_image
from liverseg.planning.plans import ModelPlan
from liverseg.preprocessing.case import load_preprocessed_case
from liverseg.preprocessing.crop import paste_into
from liverseg.preprocessing.inverse import original_geometry, probabilities_to_original, write_prediction
from liverseg.training.sampler import dilated_mask, label_box

log = logging.getLogger(__name__)

VALIDATION_FOLDER = "validation"
SUMMARY_FILE = "summary.json"
STEP_FRACTION = 0.5


def overlap_counts(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """True positives, false positives and false negatives of each foreground class: ``(3, num_classes - 1)`` int64.

    ``logits`` ``(B, K, *spatial)``; ``target`` ``(B, 1, *spatial)`` labels; ``mask`` (same shape,
    or None) limits the count to the voxels where the loss counts.
    """
    prediction = logits.argmax(1)
    reference = target[:, 0] if target.ndim == logits.ndim else target
    valid = None if mask is None else (mask[:, 0] if mask.ndim == logits.ndim else mask).bool()
    counts = torch.zeros((3, num_classes - 1), dtype=torch.int64)
    for c in range(1, num_classes):
        predicted, true = prediction == c, reference == c
        if valid is not None:
            predicted, true = predicted & valid, true & valid
        counts[0, c - 1] = (predicted & true).sum()
        counts[1, c - 1] = (predicted & ~true).sum()
        counts[2, c - 1] = (~predicted & true).sum()
    return counts


def dice_from_counts(counts: torch.Tensor | np.ndarray) -> list[float | None]:
    """Dice ``2TP / (2TP + FP + FN)`` per class from :func:`overlap_counts` sums; None where the class never occurred."""
    tp, fp, fn = (np.asarray(counts, dtype=np.float64)[i] for i in range(3))
    denominator = 2 * tp + fp + fn
    return [None if d == 0 else float(2 * t / d) for t, d in zip(tp, denominator)]


def output_labels(model: ModelPlan) -> np.ndarray:
    """Lookup table from the model's classes to the original labels they are written as (the smallest one mapped to each)."""
    table = np.zeros(model.num_classes, dtype=np.uint8)
    for original, learned in sorted(model.learns.items(), reverse=True):
        table[learned] = original
    return table


def class_names(model: ModelPlan, labels: Mapping[str, int]) -> list[str]:
    """A name for each foreground class of the model, from the dataset's label names (``liver+tumor`` when merged)."""
    by_value = {int(v): k for k, v in labels.items()}
    return ["+".join(by_value.get(o, str(o)) for o in sorted(o for o, c in model.learns.items() if c == cls))
            for cls in range(1, model.num_classes)]


@contextlib.contextmanager
def single_output(network: nn.Module) -> Iterator[nn.Module]:
    """Switch deep supervision off while predicting whole cases (only the full-resolution head is needed)."""
    switch = getattr(network, "set_deep_supervision", None)
    before = getattr(network, "deep_supervision", None)
    if switch is not None and before:
        switch(False)
    try:
        yield network
    finally:
        if switch is not None and before:
            switch(True)


def validate_cases(
    network: nn.Module,
    model: ModelPlan,
    labels: Mapping[str, int],
    data_folder: Path,
    raw: RawDataset,
    cases: Sequence[str],
    results_dir: Path,
    device: torch.device,
    use_bf16: bool | str = "auto",
) -> dict[str, Any]:
    """Predict ``cases`` whole; write labels, probabilities and ``summary.json`` into ``results_dir/validation``.

    Returns the summary.
    """
    folder = Path(results_dir) / VALIDATION_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    table = output_labels(model)
    names = class_names(model, labels)
    rows = []
    with single_output(network):
        for case in tqdm(cases, desc="validation", unit="case", disable=None, leave=False):
            start = time.perf_counter()
            data, seg, properties = load_preprocessed_case(data_folder, case)
            probabilities = _predict_case(network, model, data, seg, properties, device, use_bf16)
            original = probabilities_to_original(probabilities, properties)
            classes = original.argmax(0).astype(np.uint8)
            prediction = folder / f"{case}{raw.info.file_ending}"
            write_prediction(table[classes], original_geometry(properties), prediction)
            with atomic_output(folder / f"{case}.npz") as tmp:
                np.savez_compressed(tmp, probabilities=original.astype(np.float16))
            row = {"case": case, "prediction": prediction.name, **_scores(classes, raw.label_file(case), model),
                   "seconds": round(time.perf_counter() - start, 2)}
            log.info("validation %s: Dice %s", case, ", ".join(f"{n} {_text(d)}" for n, d in zip(names, row["dice"].values())))
            rows.append(row)
    summary = {
        "model": model.name,
        "classes": {str(c): name for c, name in enumerate(names, start=1)},
        "written_as_labels": {str(c): int(table[c]) for c in range(1, model.num_classes)},
        "scored_within": _scope(model),
        "mean": {
            "dice": {str(c): _mean([r["dice"][str(c)] for r in rows]) for c in range(1, model.num_classes)},
            "dice_foreground": _mean([r["dice_foreground"] for r in rows]),
        },
        "cases": rows,
    }
    write_json(folder / SUMMARY_FILE, summary)
    return summary


def _predict_case(network: nn.Module, model: ModelPlan, data: np.ndarray, seg: np.ndarray | None, properties: Mapping[str, Any],
                  device: torch.device, use_bf16: bool | str) -> np.ndarray:
    """Probabilities on the preprocessed grid; a cascade's second stage predicts only the box it is handed.

    That box is the reference's (a perfect first stage, as at training without the jitter); the
    rest is certain background, as when the real first stage hands it over at inference.
    """
    if model.roi is None or seg is None:
        return _predict(network, model, data, device, use_bf16)
    spacing = [float(v) for v in properties.get("spacing_after_resampling", properties.get("spacing_target"))]
    crop, _ = scored_region(model, np.asarray(seg), spacing)
    inside = _predict(network, model, np.ascontiguousarray(data[(slice(None), *crop)]), device, use_bf16)
    return paste_into(data.shape[1:], crop, inside, fill=[1.0] + [0.0] * (model.num_classes - 1))


def _predict(network: nn.Module, model: ModelPlan, data: np.ndarray, device: torch.device, use_bf16: bool | str) -> np.ndarray:
    probabilities = predict_sliding_window(network, data, model.topology.patch_size, model.num_classes,
                                           step_fraction=STEP_FRACTION, mirror_axes=None, compute_device=device,
                                           accumulate_device="cpu", use_bf16=use_bf16)
    return probabilities.numpy()


def _scores(classes: np.ndarray, label_file: Path, model: ModelPlan) -> dict[str, Any]:
    """Dice of each model class and of the foreground (all classes together) against the raw reference."""
    if not label_file.is_file():
        log.warning("%s: no reference label; Dice left empty", label_file)
        return {"dice": {str(c): None for c in range(1, model.num_classes)}, "dice_foreground": None}
    raw, geometry = read_image(label_file)
    mapping = np.zeros(max(256, int(raw.max()) + 1), dtype=np.uint8)
    for original, learned in model.learns.items():
        mapping[original] = learned
    reference = mapping[raw.astype(np.int64)]
    if reference.shape != classes.shape:
        raise ValueError(f"{label_file}: reference of shape {reference.shape}, prediction {classes.shape}")
    crop, mask = scored_region(model, raw, geometry.spacing)
    region = np.zeros(raw.shape, dtype=bool)
    region[crop] = True if mask is None else mask
    reference, classes = np.where(region, reference, 0), np.where(region, classes, 0)
    scores = {str(c): _finite(dice(reference == c, classes == c)) for c in range(1, model.num_classes)}
    return {"dice": scores, "dice_foreground": _finite(dice(reference > 0, classes > 0))}


def scored_region(model: ModelPlan, seg: np.ndarray, spacing: Sequence[float]) -> tuple[tuple[slice, ...], np.ndarray | None]:
    """Where a model's cases are scored: a crop and a mask inside it (None: the whole crop).

    A cascade's second stage only ever sees the box its first stage hands over: the reference box
    of its ``roi`` labels grown by the margin, as at training (without the jitter). A masked model
    (the tumour model) learned nothing outside its loss region and its pipeline never uses its
    output there: the reference labels dilated as its loss mask. Elsewhere their outputs are
    meaningless and would swamp the score with false positives. ``seg`` holds the original labels.
    """
    crop = tuple(slice(0, n) for n in seg.shape)
    if model.roi is not None:
        box = label_box(seg, model.roi.labels)
        if box is not None:
            crop = tuple(slice(max(0, lo - int(round(model.roi.margin_mm / s))), min(n, hi + int(round(model.roi.margin_mm / s))))
                         for (lo, hi), n, s in zip(box, seg.shape, spacing))
    mask = None
    if model.loss_mask_dilation_mm is not None:
        mask = dilated_mask(np.asarray(seg), model.loss_mask_labels, model.loss_mask_dilation_mm, spacing)[crop]
    return crop, mask


def _scope(model: ModelPlan) -> str:
    """What :func:`scored_region` restricts the score of ``model`` to, in words for the summary."""
    if model.loss_mask_dilation_mm is not None:
        return (f"labels {', '.join(map(str, model.loss_mask_labels))} of the reference dilated by "
                f"{model.loss_mask_dilation_mm:g} mm")
    if model.roi is not None:
        return (f"the reference box of labels {', '.join(map(str, model.roi.labels))} grown by "
                f"{model.roi.margin_mm:g} mm (the region the first stage hands over)")
    return "whole image"


def _finite(value: float) -> float | None:
    return None if value != value else round(float(value), 5)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(sum(kept) / len(kept), 5) if kept else None


def _text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
