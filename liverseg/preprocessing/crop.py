"""Crop a case to the box holding its non-zero voxels, and paste results back into the full grid.

Cropping removes the empty border some scanners and converters leave around the data (nnU-Net's
"crop to non-zero"). MRI background is noise rather than zero, so for MRI the box is usually the
whole volume; the body mask used for normalisation is a separate thing
(:func:`liverseg.preprocessing.normalize.body_mask`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from liverseg.lesion_measures import bounding_box

BBox = tuple[slice, slice, slice]


def nonzero_bbox(image: np.ndarray) -> BBox:
    """Box (one slice per spatial axis) around voxels where any channel is non-zero.

    ``image`` is ``(c, z, y, x)`` or ``(z, y, x)``. An all-zero image gives the whole volume, so a
    case is never cropped to nothing. NaN counts as non-zero (it is not empty, it is broken).
    """
    if image.ndim not in (3, 4):
        raise ValueError(f"expected a (c, z, y, x) or (z, y, x) array, got shape {image.shape}")
    mask = image != 0
    if image.ndim == 4:
        mask = mask.any(axis=0)
    box = bounding_box(mask)
    if box is None:
        return tuple(slice(0, n) for n in mask.shape)  # type: ignore[return-value]
    return box  # type: ignore[return-value]


def crop_to_bbox(array: np.ndarray, bbox: BBox) -> np.ndarray:
    """The part of ``array`` inside ``bbox`` (a view); leading axes (channels) are kept whole."""
    _check_bbox(bbox, array.shape[-3:])
    return array[(Ellipsis, *bbox)]


def paste_into(
    original_shape: Sequence[int],
    bbox: BBox,
    cropped: np.ndarray,
    fill: float | Sequence[float] = 0,
) -> np.ndarray:
    """Inverse of :func:`crop_to_bbox`: a full-size array with ``cropped`` put back at ``bbox``.

    ``original_shape`` is the spatial ``(z, y, x)`` shape; ``cropped`` may have leading axes
    (e.g. ``(k, z, y, x)`` probabilities), which are kept. Voxels outside the box get ``fill``: a
    number, or one number per leading channel (e.g. ``[1, 0, 0]`` so the border of a softmax map
    back-projects as certain background).
    """
    original_shape = tuple(int(n) for n in original_shape)
    if len(original_shape) != 3:
        raise ValueError(f"original_shape must be (z, y, x), got {original_shape}")
    _check_bbox(bbox, original_shape)
    extent = tuple(s.stop - s.start for s in bbox)
    if cropped.ndim < 3 or tuple(cropped.shape[-3:]) != extent:
        raise ValueError(f"cropped array of shape {cropped.shape} does not fit the box of extent {extent}")
    leading = cropped.shape[:-3]
    out = np.empty(leading + original_shape, dtype=cropped.dtype)
    fill_values = np.asarray(fill, dtype=cropped.dtype)
    if fill_values.ndim == 0:
        out[...] = fill_values
    else:
        if len(leading) != 1 or fill_values.shape != (leading[0],):
            raise ValueError(f"fill has {fill_values.size} values but the array has leading axes {leading}")
        out[...] = fill_values.reshape((-1, 1, 1, 1))
    out[(Ellipsis, *bbox)] = cropped
    return out


def bbox_to_list(bbox: BBox) -> list[list[int]]:
    """JSON form of a box: ``[[start, stop], ...]`` per axis (as in fingerprint.json)."""
    return [[int(s.start), int(s.stop)] for s in bbox]


def bbox_from_list(values: Sequence[Sequence[int]]) -> BBox:
    """Inverse of :func:`bbox_to_list`."""
    if len(values) != 3 or any(len(v) != 2 for v in values):
        raise ValueError(f"a box is three [start, stop] pairs, got {values!r}")
    return tuple(slice(int(a), int(b)) for a, b in values)  # type: ignore[return-value]


def _check_bbox(bbox: BBox, shape: Sequence[int]) -> None:
    if len(bbox) != 3:
        raise ValueError(f"a box has three slices (z, y, x), got {len(bbox)}")
    for s, n in zip(bbox, shape):
        if s.step not in (None, 1) or s.start is None or s.stop is None or not 0 <= s.start < s.stop <= n:
            raise ValueError(f"box {bbox} does not fit inside shape {tuple(shape)}")
