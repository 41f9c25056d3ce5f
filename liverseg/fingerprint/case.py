"""Statistics of one training case: geometry, crop, liver and lesion boxes, foreground intensities.

The numbers are what the planner needs about a case (see :mod:`liverseg.fingerprint` for the
JSON layout). Everything is ``(z, y, x)``. Each file is read once; per-case intensity statistics
use every foreground voxel, and a bounded, seeded sample of them is returned for the dataset-level
statistics, so memory stays bounded and results do not depend on the order cases are processed.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.io.images import Geometry, read_channels, read_image
from liverseg.lesion_measures import bounding_box, lesion_table

INTENSITY_PERCENTILES = (0.5, 2.0, 50.0, 98.0, 99.5)
DEFAULT_SAMPLES_PER_CASE = 10_000
_AXIS_ALIGNED_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CaseFingerprint:
    """The JSON-ready statistics of one case and its sampled foreground intensities.

    ``foreground_samples`` is ``(channels, n)`` float32 with ``n <= samples_per_case``; the
    dataset fingerprint pools these over cases and does not store them.
    """

    stats: dict[str, Any]
    foreground_samples: np.ndarray


def percentile_key(q: float) -> str:
    """The JSON key of an intensity percentile, nnU-Net style: 0.5 -> 'percentile_00_5', 50 -> 'median'."""
    if q == 50:
        return "median"
    whole, frac = divmod(round(q * 10), 10)
    return f"percentile_{whole:02d}_{frac}"


def intensity_statistics(values: np.ndarray) -> dict[str, float] | None:
    """Mean, std, min, max, median and the percentiles used for normalisation; None when empty."""
    if values.size == 0:
        return None
    values = values.astype(np.float64, copy=False)
    percentiles = np.percentile(values, INTENSITY_PERCENTILES)
    stats = {
        "num_voxels": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }
    stats.update({percentile_key(q): float(p) for q, p in zip(INTENSITY_PERCENTILES, percentiles)})
    return stats


def is_axis_aligned(direction: Sequence[float], tolerance: float = _AXIS_ALIGNED_TOLERANCE) -> bool:
    """Whether a 3x3 direction matrix only permutes and flips axes (no oblique rotation)."""
    matrix = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    return bool(np.all((matrix < tolerance) | (np.abs(matrix - 1.0) < tolerance)))


def _box_dict(box: tuple[slice, ...] | None, spacing: np.ndarray) -> dict[str, Any] | None:
    if box is None:
        return None
    extent = np.array([s.stop - s.start for s in box])
    return {
        "bbox": [[s.start, s.stop] for s in box],
        "extent_voxels": [int(e) for e in extent],
        "extent_mm": [float(v) for v in extent * spacing],
    }


def _sample(values: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``num_samples`` columns of ``values`` (channels, n) chosen without replacement."""
    if values.shape[1] <= num_samples:
        return values
    chosen = np.sort(rng.choice(values.shape[1], size=num_samples, replace=False))
    return values[:, chosen]


def case_fingerprint_from_arrays(
    images: np.ndarray,
    label: np.ndarray,
    geometry: Geometry,
    case_id: str = "case",
    samples_per_case: int = DEFAULT_SAMPLES_PER_CASE,
    seed: int = 0,
    lesion_label: int = 2,
) -> CaseFingerprint:
    """Fingerprint of a case already in memory: ``images`` (c, z, y, x), ``label`` (z, y, x).

    The intensity sample is seeded by ``seed`` and ``case_id`` together, so a case gives the same
    sample whichever worker computes it and in whatever order.
    """
    if images.ndim != 4 or images.shape[1:] != label.shape:
        raise LiversegError(
            f"{case_id}: image shape {images.shape[1:]} and label shape {label.shape} differ; "
            "image and label of a case must share one grid (run liverseg_fingerprint --verify-only)"
        )
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    shape = np.array(label.shape)
    voxel_ml = float(np.prod(spacing)) / 1000.0

    # nnU-Net's crop: the box around voxels where any channel is non-zero.
    crop_box = bounding_box(np.any(images != 0, axis=0))
    crop = _box_dict(crop_box, spacing)

    foreground = label > 0
    liver = _box_dict(bounding_box(foreground), spacing)
    num_foreground = int(np.count_nonzero(foreground))
    if liver is not None:
        liver["num_voxels"] = num_foreground
        liver["volume_ml"] = num_foreground * voxel_ml
    lesions = lesion_table(label, spacing, lesion_label=lesion_label, connectivity=26)

    values = images[:, foreground]  # (channels, n) in raster order
    rng = np.random.default_rng([seed, zlib.crc32(case_id.encode("utf-8"))])
    samples = _sample(values, samples_per_case, rng).astype(np.float32, copy=True)

    stats = {
        "shape": [int(n) for n in shape],
        "spacing": [float(s) for s in spacing],
        "extent_mm": [float(v) for v in shape * spacing],
        "image_volume_ml": float(np.prod(shape)) * voxel_ml,
        "original_orientation": geometry.original_orientation,
        "original_direction": [float(d) for d in geometry.original_direction],
        "axis_aligned": is_axis_aligned(geometry.original_direction),
        "crop_bbox": crop["bbox"] if crop else None,
        "shape_after_crop": crop["extent_voxels"] if crop else [0, 0, 0],
        "liver": liver,
        "num_lesions": len(lesions),
        "tumour_volume_ml": float(sum(lesion["volume_ml"] for lesion in lesions)),
        "lesions": lesions,
        "foreground_intensity": {str(c): intensity_statistics(values[c]) for c in range(values.shape[0])},
    }
    return CaseFingerprint(stats=stats, foreground_samples=samples)


def compute_case_fingerprint(
    image_paths: Sequence[str | Path],
    label_path: str | Path,
    case_id: str | None = None,
    samples_per_case: int = DEFAULT_SAMPLES_PER_CASE,
    seed: int = 0,
    lesion_label: int = 2,
) -> CaseFingerprint:
    """Read one case's channel files and label file (each once) and compute its fingerprint.

    ``case_id`` names the case in messages and seeds its intensity sample (default: the label
    file name without its ending).
    """
    label_path = Path(label_path)
    if case_id is None:
        case_id = label_path.name.split(".")[0]
    images, geometry = read_channels(image_paths)
    label, label_geometry = read_image(label_path)
    if label_geometry.shape != geometry.shape:
        raise LiversegError(
            f"{label_path}: label shape {label_geometry.shape} differs from image shape {geometry.shape} "
            f"({image_paths[0]}); fix the files or run liverseg_fingerprint --verify-only to list all problems"
        )
    return case_fingerprint_from_arrays(images, label, geometry, case_id, samples_per_case, seed, lesion_label)
