"""The lesion report: what a clinician wants next to the mask, per lesion and per case.

Per lesion: id (its value in the instance map), voxel count, volume, centroid in world and voxel
coordinates, bounding box, longest axial diameter (RECIST-style, :mod:`liverseg.lesion_measures`),
mean tumour probability and the ATLAS paper's uncertainty ``1 - mean tumour probability`` over the
lesion's voxels (Lambert et al. 2023, eq. 1). Per case: whole-liver, parenchyma and tumour volumes
and the tumour burden with the evaluation's definition. Lesions are sorted by size, largest first,
and numbered 1..n in that order, in the report and in the instance map alike.

Coordinates: voxel indices are ``(z, y, x)`` of the canonical (LPS-oriented) array that
:func:`liverseg.io.images.read_image` returns; world coordinates are ``(x, y, z)`` in mm in the
ITK/DICOM patient frame (LPS), the numbers a viewer shows for the point, whatever the file's
orientation.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.evaluation.metrics import check_label, tumor_burden
from liverseg.io.atomic import atomic_output, write_json
from liverseg.io.images import Geometry, write_image
from liverseg.lesion_measures import label_components, measure_components

LIVER, TUMOUR = 1, 2
COORDINATES = ("world: (x, y, z) mm, ITK/DICOM patient frame (LPS); voxel: (z, y, x) indices of the "
               "canonical LPS-oriented array, bbox stop exclusive")
# Probabilities may come from float16 maps or interpolation: allow this much outside [0, 1].
_PROBABILITY_SLACK = 1e-3

LESION_COLUMNS = ("case_id", "lesion_id", "component_id", "num_voxels", "volume_ml", "longest_axial_diameter_mm",
                  "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "mean_tumour_probability", "uncertainty",
                  "centroid_voxel_z", "centroid_voxel_y", "centroid_voxel_x",
                  "bbox_z_start", "bbox_z_stop", "bbox_y_start", "bbox_y_stop", "bbox_x_start", "bbox_x_stop")
CASE_COLUMNS = ("case_id", "num_lesions", "liver_volume_ml", "liver_parenchyma_volume_ml", "tumour_volume_ml",
                "tumour_burden", "largest_lesion_volume_ml")


def _instances(label: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """The instance map and, for report id ``k``, the raster-order component id at index ``k - 1``."""
    components, count = label_components(np.asarray(label), TUMOUR, connectivity)
    if count > np.iinfo(np.uint16).max:
        raise LiversegError(f"the label map has {count} separate lesions, more than a lesion map can number; "
                            "remove specks first (post-processing step remove_small_lesions)")
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    order = np.lexsort((np.arange(count), -sizes[1:])) + 1  # raster ids, largest first
    new_id = np.zeros(count + 1, dtype=np.uint16)
    new_id[order] = np.arange(1, count + 1, dtype=np.uint16)
    return new_id[components], order


def lesion_instance_map(label: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """A ``(z, y, x)`` uint16 map giving each lesion its report id: 1 the largest, 0 no lesion.

    A lesion is a ``connectivity``-connected component of label 2; lesions of equal size keep
    their raster order. Saved beside the label map, it lets a viewer show lesion ``k`` of the report.
    """
    return _instances(label, connectivity)[0]


def voxel_to_world(index_zyx: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
                   direction: Sequence[float]) -> np.ndarray:
    """World points ``(n, 3)`` in (x, y, z) mm of continuous voxel indices ``(n, 3)`` in (z, y, x).

    ``spacing`` is ``(z, y, x)``; ``origin`` and the row-major 3 x 3 ``direction`` are SimpleITK's
    (x, y, z) values of the same array's image, as :class:`~liverseg.io.images.Geometry` holds them.
    """
    index_xyz = np.asarray(index_zyx, dtype=np.float64).reshape(-1, 3)[:, ::-1]
    scaled = index_xyz * np.asarray(spacing, dtype=np.float64)[::-1]
    return np.asarray(origin, dtype=np.float64) + scaled @ np.asarray(direction, dtype=np.float64).reshape(3, 3).T


def _mean_probabilities(instance: np.ndarray, count: int, probability: np.ndarray, case_id: str) -> np.ndarray:
    probability = np.asarray(probability)
    if probability.shape != instance.shape:
        raise LiversegError(f"{case_id}: tumour probability map of shape {probability.shape} does not match the "
                            f"label map {instance.shape}; pass the tumour class's probabilities on the label's grid")
    inside = instance > 0
    values = probability[inside].astype(np.float64)
    finite = np.isfinite(values)
    low, high = -_PROBABILITY_SLACK, 1 + _PROBABILITY_SLACK
    if values.size and (not finite.all() or values.min() < low or values.max() > high):
        if finite.all():
            seen = f"values from {values.min():.3g} to {values.max():.3g}"
        else:
            seen = f"{values.size - int(finite.sum())} NaN or infinite values"
        raise LiversegError(f"{case_id}: tumour probabilities must be finite and within [0, 1] (got {seen} in the "
                            "lesions); pass softmax probabilities, not logits")
    sums = np.bincount(instance[inside], weights=values, minlength=count + 1)
    counts = np.bincount(instance[inside], minlength=count + 1)
    return sums[1:] / np.maximum(counts[1:], 1)


def lesion_report(
    label: np.ndarray, geometry: Geometry | None = None, tumour_probability: np.ndarray | None = None,
    case_id: str = "case", *, spacing: Sequence[float] | None = None, origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), connectivity: int = 26,
) -> dict[str, Any]:
    """JSON-ready lesion report of one case's ``(z, y, x)`` label map (0, 1 liver, 2 tumour).

    Give the canonical ``geometry`` from :func:`~liverseg.io.images.read_image`, or ``spacing``
    ``(z, y, x)`` with the SimpleITK ``origin`` and ``direction`` of the array's image.
    ``tumour_probability`` is the tumour class's probability on the same grid; without it the
    probability and uncertainty fields are None. ``liver_volume_ml`` is the whole liver (labels 1
    and 2), ``liver_parenchyma_volume_ml`` label 1 only; ``tumour_burden`` is tumour / whole liver
    (:func:`liverseg.evaluation.metrics.tumor_burden`). Lesions are sorted largest first, with the
    ids :func:`lesion_instance_map` gives them; ``component_id`` is the lesion's raster-order id, the
    one :func:`liverseg.lesion_measures.lesion_table` and the evaluation's lesion matching use.
    """
    label = check_label(label, f"{case_id}: label map")
    if geometry is not None:
        if tuple(geometry.shape) != label.shape:
            raise LiversegError(f"{case_id}: label map of shape {label.shape} does not match "
                                f"its geometry {geometry.shape}")
        spacing, origin, direction = geometry.spacing, geometry.origin, geometry.direction
    if spacing is None:
        raise ValueError("lesion_report needs a geometry or a spacing")
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    instance, component_ids = _instances(label, connectivity)
    lesions = measure_components(instance, spacing) if instance.any() else []
    means = (_mean_probabilities(instance, len(lesions), tumour_probability, case_id)
             if tumour_probability is not None else None)
    worlds = voxel_to_world(np.array([r["centroid_voxel"] for r in lesions]).reshape(-1, 3), spacing, origin, direction)
    rows = []
    for k, (lesion, world) in enumerate(zip(lesions, worlds)):
        mean = None if means is None else float(means[k])
        rows.append({
            "id": lesion["id"],
            "component_id": int(component_ids[k]),
            "num_voxels": lesion["num_voxels"],
            "volume_ml": lesion["volume_ml"],
            "longest_axial_diameter_mm": lesion["longest_axial_diameter_mm"],
            "centroid_world_mm": [float(v) for v in world],
            "centroid_voxel": lesion["centroid_voxel"],
            "bbox": lesion["bbox"],
            "extent_mm": lesion["extent_mm"],
            "mean_tumour_probability": mean,
            "uncertainty": None if mean is None else 1.0 - mean,
        })
    parenchyma = int(np.count_nonzero(label == LIVER))
    tumour = int(np.count_nonzero(label == TUMOUR))
    return {
        "case_id": case_id,
        "coordinates": COORDINATES,
        "spacing_mm": [float(s) for s in spacing],
        "connectivity": connectivity,
        "num_lesions": len(rows),
        "liver_volume_ml": (parenchyma + tumour) * voxel_ml,
        "liver_parenchyma_volume_ml": parenchyma * voxel_ml,
        "tumour_volume_ml": tumour * voxel_ml,
        "tumour_burden": tumor_burden(label),
        "lesions": rows,
    }


def write_case_report(report: dict[str, Any], folder: str | Path, instance_map: np.ndarray | None = None,
                      geometry: Geometry | None = None) -> list[Path]:
    """Write ``<case>.lesions.json`` and, given an instance map and its geometry, ``<case>_lesions.nii.gz``.

    The lesion map is written in the input image's original orientation and header, so it opens
    on top of the scan. Files are written atomically; returns the paths written.
    """
    folder = Path(folder)
    case = report["case_id"]
    written = [folder / f"{case}.lesions.json"]
    if instance_map is not None:
        if geometry is None:
            raise ValueError("write_case_report needs the geometry to write an instance map")
        if int(np.max(instance_map, initial=0)) != report["num_lesions"]:
            raise ValueError(f"instance map numbers {int(np.max(instance_map, initial=0))} lesions, "
                             f"the report {report['num_lesions']}")
    try:
        write_json(written[0], report)
        if instance_map is not None:
            written.append(folder / f"{case}_lesions.nii.gz")
            write_image(np.asarray(instance_map, dtype=np.uint16), geometry, written[-1])
    except OSError as error:
        raise LiversegError(f"{folder}: cannot write the lesion report ({error.strerror or error}); "
                            "check that the output folder is writable") from None
    return written


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    try:
        with atomic_output(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(columns)
                writer.writerows([[_cell(v) for v in row] for row in rows])
    except OSError as error:
        raise LiversegError(f"{path}: cannot write ({error.strerror or error}); "
                            "check that the folder is writable") from None


def write_run_table(reports: Iterable[dict[str, Any]], path: str | Path, cases_path: str | Path | None = None) -> None:
    """Write the run's lesion table: one CSV row per lesion of every case (``lesions.csv``).

    With ``cases_path`` also one row per case (``cases.csv``): lesion count, volumes and tumour
    burden, so that cases without lesions appear too. Columns: :data:`LESION_COLUMNS` and
    :data:`CASE_COLUMNS`; a missing probability is an empty cell.
    """
    reports = list(reports)
    lesion_rows = []
    for report in reports:
        for lesion in report["lesions"]:
            (z0, z1), (y0, y1), (x0, x1) = lesion["bbox"]
            lesion_rows.append([report["case_id"], lesion["id"], lesion["component_id"], lesion["num_voxels"],
                                lesion["volume_ml"],
                                lesion["longest_axial_diameter_mm"], *lesion["centroid_world_mm"],
                                lesion["mean_tumour_probability"], lesion["uncertainty"],
                                *lesion["centroid_voxel"], z0, z1, y0, y1, x0, x1])
    _write_csv(Path(path), LESION_COLUMNS, lesion_rows)
    if cases_path is not None:
        case_rows = [[r["case_id"], r["num_lesions"], r["liver_volume_ml"], r["liver_parenchyma_volume_ml"],
                      r["tumour_volume_ml"], r["tumour_burden"], r["lesions"][0]["volume_ml"] if r["lesions"] else 0.0]
                     for r in reports]
        _write_csv(Path(cases_path), CASE_COLUMNS, case_rows)
