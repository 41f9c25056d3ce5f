"""Predict a whole preprocessed image with a network trained on patches.

The image is covered by overlapping windows (:mod:`liverseg.inference.windows`); each window's
logits are weighted by a Gaussian and summed, the sum is divided by the total weight, and a
softmax gives the probabilities. As in nnU-Net v2 the *logits* are averaged (over mirrored
passes and over windows) and the softmax comes last: one softmax per voxel instead of one per
window and pass, and the averaging sees the network's raw confidence. Fold ensembling, in
contrast, averages the probabilities this function returns.

Accumulation is float32. float16 would halve the accumulator (3 classes x 39 M voxels: 0.24 GB
instead of 0.47 GB for a 150x512x512 volume), but that is 6-10% of the peak memory, which the
network sets (2.2 GiB bf16, 3.9 GiB fp32 for two 40x224x224 windows), and it costs precision:
measured on a small phantom with logits of +-100-200, float16 sums moved probabilities by up to
0.04 and changed the label of 1 voxel in 10,000; the final float32 probabilities would also need
a second copy.
"""
from __future__ import annotations

import itertools
import logging
import warnings
from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from liverseg.errors import LiversegError
from liverseg.inference.device import autocast_dtype, resolve_device
from liverseg.inference.windows import (DEFAULT_SIGMA_SCALE, axis_weight_sums, compute_steps, gaussian_importance_map,
                                        pad_to_patch)
from liverseg.networks.memory_format import in_preferred_format

log = logging.getLogger(__name__)


def mirror_combinations(mirror_axes: Sequence[int] | None, spatial_dims: int = 3) -> list[tuple[int, ...]]:
    """Every subset of ``mirror_axes`` (spatial axes, 0 = z), the empty one first: one pass each.

    In-plane mirroring ``(1, 2)`` gives 4 passes, all three axes 8, ``None`` or ``()`` one.
    """
    axes = tuple(mirror_axes or ())
    valid = all(isinstance(a, (int, np.integer)) and 0 <= a < spatial_dims for a in axes)
    if not valid or len(set(axes)) != len(axes):
        raise LiversegError(f"mirror axes {list(axes)} must be distinct spatial axes among "
                            f"{list(range(spatial_dims))} (0 = z, 1 = y, 2 = x)")
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(sorted(int(a) for a in axes), r)]


def predict_sliding_window(
    network: nn.Module,
    image: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    step_fraction: float = 0.5,
    mirror_axes: Sequence[int] | None = (1, 2),
    batch_windows: int = 2,
    compute_device: str | torch.device = "cpu",
    accumulate_device: str | torch.device | None = None,
    use_bf16: bool | str = "auto",
    progress: bool = False,
    sigma_scale: float = DEFAULT_SIGMA_SCALE,
) -> torch.Tensor:
    """Softmax probabilities ``(num_classes, z, y, x)`` (float32) of ``network`` over ``image``.

    ``image`` is a preprocessed ``(channels, z, y, x)`` float array; it is not modified. The
    network maps ``(batch, channels, *patch_size)`` to logits ``(batch, num_classes,
    *patch_size)`` (a list, as deep supervision returns, counts by its first element); it is
    moved to ``compute_device`` and run in eval mode, its previous mode restored afterwards.

    - ``step_fraction``: window spacing as a fraction of the patch (smaller = more overlap).
    - ``mirror_axes``: spatial axes to mirror for test-time augmentation, 0 = z; ``(1, 2)``
      mirrors in-plane only (4 passes), the right choice when z is much coarser; ``None`` = off.
    - ``batch_windows``: windows per forward pass.
    - ``accumulate_device``: where the full-size sums live (default: ``compute_device``); the CPU
      when a volume's probabilities do not fit next to the network on the GPU.
    - ``use_bf16``: see :func:`liverseg.inference.device.autocast_dtype`; ``False`` forces fp32.

    The result lives on ``accumulate_device``.
    """
    patch_size = _check_patch_size(patch_size)
    if int(batch_windows) != batch_windows or batch_windows < 1:
        raise LiversegError(f"batch_windows must be a positive integer, got {batch_windows}")
    passes = mirror_combinations(mirror_axes, len(patch_size))
    compute = resolve_device(compute_device)
    accumulate = compute if accumulate_device is None else resolve_device(accumulate_device)
    precision = autocast_dtype(compute, use_bf16)
    data = _as_image_tensor(image, len(patch_size), network)

    padded, undo = pad_to_patch(data, patch_size)
    spatial = tuple(padded.shape[1:])
    steps = compute_steps(spatial, patch_size, step_fraction)
    windows = [tuple(slice(s, s + p) for s, p in zip(starts, patch_size)) for starts in itertools.product(*steps)]
    log.debug("sliding window: image %s (padded %s), patch %s, %d windows x %d passes, batch %d, %s on %s, "
              "accumulating on %s", tuple(data.shape), spatial, patch_size, len(windows), len(passes),
              batch_windows, precision or torch.float32, compute, accumulate)

    gaussian = gaussian_importance_map(patch_size, sigma_scale, torch.float32, accumulate)
    # Allocated outside inference mode, so callers may update the result in place (fold averaging).
    sums = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=accumulate)
    was_training = network.training
    network.to(compute).eval()
    memory_format = in_preferred_format(network, compute)
    try:
        with torch.inference_mode(), tqdm(total=len(windows), desc="sliding window", unit="window",
                                          disable=not progress, leave=False) as bar:
            for first in range(0, len(windows), int(batch_windows)):
                chunk = windows[first:first + int(batch_windows)]
                batch = torch.stack([padded[(slice(None), *w)] for w in chunk]).to(compute, non_blocking=True)
                batch = batch.contiguous(memory_format=memory_format)
                logits = _mirrored_logits(network, batch, passes, precision, num_classes).to(accumulate)
                for window, window_logits in zip(chunk, logits):
                    sums[(slice(None), *window)].addcmul_(window_logits, gaussian)
                bar.update(len(chunk))
    finally:
        network.train(was_training)
    for axis, axis_sums in enumerate(axis_weight_sums(spatial, patch_size, steps, sigma_scale)):
        shape = [1] * (len(spatial) + 1)
        shape[axis + 1] = -1
        sums.div_(torch.from_numpy(axis_sums).to(device=accumulate, dtype=torch.float32).view(shape))
    if padded is not data:
        sums = sums[undo].contiguous()
    return _softmax_(sums)


