"""Preprocess one case: crop to the non-zero box, normalise, resample, and record how to undo it.

Steps, in this order:

1. **read** the channels and the label in the canonical ``(z, y, x)`` layout
   (:mod:`liverseg.io.images`); the label must share the image's grid;
2. **crop** to the box holding every non-zero voxel of the image channels *and* of the label
   (a label voxel outside the image's non-zero box is never thrown away);
3. **normalise** each channel on its acquired voxels, *before* resampling, as nnU-Net does. The
   statistics (the MRI body mask, its percentiles, mean and std) are then measured on what the
   scanner recorded rather than on interpolated voxels, clipping happens before the cubic
   kernel could spread an extreme voxel into ringing, and a case's normalisation does not
   depend on the target spacing, so specs that share a scheme share one normalisation. The body
   mask (:func:`liverseg.preprocessing.normalize.body_mask`) only decides where the statistics are
   measured: every voxel goes through the same mapping, and nothing outside the body is zeroed;
4. **resample** the image (in-plane cubic, along z by the spec's one z policy) and the label
   (one-hot linear or nearest, never mixing values) to the spec's target spacing;
5. **locations** of each sampling class and of each lesion for the patch sampler.

The label is stored as its own ``(z, y, x)`` uint8 array (``<case>_seg.npy``), not as an extra
channel of the image as nnU-Net does: the trainer reads it with its own dtype (1 byte per voxel,
not 4) and memory-maps image and label independently. No voxel is marked ``-1`` outside the
crop, because nothing is cut out inside the box. The keys of ``<case>.json`` are listed in
:mod:`liverseg.preprocessing.run`.
"""
from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.io.atomic import atomic_output, read_json, write_json
from liverseg.io.images import Geometry, geometry_mismatch, read_channels, read_image
from liverseg.preprocessing.crop import BBox, bbox_to_list, crop_to_bbox, nonzero_bbox
from liverseg.preprocessing.locations import compute_locations, save_locations
from liverseg.preprocessing.normalize import normalize
from liverseg.preprocessing.resample import resample_image, resample_label, target_shape
from liverseg.preprocessing.spec import PreprocessingSpec

log = logging.getLogger(__name__)

PROPERTIES_VERSION = 1
SEG_SUFFIX = "_seg.npy"
LOCATIONS_SUFFIX = "_locations.npz"
STEPS = ("read", "crop", "normalize", "resample", "locations", "save")


@dataclass
class PreprocessedCase:
    """One case at a spec's target spacing: ``data`` float32 ``(c, z, y, x)``, ``seg`` uint8
    ``(z, y, x)`` (None without a label) and the JSON-ready ``properties`` that undo it."""

    data: np.ndarray
    seg: np.ndarray | None
    properties: dict[str, Any]


