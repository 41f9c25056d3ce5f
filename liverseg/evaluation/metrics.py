"""Segmentation metrics of one case: overlap, surface distances and tumour burden.

Every distance is in millimetres from the ``(z, y, x)`` spacing. Which definition a metric uses
(surface model, HD95 and ASSD variants, the rule for two empty masks) comes from a
:class:`~liverseg.evaluation.profiles.MetricProfile`; docs/evaluation.md explains each choice.
Conventions shared by all profiles: Dice = 2TP / (2TP + FP + FN); Surface Dice is 0 when exactly
one mask is empty; every distance is NaN when either mask is empty.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.evaluation.profiles import MetricProfile, get_profile
from liverseg.evaluation.surfaces import SurfaceDistances, surface_distances, union_bounding_box

LIVER, TUMOR = 1, 2
STRUCTURES = ("liver", "tumor")  # liver = labels 1 and 2 together; tumor = label 2
SEGMENTATION_METRICS = ("dice", "surface_dice", "hd", "hd95", "assd")
NAN = math.nan


def dice(reference: np.ndarray, prediction: np.ndarray, both_empty: float = NAN) -> float:
    """Dice = 2TP / (2TP + FP + FN) of two binary masks; ``both_empty`` when neither has a voxel."""
    size = int(np.count_nonzero(reference)) + int(np.count_nonzero(prediction))
    if size == 0:
        return float(both_empty)
    return 2.0 * int(np.count_nonzero(reference & prediction)) / size


def surface_dice(distances: SurfaceDistances, tolerance_mm: float, both_empty: float = NAN) -> float:
    """Fraction of both surfaces (by weight) lying within ``tolerance_mm`` of the other surface.

    Nikolov et al.'s normalised surface Dice; with surfels this is DeepMind's
    ``compute_surface_dice_at_tolerance``. Exactly one empty mask gives 0.
    """
    if distances.reference_empty and distances.prediction_empty:
        return float(both_empty)
    if distances.reference_empty or distances.prediction_empty:
        return 0.0
    close = (distances.reference_weights[distances.reference_to_prediction <= tolerance_mm].sum()
             + distances.prediction_weights[distances.prediction_to_reference <= tolerance_mm].sum())
    return float(close / (distances.reference_weights.sum() + distances.prediction_weights.sum()))


def _either_empty(distances: SurfaceDistances) -> bool:
    return distances.reference_empty or distances.prediction_empty


def hausdorff(distances: SurfaceDistances) -> float:
    """Hausdorff distance: the largest distance from a point of either surface to the other."""
    if _either_empty(distances):
        return NAN
    return float(max(distances.reference_to_prediction.max(), distances.prediction_to_reference.max()))


def _area_weighted_percentile(values: np.ndarray, weights: np.ndarray, percentile: float) -> float:
    """Smallest value whose cumulative weight fraction reaches ``percentile`` (DeepMind's rule)."""
    order = np.argsort(values, kind="stable")
    fraction = np.cumsum(weights[order]) / weights.sum()
    index = int(np.searchsorted(fraction, percentile / 100.0))
    return float(values[order][min(index, values.size - 1)])


def hausdorff_percentile(
    distances: SurfaceDistances, percentile: float = 95.0, definition: str = "max_directed"
) -> float:
    """Robust Hausdorff distance (HD95 at the default ``percentile``) under one of three definitions.

    ``pooled``: percentile of the distances of both directions together (MedPy ``hd95``).
    ``max_directed``: larger of the two directed percentiles (MONAI ``compute_hausdorff_distance``).
    ``area_weighted``: larger of the two directed area-weighted percentiles, the smallest distance
    whose cumulative surfel area reaches the percentile (DeepMind ``compute_robust_hausdorff``);
    meant for surfel distances. The first two use numpy's linear-interpolation percentile.
    """
    if _either_empty(distances):
        return NAN
    forward, backward = distances.reference_to_prediction, distances.prediction_to_reference
    if definition == "pooled":
        return float(np.percentile(np.concatenate([forward, backward]), percentile))
    if definition == "max_directed":
        return float(max(np.percentile(forward, percentile), np.percentile(backward, percentile)))
    if definition == "area_weighted":
        return max(_area_weighted_percentile(forward, distances.reference_weights, percentile),
                   _area_weighted_percentile(backward, distances.prediction_weights, percentile))
    raise ValueError(f"unknown HD95 definition {definition!r}")


def assd(distances: SurfaceDistances, definition: str = "pooled") -> float:
    """Average symmetric surface distance (weighted by surfel area when the surface has areas).

    ``mean_of_directed``: mean of the two directed mean distances (MedPy 0.4, used by ATLAS 2023).
    ``pooled``: mean over the distances of both directions together (MedPy >= 0.5.2, MONAI).
    """
    if _either_empty(distances):
        return NAN
    wf, wb = distances.reference_weights, distances.prediction_weights
    sum_f = float(np.dot(wf, distances.reference_to_prediction))
    sum_b = float(np.dot(wb, distances.prediction_to_reference))
    if definition == "mean_of_directed":
        return 0.5 * (sum_f / wf.sum() + sum_b / wb.sum())
    if definition == "pooled":
        return (sum_f + sum_b) / (wf.sum() + wb.sum())
    raise ValueError(f"unknown ASSD definition {definition!r}")


def tumor_burden(label: np.ndarray) -> float:
    """Tumour voxels / (liver + tumour) voxels; 0 when the label has no liver or tumour at all.

    An empty prediction thus has burden 0 (no tumour found) and is penalised in the RMSE instead of
    being excluded from it.
    """
    tumor = int(np.count_nonzero(label == TUMOR))
    organ = tumor + int(np.count_nonzero(label == LIVER))
    return tumor / organ if organ else 0.0


def rmse(reference: Iterable[float], prediction: Iterable[float]) -> float:
    """Root mean square difference over pairs where both values are finite (NaN if none)."""
    a, b = np.asarray(list(reference), float), np.asarray(list(prediction), float)
    keep = np.isfinite(a) & np.isfinite(b)
    if not keep.any():
        return NAN
    return float(np.sqrt(np.mean((a[keep] - b[keep]) ** 2)))


def check_label(label: np.ndarray, source: str) -> np.ndarray:
    """``label`` as uint8 after checking it is 3D and holds only 0, 1 and 2 (``source`` names it)."""
    label = np.asarray(label)
    if label.ndim != 3:
        raise LiversegError(f"{source}: expected a 3D label map, got {label.ndim} dimensions {label.shape}")
    if label.dtype.kind == "f":
        if not np.array_equal(label, np.rint(label)):
            raise LiversegError(f"{source}: label map holds non-integer values (fractions or NaN); "
                                "give a label map, not probabilities")
    elif label.dtype.kind not in "biu":
        raise LiversegError(f"{source}: label map has unsupported data type {label.dtype}")
    if label.size and (label.min() < 0 or label.max() > TUMOR):
        values = np.unique(label)
        bad = [v for v in values.tolist() if v not in (0, LIVER, TUMOR)]
        raise LiversegError(f"{source}: label map holds values {bad[:10]}; expected 0 background, 1 liver, 2 tumour "
                            "(convert the labels first, e.g. with liverseg_convert)")
    return label.astype(np.uint8, copy=False)


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise LiversegError(f"spacing must be three positive finite numbers (z, y, x) in mm, got {spacing}")
    return values  # type: ignore[return-value]


def structure_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    profile: MetricProfile,
    tolerance_mm: float,
    threads: int = 1,
) -> dict[str, float]:
    """Dice, Surface Dice, HD, HD95 and ASSD of two binary masks under ``profile``."""
    result = {"dice": dice(reference, prediction, profile.both_empty_overlap)}
    surfaces: dict[str, SurfaceDistances] = {}

    def distances(kind: str) -> SurfaceDistances:
        if kind not in surfaces:
            surfaces[kind] = surface_distances(reference, prediction, spacing, kind=kind, threads=threads)
        return surfaces[kind]

    result["surface_dice"] = surface_dice(
        distances(profile.surface_dice_surface), tolerance_mm, profile.both_empty_overlap
    )
    dist = distances(profile.distance_surface)
    result["hd"] = hausdorff(dist)
    hd95_surface = "surfels" if profile.hd95 == "area_weighted" else profile.distance_surface
    result["hd95"] = hausdorff_percentile(distances(hd95_surface), profile.percentile, profile.hd95)
    result["assd"] = assd(dist, profile.assd)
    return result


