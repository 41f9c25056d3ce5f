"""Two MRI-specific augmentations as batchgeneratorsv2 transforms: bias field and slice thickness.

Both work on one sample at a time, like every batchgeneratorsv2 transform: ``image`` is a torch
tensor ``(c, z, y, x)`` in liverseg's axis order (batchgeneratorsv2 calls the spatial axes x, y, z,
but only means "spatial axis 0, 1, 2"; we hand it z first). They touch the image only: neither moves
anything, so the segmentation stays valid.

Each transform separates chance from effect: :meth:`get_parameters` draws the random parameters
(from numpy's global RNG, like batchgeneratorsv2's own transforms, so seeding numpy and torch in a
worker makes the whole pipeline reproducible), and :meth:`_apply_to_image` is the deterministic
twin that applies given parameters. Tests and users can call the twin directly with chosen values.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from batchgeneratorsv2.helpers.scalar_type import RandomScalar, sample_scalar
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform
from torch.nn.functional import adaptive_avg_pool3d, interpolate

from liverseg.errors import LiversegError


class BiasFieldTransform(ImageOnlyTransform):
    """Multiply the image by a smooth random field, as MRI coil sensitivity does.

    The log of the field is a random polynomial of total degree ``order`` in the patch coordinates
    (each axis mapped to [-1, 1]), rescaled so that its largest absolute value over the patch is
    ``log(1 + amplitude)``: the field then lies within ``[1 / (1 + amplitude), 1 + amplitude]``.
    A low-order polynomial cannot vary quickly, so the field is smooth by construction.

    MRI images arrive z-scored, so raw zero signal (air) sits at a negative value. The field is
    applied around each channel's minimum over the patch, the best estimate of that zero level:
    ``out = min + field * (image - min)``. For an image whose minimum is 0 this is plain
    multiplication.
    """

    def __init__(self, amplitude: RandomScalar = (0.0, 0.4), order: int = 3,
                 synchronize_channels: bool = True, p_per_channel: float = 1.0) -> None:
        super().__init__()
        if order < 1:
            raise LiversegError(f"bias field order must be at least 1, got {order}")
        self.amplitude = amplitude
        self.order = int(order)
        self.synchronize_channels = synchronize_channels
        self.p_per_channel = float(p_per_channel)

    def get_parameters(self, **data_dict: Any) -> dict:
        """Pick the channels and draw, per field, polynomial coefficients and an amplitude."""
        n_channels = data_dict["image"].shape[0]
        channels = [c for c in range(n_channels) if np.random.uniform() < self.p_per_channel]
        n_fields = min(1, len(channels)) if self.synchronize_channels else len(channels)
        n_terms = len(polynomial_exponents(self.order))
        coefficients = [np.random.uniform(-1.0, 1.0, size=n_terms) for _ in range(n_fields)]
        amplitudes = [float(sample_scalar(self.amplitude, image=data_dict["image"])) for _ in range(n_fields)]
        return {"channels": channels, "coefficients": coefficients, "amplitudes": amplitudes}

    def _apply_to_image(self, img: torch.Tensor, **params: Any) -> torch.Tensor:
        fields = [bias_field(img.shape[1:], w, a, self.order).to(img.dtype)
                  for w, a in zip(params["coefficients"], params["amplitudes"])]
        for i, c in enumerate(params["channels"]):
            field = fields[0] if self.synchronize_channels else fields[i]
            low = img[c].amin()
            img[c] = (img[c] - low) * field + low
        return img


def polynomial_exponents(order: int) -> list[tuple[int, int, int]]:
    """Exponents ``(i, j, k)`` of the monomials ``z^i y^j x^k`` with ``i + j + k <= order``."""
    return [(i, j, k) for i in range(order + 1) for j in range(order + 1 - i) for k in range(order + 1 - i - j)]


def bias_field(shape: tuple[int, ...], coefficients: np.ndarray, amplitude: float, order: int) -> torch.Tensor:
    """The multiplicative field ``exp(p)`` for a ``(z, y, x)`` shape, ``p`` scaled to ``max|p| = log(1 + amplitude)``.

    ``coefficients`` weight the monomials of :func:`polynomial_exponents` (in that order).
    """
    exponents = polynomial_exponents(order)
    if len(coefficients) != len(exponents):
        raise ValueError(f"{len(coefficients)} coefficients for {len(exponents)} monomials of order {order}")
    weights = np.zeros((order + 1,) * 3)
    for (i, j, k), w in zip(exponents, coefficients):
        weights[i, j, k] = w
    powers = [np.linspace(-1.0, 1.0, n)[None, :] ** np.arange(order + 1)[:, None] if n > 1
              else np.eye(order + 1, 1) for n in shape]  # (order+1, n) per axis: row e holds coordinate**e
    in_plane = np.einsum("jy,ijk,kx->iyx", powers[1], weights, powers[2])  # one y-x polynomial per power of z
    log_field = np.tensordot(powers[0].T, in_plane, axes=1).astype(np.float32)
    log_field -= log_field.mean(dtype=np.float64)
    peak = float(np.abs(log_field).max())
    if peak > 0:
        log_field *= np.float32(np.log1p(amplitude) / peak)
    return torch.from_numpy(np.exp(log_field, out=log_field))


class SliceThicknessTransform(ImageOnlyTransform):
    """Make slices look thicker: average along z over a random factor ``f``, then interpolate back.

    The image is reduced along z to ``round(Z / f)`` slices by averaging the slices each new slice
    covers (the partial-volume effect of a thick slice), then linearly interpolated back to ``Z``
    slices. In-plane content is untouched; ``f = 1`` is the identity. Unlike
    batchgeneratorsv2's low-resolution simulation (nearest-neighbour subsampling on every axis), this
    models what a thicker slice does, so a model trained on 2 mm slices copes with 4-5 mm ones.
    """

    def __init__(self, factor: RandomScalar = (1.0, 2.0), synchronize_channels: bool = True,
                 p_per_channel: float = 1.0) -> None:
        super().__init__()
        self.factor = factor
        self.synchronize_channels = synchronize_channels
        self.p_per_channel = float(p_per_channel)

    def get_parameters(self, **data_dict: Any) -> dict:
        """Pick the channels and draw a thickness factor per channel (one shared when synchronised)."""
        image = data_dict["image"]
        channels = [c for c in range(image.shape[0]) if np.random.uniform() < self.p_per_channel]
        if self.synchronize_channels:
            shared = float(sample_scalar(self.factor, image=image))
            factors = [shared] * len(channels)
        else:
            factors = [float(sample_scalar(self.factor, image=image)) for _ in channels]
        return {"channels": channels, "factors": factors}

    def _apply_to_image(self, img: torch.Tensor, **params: Any) -> torch.Tensor:
        for c, f in zip(params["channels"], params["factors"]):
            img[c] = thicken_slices(img[c], f)
        return img


def thicken_slices(volume: torch.Tensor, factor: float) -> torch.Tensor:
    """A ``(z, y, x)`` volume as if acquired with slices ``factor`` times thicker, at its original size."""
    if factor < 1:
        raise ValueError(f"slice thickness factor must be >= 1, got {factor}")
    n_slices = volume.shape[0]
    reduced = max(1, round(n_slices / factor))
    batch = volume[None, None].float()
    thick = adaptive_avg_pool3d(batch, (reduced, *volume.shape[1:]))
    back = interpolate(thick, size=tuple(volume.shape), mode="trilinear", align_corners=False)
    return back[0, 0].to(volume.dtype)
