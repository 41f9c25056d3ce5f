"""Geometry of lesions: bounding boxes, volumes and the RECIST-style longest axial diameter.

Shared by the dataset fingerprint (lesion size distributions that drive the planner), the
evaluation (RECIST-measurable lesions: longest axial diameter >= 10 mm) and the lesion report.
Arrays are ``(z, y, x)`` and spacings ``(z, y, x)`` in mm, as everywhere in liverseg.

Conventions, kept consistent so that the numbers agree with each other:

* a voxel is a box of size ``spacing`` centred on its index, so a lesion covering ``n`` voxels along
  an axis has an extent of ``n * spacing`` mm on that axis (not ``(n - 1) * spacing``);
* the longest axial diameter is measured on the same boxes: per axial slice, the largest distance
  between any two corners of the lesion's pixels (the maximum Feret diameter of the pixels as
  areas), and the maximum over slices. A radiologist measures a lesion edge to edge, and this makes
  the diameter of an ``a x b`` pixel rectangle exactly the diagonal of its ``extent_mm``; a single
  1 x 1 mm pixel measures sqrt(2) mm and a digital disc of radius ``r`` between ``2r + 1`` and
  ``2r + sqrt(2)`` pixels.
"""
from __future__ import annotations

from typing import Any, Sequence

import cc3d
import numpy as np
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

# Below this many candidate corners a direct pairwise search is cheaper than a convex hull.
_BRUTE_FORCE_POINTS = 64


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (one slice per axis) holding every non-zero voxel of ``mask``, or None if empty.

    Used to crop a volume to its content before anything expensive runs on it.
    """
    mask = np.asarray(mask)
    box: list[slice] = []
    view = mask
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(view.any(axis=others) if others else view)
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
        # Later projections only need the part already known to hold the content.
        view = view[(slice(None),) * axis + (box[-1],)]
    return tuple(box)


def _max_pairwise_distance(points: np.ndarray) -> float:
    if len(points) > _BRUTE_FORCE_POINTS:
        # Corners of pixels always span an area, so the hull is never degenerate.
        points = points[ConvexHull(points).vertices]
    return float(pdist(points).max())


def longest_axial_diameter_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Longest in-plane (axial) diameter in mm of ONE lesion, as in RECIST; 0.0 for an empty mask.

    ``mask`` is ``(z, y, x)`` (any size: pass a crop around the lesion for speed), ``spacing`` is
    ``(z, y, x)`` in mm. For each axial slice the maximum Feret diameter of the lesion's pixels is
    measured between pixel *corners* (pixels are areas, see the module docstring); the result is the
    maximum over slices. Only the two end pixels of each row can hold an extreme corner, so the
    search runs on at most four points per row.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) mask, got shape {mask.shape}")
    box = bounding_box(mask)
    if box is None:
        return 0.0
    mask = mask[box]
    sy, sx = float(spacing[1]), float(spacing[2])
    nx = mask.shape[2]
    rows = mask.any(axis=2)  # (z, y): which rows of each slice hold lesion pixels
    first = np.argmax(mask, axis=2)  # leftmost pixel of each row
    last = nx - 1 - np.argmax(mask[:, :, ::-1], axis=2)  # rightmost pixel of each row
    best = 0.0
    for z in np.flatnonzero(rows.any(axis=1)):
        y = np.flatnonzero(rows[z]).astype(np.float64)
        x0 = first[z, rows[z]] - 0.5
        x1 = last[z, rows[z]] + 0.5
        corners_y = np.concatenate([y - 0.5, y + 0.5, y - 0.5, y + 0.5]) * sy
        corners_x = np.concatenate([x0, x0, x1, x1]) * sx
        best = max(best, _max_pairwise_distance(np.column_stack([corners_y, corners_x])))
    return best


def label_components(label: np.ndarray, lesion_label: int = 2, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Connected components of ``label == lesion_label``: a uint32 id image (0 = none) and the count.

    Exposed separately so that callers matching lesions (evaluation) label once and measure with
    :func:`measure_components`.
    """
    components, count = cc3d.connected_components(np.asarray(label) == lesion_label, connectivity=connectivity, return_N=True)
    return components.astype(np.uint32, copy=False), int(count)


def measure_components(components: np.ndarray, spacing: Sequence[float]) -> list[dict[str, Any]]:
    """One JSON-ready row per component of an id image (0 = background), in id order.

    Keys: ``id``; ``bbox`` (voxels, ``[[start, stop], ...]`` per axis z, y, x, stop exclusive);
    ``extent_voxels`` and ``extent_mm`` (z, y, x); ``num_voxels``; ``volume_ml``;
    ``longest_axial_diameter_mm``; ``centroid_voxel`` (z, y, x, mean voxel index). Each lesion is
    measured on its own bounding-box crop, so the cost grows with lesion size, not volume size.
    """
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    voxel_ml = float(np.prod(spacing_arr)) / 1000.0
    stats = cc3d.statistics(np.ascontiguousarray(components))
    counts = stats["voxel_counts"]
    rows = []
    for lesion_id in range(1, len(counts)):
        if counts[lesion_id] == 0:  # ids need not be consecutive in a user-supplied image
            continue
        box = stats["bounding_boxes"][lesion_id]
        extent = np.array([s.stop - s.start for s in box])
        crop = components[box] == lesion_id
        rows.append(
            {
                "id": lesion_id,
                "bbox": [[int(s.start), int(s.stop)] for s in box],
                "extent_voxels": [int(e) for e in extent],
                "extent_mm": [float(v) for v in extent * spacing_arr],
                "num_voxels": int(counts[lesion_id]),
                "volume_ml": float(counts[lesion_id]) * voxel_ml,
                "longest_axial_diameter_mm": longest_axial_diameter_mm(crop, spacing_arr),
                "centroid_voxel": [float(c) for c in stats["centroids"][lesion_id]],
            }
        )
    return rows


def lesion_table(
    label: np.ndarray, spacing: Sequence[float], lesion_label: int = 2, connectivity: int = 26
) -> list[dict[str, Any]]:
    """Measure every lesion (connected component of ``lesion_label``) of a ``(z, y, x)`` label map.

    See :func:`measure_components` for the keys; ids are the component ids of
    :func:`label_components` (raster order), so they are stable for a given label map.
    """
    components, count = label_components(label, lesion_label, connectivity)
    if count == 0:
        return []
    return measure_components(components, spacing)