def evaluate_case(
    reference_label: np.ndarray,
    predicted_label: np.ndarray,
    spacing: Sequence[float],
    profile: str | MetricProfile = "default",
    tolerance_mm: float = 5.0,
    threads: int = 1,
) -> dict[str, float]:
    """All segmentation metrics of one case from two ``(z, y, x)`` label maps (0, 1 liver, 2 tumour).

    Returns a flat dictionary: ``liver_<metric>`` and ``tumor_<metric>`` for every metric in
    :data:`SEGMENTATION_METRICS` (liver = labels 1 and 2), plus ``tumor_burden_reference``,
    ``tumor_burden_prediction`` and their absolute difference ``tumor_burden_abs_error``.
    """
    profile = get_profile(profile)
    spacing = _check_spacing(spacing)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise LiversegError(f"the Surface Dice tolerance must be a non-negative number of mm, got {tolerance_mm}")
    reference_label = check_label(reference_label, "reference")
    predicted_label = check_label(predicted_label, "prediction")
    if reference_label.shape != predicted_label.shape:
        raise LiversegError(
            f"reference shape {reference_label.shape} differs from prediction shape {predicted_label.shape}"
        )
    result: dict[str, float] = {}
    # Everything of interest lies in the box of both foregrounds; work there to save time.
    box = union_bounding_box(reference_label > 0, predicted_label > 0)
    if box is not None:
        reference_label, predicted_label = reference_label[box], predicted_label[box]
    for structure in STRUCTURES:
        if structure == "liver":
            ref, pred = reference_label > 0, predicted_label > 0
        else:
            ref, pred = reference_label == TUMOR, predicted_label == TUMOR
        for name, value in structure_metrics(ref, pred, spacing, profile, tolerance_mm, threads).items():
            result[f"{structure}_{name}"] = value
    result["tumor_burden_reference"] = tumor_burden(reference_label)
    result["tumor_burden_prediction"] = tumor_burden(predicted_label)
    result["tumor_burden_abs_error"] = abs(result["tumor_burden_prediction"] - result["tumor_burden_reference"])
    return result
