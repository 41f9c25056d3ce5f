"""Resample images, labels and probability maps to a new grid, in-plane first and then along z.

Every resampling here is two passes with torch's interpolation (``align_corners=False``, so a
voxel is a box centred on its index and resampling to a shape and back is geometrically
consistent): first in-plane, each slice on its own, then along z. With ``separate_z`` the z pass
has its own order (nearest or linear), chosen once per plan and applied to every case alike:
nnU-Net switches per case at a spacing ratio of 3, which resamples cases of one dataset
differently when their ratios straddle it. Without ``separate_z`` the z pass uses the in-plane
order, which makes the two passes together an ordinary 3D (separable) interpolation.

Orders: 0 nearest, 1 linear, 3 cubic. Linear and cubic use torch's antialiased kernels (as in
Pillow): shrinking an axis averages over the voxels it merges instead of skipping some, and the
cubic kernel is Keys' a = -0.5, third-order accurate on smooth intensities (torch's plain bicubic,
a = -0.75, is first-order: on a smooth test signal its error is 100 times larger). The z pass of ``separate_z`` with order 0 or 1 is the plain
kernel: a new slice is exactly its nearest slice or the linear blend of its two neighbours. Passes
that leave their axes unchanged are skipped, so an unchanged z spacing never blurs across slices.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from liverseg.errors import LiversegError

ORDERS = (0, 1, 3)
LABEL_MODES = ("onehot_linear", "nearest")
_MODE = {0: "nearest-exact", 1: "bilinear", 3: "bicubic"}


def target_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, int, int]:
    """Grid shape covering the same extent at ``target_spacing`` (rounded, at least 1 per axis)."""
    if len(shape) != 3 or len(spacing) != 3 or len(target_spacing) != 3:
        raise ValueError(f"shape, spacing and target spacing must be (z, y, x); got {shape}, {spacing}, {target_spacing}")
    if min(spacing) <= 0 or min(target_spacing) <= 0:
        raise ValueError(f"spacings must be positive; got {spacing} and {target_spacing}")
    # Round half up, so the result does not depend on the parity of the voxel count.
    return tuple(max(1, math.floor(n * s / t + 0.5)) for n, s, t in zip(shape, spacing, target_spacing))  # type: ignore[return-value]


def resample_image(
    image: np.ndarray,
    new_shape: Sequence[int],
    order_inplane: int = 3,
    order_z: int = 0,
    separate_z: bool = True,
) -> np.ndarray:
    """Resample a ``(c, z, y, x)`` image to spatial shape ``new_shape``; returns float32.

    Intensities are interpolated as they are (cubic interpolation may overshoot the input range
    slightly at edges, as in nnU-Net). ``order_z`` applies only with ``separate_z``.
    """
    if image.ndim != 4:
        raise ValueError(f"expected a (c, z, y, x) image, got shape {image.shape}")
    _check_order("order_inplane", order_inplane)
    _check_order("order_z", order_z)
    if tuple(image.shape[1:]) == _shape(new_shape):
        return image.astype(np.float32, copy=True)
    data = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    with torch.inference_mode():
        out = _resample(data, _shape(new_shape), order_inplane, *_z_policy(order_inplane, order_z, separate_z))
    return out.numpy()


def resample_probabilities(
    probabilities: np.ndarray,
    new_shape: Sequence[int],
    order_inplane: int = 1,
    order_z: int = 0,
    separate_z: bool = True,
) -> np.ndarray:
    """Resample ``(k, z, y, x)`` probability maps (e.g. softmax output) to ``new_shape``; float32.

    Used to bring a prediction back to the original grid before the argmax. Values are clipped to
    [0, 1], which only matters for cubic interpolation (it overshoots near sharp edges).
    """
    out = resample_image(probabilities, new_shape, order_inplane, order_z, separate_z)
    return np.clip(out, 0.0, 1.0, out=out)


def resample_label(
    label: np.ndarray,
    new_shape: Sequence[int],
    mode: str = "onehot_linear",
    order_z: int = 0,
    separate_z: bool = True,
) -> np.ndarray:
    """Resample a ``(z, y, x)`` label map to ``new_shape``; keeps the dtype and never mixes values.

    ``"onehot_linear"`` interpolates each label's indicator linearly in-plane (and along z with
    ``order_z`` 0 or 1 when ``separate_z``, linearly otherwise) and gives each new voxel the label
    with the largest interpolated fraction: smooth boundaries without inventing values. Ties go
    to the more frequent label. ``"nearest"`` copies the nearest voxel's label.
    """
    if label.ndim != 3:
        raise ValueError(f"expected a (z, y, x) label map, got shape {label.shape}")
    if mode not in LABEL_MODES:
        raise LiversegError(f"unknown label resampling mode '{mode}'; use one of {', '.join(LABEL_MODES)}")
    if order_z not in (0, 1):
        raise LiversegError(f"order_z for labels must be 0 (nearest) or 1 (linear), got {order_z}")
    new_shape = _shape(new_shape)
    if mode == "nearest":
        # Label values as float32 are exact up to 2**24, far beyond any label map.
        return resample_image(label[None], new_shape, 0, 0, True)[0].astype(label.dtype)

    z_order, z_antialias = _z_policy(1, order_z, separate_z)
    if tuple(label.shape) == new_shape:
        return label.copy()
    values, counts = _label_counts(label)
    if len(values) == 1:
        return np.full(new_shape, values[0], dtype=label.dtype)

    # The most frequent label (usually background) is never resampled: its fraction is one minus
    # the others' sum, because linear weights are non-negative and sum to one.
    by_frequency = values[np.argsort(-counts, kind="stable")]
    out = np.full(new_shape, by_frequency[0], dtype=label.dtype)
    best = torch.zeros(new_shape, dtype=torch.float32)
    total = torch.zeros(new_shape, dtype=torch.float32)
    with torch.inference_mode():
        for value in by_frequency[1:]:
            fraction, slab = _label_fraction(label == value, new_shape, z_order, z_antialias)
            wins = fraction > best[slab]
            best[slab] = torch.where(wins, fraction, best[slab])
            out[slab][wins.numpy()] = value
            total[slab] += fraction
        out[((1.0 - total) >= best).numpy()] = by_frequency[0]
    return out


def _label_fraction(
    indicator: np.ndarray, new_shape: tuple[int, int, int], order_z: int, z_antialias: bool
) -> tuple[torch.Tensor, slice]:
    """Linearly resampled indicator of one label and the output slices outside which it is zero.

    The in-plane pass runs only on the slices holding the label (a tumour spans a few): empty
    slices stay zero in-plane, so this is exact.
    """
    z = indicator.shape[0]
    present = np.flatnonzero(indicator.any(axis=(1, 2)))
    z0, z1 = int(present[0]), int(present[-1]) + 1
    _, ny, nx = new_shape
    slab = torch.from_numpy(indicator[z0:z1].astype(np.float32))[None]
    inplane = _resample(slab, (z1 - z0, ny, nx), 1, order_z, z_antialias)
    if new_shape[0] == z:
        return inplane[0], slice(z0, z1)
    full = torch.zeros((1, z, ny, nx), dtype=torch.float32)
    full[:, z0:z1] = inplane
    return _resample(full, new_shape, 1, order_z, z_antialias)[0], slice(0, new_shape[0])


def _z_policy(order_inplane: int, order_z: int, separate_z: bool) -> tuple[int, bool]:
    """Order of the z pass and whether it uses the antialiased kernel."""
    if separate_z:
        return order_z, order_z == 3
    return order_inplane, True


def _resample(
    data: torch.Tensor, new_shape: tuple[int, int, int], order_inplane: int, order_z: int, z_antialias: bool
) -> torch.Tensor:
    """Two-pass resampling of a float32 ``(c, z, y, x)`` tensor; passes with nothing to do are skipped."""
    c, z, y, x = data.shape
    nz, ny, nx = new_shape
    if (ny, nx) != (y, x):
        # Slices of all channels form one batch of single-channel 2D images.
        slices = data.reshape(c * z, 1, y, x)
        data = _interpolate(slices, (ny, nx), order_inplane, antialias=True).reshape(c, z, ny, nx)
    if nz != z:
        # Along z, view (c, z, y, x) as 2D images (z, y * x): the second axis keeps its size, which
        # torch's kernels treat as an exact identity, so this interpolates along z alone.
        columns = data.reshape(1, c, z, ny * nx)
        data = _interpolate(columns, (nz, ny * nx), order_z, z_antialias).reshape(c, nz, ny, nx)
    return data


def _interpolate(data: torch.Tensor, size: tuple[int, int], order: int, antialias: bool) -> torch.Tensor:
    mode = _MODE[order]
    if order == 0:
        return F.interpolate(data, size=size, mode=mode)
    return F.interpolate(data, size=size, mode=mode, align_corners=False, antialias=antialias)


def _label_counts(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label values present and their voxel counts (bincount when values are small non-negatives)."""
    flat = label.ravel()
    low, high = flat.min(), flat.max()
    if np.issubdtype(label.dtype, np.integer) and low >= 0 and high < 65536:
        counts = np.bincount(flat, minlength=int(high) + 1)
        values = np.flatnonzero(counts)
        return values.astype(label.dtype), counts[values]
    values, counts = np.unique(flat, return_counts=True)
    return values, counts


def _shape(new_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in new_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"new shape must be three positive sizes (z, y, x), got {tuple(new_shape)}")
    return shape  # type: ignore[return-value]


def _check_order(name: str, order: int) -> None:
    if order not in ORDERS:
        raise LiversegError(f"{name} must be 0 (nearest), 1 (linear) or 3 (cubic), got {order!r}")
