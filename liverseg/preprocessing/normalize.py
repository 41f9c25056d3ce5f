"""Intensity normalisation schemes, looked up by name, and the MRI body mask they rely on.

A plan names one scheme per channel (chosen from dataset.json's channel name by
:func:`scheme_for_channel`); :func:`normalize` applies them. Schemes are registered in
:data:`NORMALIZATION`, so a user can add one without editing liverseg::

    @NORMALIZATION.register("my_scheme")
    def my_scheme(channel: np.ndarray, stats: dict | None) -> np.ndarray: ...

MRI intensities have no physical unit and the background is noise, so MRI schemes measure their
statistics inside the body found by :func:`body_mask`. Voxels outside the body go through the same
mapping as those inside and are not zeroed: a mask that misses some tissue then only shifts the
statistics a little instead of erasing anatomy.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import cc3d
import numpy as np
from scipy import ndimage

from liverseg.errors import LiversegError
from liverseg.registry import Registry

log = logging.getLogger(__name__)

Scheme = Callable[[np.ndarray, "dict[str, Any] | None"], np.ndarray]
NORMALIZATION: Registry[Scheme] = Registry("normalization")

CT_STATS_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")
# In-plane size the body mask is computed at; finer detail is recovered at the body's surface.
_MASK_WORKING_SIZE = 128
_EPS = 1e-8
# Slice-wise connectivity: 4-neighbours within an axial slice, nothing across slices.
_INPLANE_4 = np.zeros((3, 3, 3), dtype=bool)
_INPLANE_4[1] = ndimage.generate_binary_structure(2, 1)


def scheme_for_channel(channel_name: str) -> str:
    """The default scheme for a dataset.json channel name: ``"ct"`` for CT, else ``"zscore_foreground"``."""
    return "ct" if channel_name.strip().lower() == "ct" else "zscore_foreground"


def normalize(image: np.ndarray, schemes: Sequence[str], stats: Sequence[dict[str, Any] | None] | None = None) -> np.ndarray:
    """Normalise each channel of a ``(c, z, y, x)`` image with its named scheme; returns float32.

    ``stats`` holds one dictionary (or None) per channel with dataset statistics, needed by
    ``"ct"`` (the fingerprint's foreground intensity statistics).
    """
    if image.ndim != 4:
        raise ValueError(f"expected a (c, z, y, x) image, got shape {image.shape}")
    if len(schemes) != image.shape[0]:
        raise LiversegError(f"{len(schemes)} normalisation scheme(s) given for an image with {image.shape[0]} channel(s); give one per channel")
    if stats is None:
        stats = [None] * len(schemes)
    if len(stats) != len(schemes):
        raise LiversegError(f"{len(stats)} statistics entries for {len(schemes)} channel(s); give one per channel (None where unused)")
    functions = [NORMALIZATION.get(name) for name in schemes]
    out = np.empty(image.shape, dtype=np.float32)
    for c, (function, channel_stats) in enumerate(zip(functions, stats)):
        out[c] = function(image[c].astype(np.float32, copy=False), channel_stats)
    return out


@NORMALIZATION.register("zscore_foreground")
def zscore_foreground(channel: np.ndarray, stats: dict[str, Any] | None = None) -> np.ndarray:
    """MRI: clip to this case's body 0.5/99.5 percentiles, then z-score with the body's mean and std.

    Clipping first stops bright vessels and fat from inflating the standard deviation.
    """
    values = _body_values(channel)
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    mean, std = float(clipped.mean(dtype=np.float64)), float(clipped.std(dtype=np.float64))
    out = np.clip(channel, low, high).astype(np.float32)
    out -= mean
    out /= max(std, _EPS)
    return out


@NORMALIZATION.register("percentile")
def percentile(channel: np.ndarray, stats: dict[str, Any] | None = None) -> np.ndarray:
    """MRI option: map the body's 2nd and 98th percentiles linearly to 0 and 1 (no clipping).

    The scheme of the anisotropic MRI paper (Hänsch et al. 2022), with the body in place of the
    liver mask, which is unknown at prediction time.
    """
    low, high = np.percentile(_body_values(channel), [2.0, 98.0])
    out = channel.astype(np.float32, copy=True)
    out -= low
    out /= max(float(high - low), _EPS)
    return out


@NORMALIZATION.register("ct")
def ct(channel: np.ndarray, stats: dict[str, Any] | None) -> np.ndarray:
    """CT: clip to the dataset's foreground 0.5/99.5 percentiles, then z-score with its mean and std.

    Hounsfield units are comparable across scans, so one dataset-wide mapping keeps them so.
    """
    missing = [k for k in CT_STATS_KEYS if not stats or stats.get(k) is None]
    if missing:
        raise LiversegError(
            f"CT normalisation needs the dataset's foreground intensity statistics ({', '.join(CT_STATS_KEYS)}); "
            f"missing: {', '.join(missing)}. Run liverseg_fingerprint first, or pass them in plans.json"
        )
    out = np.clip(channel, stats["percentile_00_5"], stats["percentile_99_5"]).astype(np.float32)
    out -= np.float32(stats["mean"])
    out /= np.float32(max(float(stats["std"]), _EPS))
    return out


def body_mask(image: np.ndarray) -> np.ndarray:
    """Boolean ``(z, y, x)`` mask of the body in an MRI (or CT) volume whose background is noise.

    An Otsu threshold on log intensities separates body from air (on raw intensities it would
    often split bright fat from the rest of the body); the largest connected part is kept (noise specks
    and bright artefacts outside vanish) and holes are filled slice by slice (lungs, bowel gas
    and dark bone inside the body are body, though the lungs open to the top of the volume).
    Works on a copy subsampled in-plane to about 128 pixels and refines the surface at full
    resolution, so a 512 x 512 x 100 volume takes well under a second.
    """
    if image.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {image.shape}")
    stride = max(1, min(image.shape[1], image.shape[2]) // _MASK_WORKING_SIZE)
    # Sample the centre of each stride x stride block, so the block stands for its own area.
    small = np.ascontiguousarray(image[:, stride // 2 :: stride, stride // 2 :: stride], dtype=np.float32)
    # The log squeezes bright fat and vessels together with the other tissue.
    offset = float(small.min()) - 1.0
    threshold = float(np.exp(otsu_threshold(np.log(small - offset))) + offset)
    mask = small > threshold
    if not mask.any():
        log.warning("body mask: no voxel above the threshold %.4g; using the whole volume", threshold)
        return np.ones(image.shape, dtype=bool)
    mask = cc3d.largest_k(mask, k=1, connectivity=6) > 0
    mask = _fill_holes_per_slice(mask)
    if stride == 1:
        return mask
    # Deep inside or far outside the subsampled mask the answer is clear; in the band around its
    # surface, decide each full-resolution voxel by the threshold.
    inside = _upsample(ndimage.binary_erosion(mask, _INPLANE_4, border_value=1), stride, image.shape)
    near = _upsample(ndimage.binary_dilation(mask, _INPLANE_4), stride, image.shape)
    return inside | (near & (image > threshold))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (the split maximising the between-class variance).

    The histogram spans the 0.1 to 99.9 percentiles, so a few extreme voxels cannot squeeze all
    others into one bin.
    """
    low, high = np.percentile(values, [0.1, 99.9])
    if high <= low:
        return float(low)
    counts, edges = np.histogram(values, bins=bins, range=(float(low), float(high)))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    # Splitting after bin i puts the threshold at its upper edge. Any split inside an empty gap
    # between the classes scores the same; take the middle of that plateau, not its lower end.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def _body_values(channel: np.ndarray) -> np.ndarray:
    return channel[body_mask(channel)].astype(np.float64)


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not reach the border of their own axial slice."""
    background, _ = ndimage.label(~mask, structure=_INPLANE_4)
    edge = np.concatenate([background[:, 0, :].ravel(), background[:, -1, :].ravel(), background[:, :, 0].ravel(), background[:, :, -1].ravel()])
    outside = np.zeros(int(background.max()) + 1, dtype=bool)
    outside[edge] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[background]


def _upsample(mask: np.ndarray, stride: int, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour inverse of subsampling every ``stride``-th pixel in-plane, cut to ``shape``."""
    big = np.repeat(np.repeat(mask, stride, axis=1), stride, axis=2)
    pad_y, pad_x = max(0, shape[1] - big.shape[1]), max(0, shape[2] - big.shape[2])
    if pad_y or pad_x:
        big = np.pad(big, ((0, 0), (0, pad_y), (0, pad_x)), mode="edge")
    return big[:, : shape[1], : shape[2]]