@dataclass
class CaseTimings:
    """Seconds spent in each step (:data:`STEPS`) of preprocessing one case."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))

    def add(self, step: str, start: float) -> float:
        """Add the time since ``start`` to ``step``; return the current time for the next step."""
        now = time.perf_counter()
        self.seconds[step] += now - start
        return now


def case_files(folder: Path, case: str) -> dict[str, Path]:
    """The files of one preprocessed case in ``folder``: data, seg, locations and (last) json."""
    return {
        "data": folder / f"{case}.npy",
        "seg": folder / f"{case}{SEG_SUFFIX}",
        "locations": folder / f"{case}{LOCATIONS_SUFFIX}",
        "json": folder / f"{case}.json",
    }


def read_case(image_files: Sequence[Path], label_file: Path | None) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """Canonical float32 ``(c, z, y, x)`` image, uint8 ``(z, y, x)`` label (or None) and the image geometry.

    The label must lie on the image's grid and hold whole numbers from 0 to 255.
    """
    image, geometry = read_channels(image_files)
    if label_file is None:
        return image, None, geometry
    label, label_geometry = read_image(label_file)
    problem = geometry_mismatch(geometry, label_geometry)
    if problem:
        raise LiversegError(f"{label_file}: label {problem} compared with image {image_files[0]}; run liverseg_fingerprint --verify-only")
    return image, _as_uint8_label(label, label_file), geometry


def crop_case(image: np.ndarray, label: np.ndarray | None) -> BBox:
    """Box around every non-zero voxel of the image channels and of the label (whole volume if none)."""
    box = nonzero_bbox(image)
    if label is None or not label.any():
        return box
    label_box = nonzero_bbox(label)
    return tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box, label_box))  # type: ignore[return-value]


def preprocess_arrays(
    image: np.ndarray,
    geometry: Geometry,
    spec: PreprocessingSpec,
    label: np.ndarray | None = None,
    timings: CaseTimings | None = None,
) -> PreprocessedCase:
    """Crop, normalise and resample one case held in memory (also what prediction runs on a new image).

    ``image`` is canonical ``(c, z, y, x)``, ``label`` canonical ``(z, y, x)``, both on ``geometry``'s
    grid. The properties hold everything :mod:`liverseg.preprocessing.inverse` needs.
    """
    return next(iter(_preprocess_specs(image, geometry, [spec], label, timings or CaseTimings())))


def preprocess_case(
    image_files: Sequence[Path],
    label_file: Path | None,
    specs: Sequence[PreprocessingSpec],
    folders: Sequence[Path],
    case: str,
    extra_properties: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], CaseTimings]:
    """Preprocess one case for several specs (read once) and save it into one folder per spec.

    Writes ``<case>.npy``, ``<case>_seg.npy`` and ``<case>_locations.npz`` (the last two only with
    a label) and, last, ``<case>.json`` (its properties merged with ``extra_properties[i]``), each
    atomically; an existing json is deleted first, so a case is complete exactly when its json
    exists. Returns the properties per spec and the time spent per step.
    """
    if len(specs) != len(folders) or (extra_properties is not None and len(extra_properties) != len(specs)):
        raise ValueError("preprocess_case needs one folder (and one extra_properties entry, if any) per spec")
    for folder in folders:
        case_files(Path(folder), case)["json"].unlink(missing_ok=True)
    timings = CaseTimings()
    start = time.perf_counter()
    image, label, geometry = read_case(image_files, label_file)
    timings.add("read", start)
    results = []
    for i, result in enumerate(_preprocess_specs(image, geometry, specs, label, timings)):
        spec, folder = specs[i], Path(folders[i])
        start = time.perf_counter()
        seed = zlib.crc32(case.encode())  # stable per case, so reruns draw the same locations
        locations = compute_locations(result.seg, spec.sampling_classes, spec.lesion_label, seed=seed) if result.seg is not None else None
        start = timings.add("locations", start)
        properties = {"case": case, **result.properties}
        if locations is not None:
            properties["num_lesions"] = len(locations.lesions)
        properties.update(extra_properties[i] if extra_properties is not None else {})
        files = case_files(folder, case)
        _save_npy(files["data"], result.data)
        if result.seg is not None:
            _save_npy(files["seg"], result.seg)
            save_locations(files["locations"], locations)
        else:  # no label: leave no label of an earlier run beside the new image
            files["seg"].unlink(missing_ok=True)
            files["locations"].unlink(missing_ok=True)
        write_json(files["json"], properties)
        timings.add("save", start)
        results.append(properties)
    return results, timings


def load_preprocessed_case(
    folder: str | Path, case: str, mmap_mode: str | None = "r"
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Data ``(c, z, y, x)``, seg ``(z, y, x)`` (None if absent) and properties of a preprocessed case.

    With ``mmap_mode="r"`` (default) the arrays are memory-mapped: slicing a patch reads only it.
    """
    files = case_files(Path(folder), case)
    if not files["json"].is_file():
        raise LiversegError(
            f"{files['json']}: preprocessed case '{case}' not found or incomplete; run liverseg_plan to preprocess the dataset"
        )
    try:
        properties = read_json(files["json"])
        data = np.load(files["data"], mmap_mode=mmap_mode)
        seg = np.load(files["seg"], mmap_mode=mmap_mode) if files["seg"].is_file() else None
    except (OSError, ValueError) as e:
        raise LiversegError(
            f"{folder}: preprocessed case '{case}' cannot be read ({e}); delete its files and run liverseg_plan again"
        ) from None
    return data, seg, properties


