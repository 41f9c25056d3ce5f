"""Where the sliding windows go and how much each voxel of a window counts.

Conventions follow nnU-Net, so its step settings mean the same here:

- along each axis the windows start at evenly spread offsets, the first at 0 and the last at
  ``size - patch``, with ``ceil((size - patch) / (patch * step_fraction)) + 1`` windows, so that
  neighbours overlap by at least ``1 - step_fraction`` of the patch (and never two windows at the
  same offset);
- an image smaller than the patch along an axis is zero-padded (centred) to the patch first;
- predictions are weighted by a Gaussian centred in the patch (``sigma = patch * sigma_scale``),
  because a network sees least context at the border of its window and is least reliable there.

Unlike nnU-Net the Gaussian is built as a product of one-dimensional Gaussians (each clamped to a
small floor), so the summed weight of all windows at a voxel is also a product of per-axis sums
(:func:`axis_weight_sums`): the sliding window divides by three short vectors instead of keeping
a full-volume weight map.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from liverseg.errors import LiversegError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

DEFAULT_SIGMA_SCALE = 1.0 / 8
# Smallest weight a window voxel may have: the Gaussian's far corners would otherwise underflow
# to 0 in reduced precision, leaving image corners that only one window covers without a weight.
DEFAULT_MIN_WEIGHT = 1e-6


def check_step_fraction(step_fraction: float) -> float:
    """Return ``step_fraction`` as a float, or raise a LiversegError if it is not in (0, 1]."""
    step = float(step_fraction)
    if not 0 < step <= 1:
        raise LiversegError(f"step fraction {step_fraction} is outside (0, 1]: windows would leave gaps; use e.g. "
                            "0.5 (nnU-Net's default, half a patch overlap) or larger for fewer, faster windows")
    return step


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_fraction: float = 0.5) -> list[list[int]]:
    """Start offsets of the windows along each axis, covering ``image_size`` exactly.

    The image must be at least as large as the patch on every axis (see :func:`pad_to_patch`).
    """
    step = check_step_fraction(step_fraction)
    if len(image_size) != len(patch_size):
        raise ValueError(f"image size {list(image_size)} and patch size {list(patch_size)} differ in length")
    steps = []
    for size, patch in zip(image_size, patch_size):
        if patch < 1 or size < patch:
            raise ValueError(f"image size {list(image_size)} is smaller than patch size {list(patch_size)}; pad first")
        # No more windows than distinct offsets (only matters for patches under 1/step voxels).
        count = min(math.ceil((size - patch) / (patch * step)) + 1, size - patch + 1)
        steps.append([int(v) for v in np.round(np.linspace(0, size - patch, count))])
    return steps


def window_slices(image_size: Sequence[int], patch_size: Sequence[int],
                  step_fraction: float = 0.5) -> Iterator[tuple[slice, ...]]:
    """The spatial slices of every window, the last axis varying fastest."""
    steps = compute_steps(image_size, patch_size, step_fraction)
    for starts in itertools.product(*steps):
        yield tuple(slice(s, s + p) for s, p in zip(starts, patch_size))


def pad_to_patch(image: ArrayT, patch_size: Sequence[int]) -> tuple[ArrayT, tuple[slice, ...]]:
    """Zero-pad the trailing spatial axes of ``image`` up to ``patch_size`` where they are smaller.

    ``image`` is a numpy array or torch tensor with leading axes (e.g. channels) followed by
    ``len(patch_size)`` spatial axes. Padding is centred. Returns the padded image (``image``
    itself if nothing was needed) and the slices that cut the original back out of it (or out of
    any prediction of the padded image with the same trailing axes).
    """
    if image.ndim < len(patch_size):
        raise ValueError(f"image of shape {tuple(image.shape)} has fewer axes than patch size {list(patch_size)}")
    spatial = image.shape[image.ndim - len(patch_size):]
    before = [max(p - s, 0) // 2 for s, p in zip(spatial, patch_size)]
    after = [max(p - s, 0) - b for s, p, b in zip(spatial, patch_size, before)]
    leading = (slice(None),) * (image.ndim - len(patch_size))
    undo = leading + tuple(slice(b, b + s) for b, s in zip(before, spatial))
    if not any(before) and not any(after):
        return image, undo
    if isinstance(image, torch.Tensor):
        # F.pad takes (before, after) pairs starting from the last axis.
        pairs = [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)]
        return F.pad(image, pairs), undo
    widths = [(0, 0)] * len(leading) + list(zip(before, after))
    return np.pad(image, widths), undo


def gaussian_weights_1d(size: int, sigma_scale: float = DEFAULT_SIGMA_SCALE,
                        floor: float = DEFAULT_MIN_WEIGHT) -> np.ndarray:
    """A Gaussian over ``size`` voxels centred in the middle, maximum 1, values at least ``floor``."""
    if size < 1 or sigma_scale <= 0 or not 0 < floor <= 1:
        raise ValueError(f"need size >= 1, sigma_scale > 0 and floor in (0, 1], got {size}, {sigma_scale}, {floor}")
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    values = np.exp(-(offsets ** 2) / (2 * (size * sigma_scale) ** 2))
    return np.maximum(values / values.max(), floor)


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = DEFAULT_SIGMA_SCALE,
                            dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                            min_weight: float = DEFAULT_MIN_WEIGHT) -> torch.Tensor:
    """Weight of each voxel of a window's prediction: a Gaussian centred in the patch.

    ``sigma = patch_size * sigma_scale`` per axis. The maximum is 1 (at the centre), the map is
    mirror-symmetric along every axis (so test-time mirroring does not shift it), and no voxel
    weighs less than ``min_weight``: each per-axis factor is clamped to ``min_weight ** (1 / ndim)``.
    """
    floor = min_weight ** (1.0 / len(patch_size))
    weights = torch.ones((), dtype=torch.float64)
    for size in patch_size:
        axis = torch.from_numpy(gaussian_weights_1d(int(size), sigma_scale, floor))
        weights = weights[..., None] * axis
    return weights.to(dtype=dtype, device=device)


def axis_weight_sums(image_size: Sequence[int], patch_size: Sequence[int], steps: Sequence[Sequence[int]],
                     sigma_scale: float = DEFAULT_SIGMA_SCALE,
                     min_weight: float = DEFAULT_MIN_WEIGHT) -> list[np.ndarray]:
    """Per axis, the sum over window offsets of the one-dimensional Gaussian factors (float64).

    Because the importance map and the window grid are both products over axes, the total
    weight all windows give voxel ``(z, y, x)`` is ``sums[0][z] * sums[1][y] * sums[2][x]``.
    """
    floor = min_weight ** (1.0 / len(patch_size))
    sums = []
    for size, patch, starts in zip(image_size, patch_size, steps):
        factor = gaussian_weights_1d(int(patch), sigma_scale, floor)
        total = np.zeros(int(size), dtype=np.float64)
        for start in starts:
            total[start:start + patch] += factor
        sums.append(total)
    return sums
