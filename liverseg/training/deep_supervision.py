"""Deep supervision: one loss applied to a network's outputs at decreasing resolutions.

A deep-supervised U-Net returns a list of logits, highest resolution first (nnU-Net's order).
Output ``i`` gets the weight ``1 / 2^i`` and the weights are normalised to sum to 1. nnU-Net's
network has a head at every decoder stage and gives the coarsest one weight 0; liverseg's ``unet``
has no head there at all (``liverseg.networks.unet``), so weighting all of its outputs gives exactly
nnU-Net's effective weights. For a network that returns nnU-Net's full list, ``zero_coarsest=True``
gives its last output weight 0. Outputs with weight 0 are not evaluated at all, so their heads
receive no gradient (under DistributedDataParallel pass explicit weights with a tiny value instead
of 0, as nnU-Net does, or DDP complains about unused parameters).

Targets and masks are downsampled on the fly to each output's size by nearest-neighbour sampling
in torch's ``"nearest-exact"`` convention (the label at the centre of each block, as nnU-Net's
segmentation downsampling for deep supervision). When the sizes differ by whole factors ``f``
(every U-Net pyramid) this is strided slicing ``[f // 2 :: f]``, which picks the same voxels
without any copy or interpolation. Max-pooling of the foreground was considered and not chosen:
it dilates small lesions and thin vessels at the coarse levels, so coarse targets would disagree
with the full-resolution one; with nearest sampling a lesion smaller than a coarse voxel may vanish
at that level, where its weight is small, while the full-resolution output still sees it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def deep_supervision_weights(num_outputs: int, zero_coarsest: bool = False) -> list[float]:
    """Weights ``1/2^i`` for ``num_outputs`` outputs (highest resolution first), normalised to sum 1.

    With ``zero_coarsest`` the last output gets 0 (nnU-Net, whose network also returns the level
    just above the bottleneck); a single output always gets weight 1.
    """
    if num_outputs < 1:
        raise ValueError(f"deep supervision needs at least one output, got {num_outputs}")
    raw = [0.5**i for i in range(num_outputs)]
    if zero_coarsest and num_outputs > 1:
        raw[-1] = 0.0
    total = sum(raw)
    return [w / total for w in raw]


def downsample_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    """``labels`` (any leading dimensions, then spatial) resampled to spatial ``size`` by nearest-exact sampling.

    Works for label maps and masks alike (integer, bool or float); the dtype is kept.
    """
    size = tuple(int(s) for s in size)
    spatial = tuple(labels.shape[-len(size):])
    if spatial == size:
        return labels
    if any(s > t for s, t in zip(size, spatial)):
        raise ValueError(f"cannot downsample labels of spatial size {spatial} to the larger size {size}")
    if all(t % s == 0 for s, t in zip(size, spatial)):
        factors = [t // s for s, t in zip(size, spatial)]
        index = (Ellipsis, *(slice(f // 2, None, f) for f in factors))
        return labels[index]
    leading = labels.shape[: -len(size)]
    flat = labels.reshape(-1, 1, *spatial).float()
    resized = F.interpolate(flat, size=size, mode="nearest-exact")
    return resized.reshape(*leading, *size).to(labels.dtype)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the outputs of a deep-supervised network.

    Called as ``loss(outputs, target, mask=None)``: ``outputs`` a list of logits, highest
    resolution first, or a single logits tensor (then the wrapped loss is used as it is);
    ``target`` and ``mask`` at the resolution of the first output, or already as lists matching the
    outputs. ``weights`` default to :func:`deep_supervision_weights` of the number of outputs
    (with ``zero_coarsest``).
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None, zero_coarsest: bool = False) -> None:
        super().__init__()
        self.loss = loss
        self.zero_coarsest = zero_coarsest
        if weights is not None:
            weights = [float(w) for w in weights]
            if any(w < 0 for w in weights) or not any(weights):
                raise ValueError(f"deep supervision weights must be >= 0 with at least one positive, got {weights}")
        self.weights = weights

    def forward(
        self,
        outputs: Tensor | Sequence[Tensor],
        target: Tensor | Sequence[Tensor],
        mask: Tensor | Sequence[Tensor] | None = None,
    ) -> Tensor:
        """The weighted loss over all outputs: a scalar to minimise."""
        if isinstance(outputs, Tensor):
            return self.loss(outputs, target, mask)
        outputs = list(outputs)
        weights = self.weights if self.weights is not None else deep_supervision_weights(len(outputs), self.zero_coarsest)
        if len(weights) != len(outputs):
            raise ValueError(f"{len(weights)} deep supervision weights for {len(outputs)} outputs")
        targets = _per_output(target, outputs, "target")
        masks = _per_output(mask, outputs, "mask") if mask is not None else [None] * len(outputs)
        terms = [
            weight * self.loss(output, level_target, level_mask)
            for weight, output, level_target, level_mask in zip(weights, outputs, targets, masks)
            if weight
        ]
        return torch.stack(terms).sum()


def _per_output(labels: Tensor | Sequence[Tensor], outputs: list[Tensor], what: str) -> list[Tensor]:
    if not isinstance(labels, Tensor):
        labels = list(labels)
        if len(labels) != len(outputs):
            raise ValueError(f"{len(labels)} {what}s given for {len(outputs)} outputs")
        return labels
    return [downsample_labels(labels, output.shape[2:]) for output in outputs]