def _mirrored_logits(network: nn.Module, batch: torch.Tensor, passes: Sequence[tuple[int, ...]],
                     precision: torch.dtype | None, num_classes: int) -> torch.Tensor:
    """Mean float32 logits over the mirrored passes, each flipped back to the batch's orientation."""
    total = None
    for axes in passes:
        dims = [a + 2 for a in axes]
        flipped = torch.flip(batch, dims) if dims else batch
        with torch.autocast(batch.device.type, dtype=precision) if precision is not None else nullcontext():
            logits = network(flipped)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        if logits.shape[:2] != (batch.shape[0], num_classes) or logits.shape[2:] != batch.shape[2:]:
            raise LiversegError(f"the network turned windows of shape {tuple(batch.shape)} into logits of shape "
                                f"{tuple(logits.shape)}, expected {(batch.shape[0], num_classes, *batch.shape[2:])}; "
                                "do the model's checkpoint and plan (number of classes, patch size) belong together?")
        logits = logits.float()
        if dims:
            logits = torch.flip(logits, dims)
        total = logits if total is None else total.add_(logits)
    if len(passes) > 1:
        total.div_(len(passes))
    return total


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis, in place (a full-volume copy avoided)."""
    logits.sub_(logits.amax(dim=0, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=0, keepdim=True))


def _check_patch_size(patch_size: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(int(p) for p in patch_size)
    if len(sizes) != 3 or any(p < 1 or p != q for p, q in zip(sizes, patch_size)):
        raise LiversegError(f"patch size {list(patch_size)} must be three positive integers in (z, y, x) order")
    return sizes


def _as_image_tensor(image: torch.Tensor | np.ndarray, spatial_dims: int, network: nn.Module) -> torch.Tensor:
    """The image as a float32 tensor (shared with ``image`` where possible), checked for shape and values."""
    if image.ndim != spatial_dims + 1:
        raise LiversegError(f"the image to predict has shape {tuple(image.shape)}; expected (channels, z, y, x) "
                            "with a leading channel axis (use image[None] for a single channel)")
    if isinstance(image, np.ndarray):
        with warnings.catch_warnings():  # read-only arrays (memory-mapped .npy) are never written here
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            image = torch.as_tensor(image)
    data = image.float()
    expected = getattr(network, "in_channels", None)
    if expected is not None and data.shape[0] != expected:
        raise LiversegError(f"the image has {data.shape[0]} channel(s) but the model expects {expected}; give the "
                            "same channels (modalities, in the same order) the model was trained on")
    if not bool(torch.isfinite(data).all()):
        raise LiversegError("the image to predict contains NaN or infinite values; check the input file "
                            "(NaN survives in .nrrd/.mha) and the preprocessing")
    return data