def _preprocess_specs(
    image: np.ndarray, geometry: Geometry, specs: Sequence[PreprocessingSpec], label: np.ndarray | None, timings: CaseTimings
):
    """Yield a :class:`PreprocessedCase` per spec; normalisation is shared by specs that agree on it."""
    if image.ndim != 4 or tuple(image.shape[1:]) != tuple(geometry.shape):
        raise ValueError(f"image of shape {image.shape} does not match its geometry's shape {geometry.shape}")
    if label is not None and tuple(label.shape) != tuple(geometry.shape):
        raise ValueError(f"label of shape {label.shape} does not match its geometry's shape {geometry.shape}")
    start = time.perf_counter()
    bbox = crop_case(image, label)
    cropped = crop_to_bbox(image, bbox)
    cropped_label = crop_to_bbox(label, bbox) if label is not None else None
    start = timings.add("crop", start)
    normalized: dict[str, np.ndarray] = {}
    for spec in specs:
        key = json.dumps([spec.normalization, spec.intensity_statistics], sort_keys=True)
        if key not in normalized:
            normalized[key] = normalize(cropped, spec.normalization, spec.intensity_statistics or None)
        start = timings.add("normalize", start)
        new_shape = target_shape(cropped.shape[1:], geometry.spacing, spec.target_spacing)
        data = resample_image(normalized[key], new_shape, spec.order_inplane_image, spec.order_z_image, spec.separate_z)
        seg = None
        if cropped_label is not None:
            seg = resample_label(cropped_label, new_shape, spec.label_mode, spec.order_z_label, spec.separate_z)
        timings.add("resample", start)
        yield PreprocessedCase(data, seg, _properties(geometry, bbox, new_shape, spec, label, seg))
        start = time.perf_counter()  # the caller's time in between is not ours


def _properties(
    geometry: Geometry, bbox: BBox, new_shape: Sequence[int], spec: PreprocessingSpec, label: np.ndarray | None, seg: np.ndarray | None
) -> dict[str, Any]:
    crop_shape = [s.stop - s.start for s in bbox]
    properties: dict[str, Any] = {
        "version": PROPERTIES_VERSION,
        "geometry": {k: list(v) if isinstance(v, tuple) else v for k, v in geometry.to_dict().items()},
        "shape_original": list(geometry.shape),
        "spacing_original": list(geometry.spacing),
        "crop_bbox": bbox_to_list(bbox),
        "shape_after_crop": crop_shape,
        "shape_after_resampling": [int(n) for n in new_shape],
        "spacing_target": [float(s) for s in spec.target_spacing],
        # Shapes are rounded, so the grid's actual spacing differs slightly from the target.
        "spacing_after_resampling": [n * s / m for n, s, m in zip(crop_shape, geometry.spacing, new_shape)],
        "resampling": {
            "separate_z": spec.separate_z,
            "order_inplane_image": spec.order_inplane_image,
            "order_z_image": spec.order_z_image,
            "order_z_label": spec.order_z_label,
            "label_mode": spec.label_mode,
        },
    }
    if label is not None and seg is not None:
        properties["class_voxels_original"] = _counts(label)
        properties["class_voxels"] = _counts(seg)
    return properties


def _counts(label: np.ndarray) -> dict[str, int]:
    counts = np.bincount(label.ravel(), minlength=1)
    return {str(v): int(counts[v]) for v in np.flatnonzero(counts)}


def _as_uint8_label(label: np.ndarray, path: Path) -> np.ndarray:
    if label.dtype == np.uint8:
        return label
    low, high = (label.min(), label.max()) if label.size else (0, 0)
    if low < 0 or high > 255:
        raise LiversegError(
            f"{path}: label values range from {low} to {high}; liverseg needs whole numbers 0-255 (see dataset.json labels)"
        )
    as_uint8 = label.astype(np.uint8)
    if not np.issubdtype(label.dtype, np.integer) and not np.array_equal(as_uint8, label):
        raise LiversegError(f"{path}: label holds fractional values; labels must be whole numbers (run liverseg_fingerprint --verify-only)")
    return as_uint8


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Save an array as a plain (memory-mappable) ``.npy`` file, atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))
