"""Map a network output at the target spacing back onto the case's original grid, and write it.

The inverse of :mod:`liverseg.preprocessing.case`: resample to the cropped box's shape, then
paste into the full canonical volume; :func:`write_prediction` puts the canonical array back into
the file's stored orientation and header. Everything needed comes from the case's properties
(``<case>.json``), so prediction does not need the plan to undo the preprocessing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from liverseg.errors import LiversegError
from liverseg.io.images import Geometry, image_suffix, write_image
from liverseg.preprocessing.crop import bbox_from_list, paste_into
from liverseg.preprocessing.resample import resample_label, resample_probabilities

_PROBABILITY_ORDER_INPLANE = 1


def original_geometry(properties: Mapping[str, Any]) -> Geometry:
    """The geometry of the case's original image (canonical grid plus the header on disk)."""
    return Geometry.from_dict(properties["geometry"])


def probabilities_to_original(probabilities: np.ndarray, properties: Mapping[str, Any]) -> np.ndarray:
    """Class probabilities ``(k, z, y, x)`` at the target spacing → ``(k, Z, Y, X)`` on the canonical original grid.

    In-plane linear interpolation; along z the order the labels were resampled with (the spec's
    ``order_z_label``) when the spec resamples z separately, so a prediction goes back the way its
    training labels came. Outside the crop box the case was empty, so there the probabilities
    say certain background: channel 0 is 1 and the others 0 (a single channel, a sigmoid output,
    gets 0). Returns float32.
    """
    probabilities = np.asarray(probabilities)
    spatial = probabilities.shape[1:] if probabilities.ndim == 4 else None
    _check_shape(spatial, properties, "probabilities (k, z, y, x)", probabilities.shape)
    resampling = properties["resampling"]
    cropped = resample_probabilities(
        probabilities.astype(np.float32, copy=False),
        properties["shape_after_crop"],
        _PROBABILITY_ORDER_INPLANE,
        int(resampling["order_z_label"]),
        bool(resampling["separate_z"]),
    )
    k = probabilities.shape[0]
    fill = [1.0] + [0.0] * (k - 1) if k > 1 else 0.0
    return paste_into(properties["shape_original"], bbox_from_list(properties["crop_bbox"]), cropped, fill=fill)


def labels_to_original(labels: np.ndarray, properties: Mapping[str, Any]) -> np.ndarray:
    """A label map ``(z, y, x)`` at the target spacing → ``(Z, Y, X)`` on the canonical original grid.

    Resampled with the spec's label mode (values are never mixed); 0 outside the crop box. Prefer
    :func:`probabilities_to_original` followed by an argmax when probabilities are at hand: it keeps
    sub-voxel information that a label map has already thrown away.
    """
    labels = np.asarray(labels)
    _check_shape(labels.shape if labels.ndim == 3 else None, properties, "labels (z, y, x)", labels.shape)
    resampling = properties["resampling"]
    cropped = resample_label(
        labels, properties["shape_after_crop"], resampling["label_mode"], int(resampling["order_z_label"]), bool(resampling["separate_z"])
    )
    return paste_into(properties["shape_original"], bbox_from_list(properties["crop_bbox"]), cropped, fill=0)


def write_prediction(label: np.ndarray, geometry: Geometry | Mapping[str, Any], path: str | Path) -> None:
    """Write a canonical ``(Z, Y, X)`` label map with the original file's orientation and header, atomically.

    Stored as uint8 when the values fit (0-255), so a segmentation file stays small.
    """
    if not isinstance(geometry, Geometry):
        geometry = Geometry.from_dict(dict(geometry))
    if not image_suffix(path):
        raise LiversegError(f"{path}: unsupported file ending for a prediction; use .nii.gz, .nii, .nrrd, .mha or .mhd")
    if tuple(label.shape) != tuple(geometry.shape):
        raise ValueError(f"label of shape {label.shape} does not match the original grid {geometry.shape}; map it back first")
    if label.size and np.issubdtype(label.dtype, np.integer) and label.min() >= 0 and label.max() <= 255:
        label = label.astype(np.uint8, copy=False)
    write_image(label, geometry, path)


def _check_shape(spatial: tuple[int, ...] | None, properties: Mapping[str, Any], what: str, shape: tuple[int, ...]) -> None:
    expected = tuple(properties["shape_after_resampling"])
    if spatial is None or tuple(spatial) != expected:
        raise ValueError(f"{what} of shape {shape} does not match this case's preprocessed shape {expected}")
