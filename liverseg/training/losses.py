"""Segmentation losses on logits, looked up by name from a plan.

Every loss is a module called as ``loss(logits, target, mask=None)`` returning a scalar:

- ``logits``: ``(B, K, *spatial)`` raw network outputs, ``K >= 2`` (binary models are 2-class
  softmax models);
- ``target``: integer labels ``0..K-1``, shaped ``(B, 1, *spatial)`` or ``(B, *spatial)``; a float
  tensor holding whole numbers (what augmentation returns) is accepted;
- ``mask``: optional, ``(B, 1, *spatial)`` or ``(B, *spatial)``, bool or float, the voxels where
  the loss counts (the tumour model counts only the dilated liver). Float values act as per-voxel
  weights. Masked-out voxels contribute nothing to any term and receive exactly zero gradient.

The terms (all computed in at least float32, also under autocast):

- ``ce``: cross-entropy, the mean of ``-log p_target`` over the counted voxels;
- ``focal``: focal loss (Lin et al. 2017), the mean of ``-(1 - p_t)^gamma log p_t``; ``gamma = 0``
  is cross-entropy;
- ``dice``: ``1 - mean soft Dice`` over the foreground classes ``1..K-1`` (background is left out,
  as in nnU-Net). With ``batch_dice`` (default, nnU-Net's choice for 3d_fullres) the sums run over
  the batch and the volume, one Dice per class for the whole batch: stable when a small lesion is
  missing from some patches. Without it, one Dice per sample and class, averaged.
  Smoothing: ``Dice_k = (2 sum(p y) + s) / (sum(p) + sum(y) + s)`` with ``s = 1e-5`` (nnU-Net's
  value), so the term is always defined. A class absent from the target has a Dice near 1 when it
  is also (almost) absent from the prediction (``s / (sum(p) + s)``) and near 0 otherwise, with a
  gradient of order ``s / sum(p)^2``: the Dice term then barely pushes, and the voxel-wise term
  (CE, focal) suppresses the false positives.
- ``margin``: the margin-based label smoothing penalty (MbLS; Liu et al. 2022, applied to
  segmentation by Murugesan et al. 2023 and used by the ATLAS paper of Lambert et al. 2023 to
  calibrate its probabilities): per voxel, ``mean_j max(0, max_k l_k - l_j - m)`` over the K logit
  distances. It is zero while every logit stays within ``m`` of the largest and pulls the logits of
  over-confident voxels together, so a perfect, huge-logit prediction pays a positive penalty. The
  mean over classes follows the authors' implementation (their paper writes a sum, i.e. the same
  penalty with ``lambda * K``); ``m = 10`` and ``lambda = 0.1`` are the authors' defaults. The
  ATLAS paper does not state the values it used.

Registered losses (``build_loss(name, **params)``): ``"dice_ce"`` (default), ``"dice_focal"``,
``"mbls"`` (CE + margin penalty), ``"dice_mbls"``, ``"ce"`` and ``"dice"`` (Hänsch et al. 2022
trained their tumour model with a Dice loss inside the dilated liver mask). A user adds a loss
with ``@LOSSES.register("name")`` on a factory returning a module with the call signature above,
in a module imported before training, or from an installed package through the
``liverseg.losses`` entry-point group (loaded only when a plan asks for a name not registered)::

    [project.entry-points."liverseg.losses"]
    my_loss = "my_package.losses:my_loss"
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liverseg.errors import LiversegError
from liverseg.registry import Registry


ENTRY_POINT_GROUP = "liverseg.losses"
LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss", entry_point_group=ENTRY_POINT_GROUP)
DEFAULT_LOSS = "dice_ce"
DICE_SMOOTH = 1e-5
MBLS_MARGIN = 10.0
MBLS_WEIGHT = 0.1
FOCAL_GAMMA = 2.0
# Denominator floor of the weighted means: with binary masks the counted-voxel total is an integer,
# so this only matters when no voxel counts (then the numerator is exactly 0 and so is the mean).
_MIN_COUNT = 1e-8
# Floor of (1 - p_t) in the focal weight: keeps its derivative finite when p_t rounds to 1.
_MIN_FOCAL_BASE = 1e-12


def available_losses() -> list[str]:
    """Names a plan may use: registered losses plus those installed packages declare."""
    return LOSSES.available()


def get_loss(name: str) -> Callable[..., nn.Module]:
    """The loss factory called ``name``; loads an entry-point plugin on first use."""
    return LOSSES.get(name)


def build_loss(name: str, **params: Any) -> nn.Module:
    """The loss called ``name``, built with ``params`` (the plan's loss parameters).

    Unknown names and parameters the loss does not take are user errors that list what exists.
    """
    factory = get_loss(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some callables (C extensions) have no signature
        signature = None
    if signature is not None and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        unknown = sorted(set(params) - set(signature.parameters))
        if unknown:
            takes = ", ".join(signature.parameters) or "(nothing)"
            raise LiversegError(f"loss '{name}' has no parameter {', '.join(unknown)}; it takes: {takes}")
    return factory(**params)


def soft_dice(probs: Tensor, target: Tensor, weight: Tensor | None = None, batch_dice: bool = True, smooth: float = DICE_SMOOTH) -> Tensor:
    """Soft Dice of each foreground class 1..K-1: shape ``(K-1,)`` with ``batch_dice``, else ``(B, K-1)``.

    ``probs`` is ``(B, K, *spatial)``, ``target`` integer labels ``(B, *spatial)``, ``weight`` an
    optional ``(B, *spatial)`` voxel weight (0 = not counted).
    """
    classes = torch.arange(1, probs.shape[1], device=probs.device).view(1, -1, *([1] * (probs.ndim - 2)))
    truth = (target.unsqueeze(1) == classes).to(probs.dtype)
    fg_probs = probs[:, 1:]
    if weight is not None:
        fg_probs = fg_probs * weight.unsqueeze(1)
    axes = (0, *range(2, probs.ndim)) if batch_dice else tuple(range(2, probs.ndim))
    intersection = (fg_probs * truth).sum(axes)
    truth_total = (truth if weight is None else truth * weight.unsqueeze(1)).sum(axes)
    denominator = fg_probs.sum(axes) + truth_total
    return (2 * intersection + smooth) / (denominator + smooth).clamp_min(1e-8)


def margin_penalty(logits: Tensor, margin: float = MBLS_MARGIN) -> Tensor:
    """MbLS penalty per voxel, ``(B, *spatial)``: mean over classes of ``max(0, max_k l_k - l_j - margin)``."""
    distances = logits.amax(dim=1, keepdim=True) - logits
    return F.relu(distances - margin).mean(dim=1)


class SegmentationLoss(nn.Module):
    """A weighted sum of the Dice, cross-entropy, focal and margin terms (see the module docstring).

    Each registered loss is one choice of weights; terms with weight 0 are not computed.
    """

    def __init__(
        self,
        *,
        weight_dice: float = 0.0,
        weight_ce: float = 0.0,
        weight_focal: float = 0.0,
        weight_margin: float = 0.0,
        gamma: float = FOCAL_GAMMA,
        margin: float = MBLS_MARGIN,
        batch_dice: bool = True,
        smooth: float = DICE_SMOOTH,
    ) -> None:
        super().__init__()
        weights = {"dice": weight_dice, "ce": weight_ce, "focal": weight_focal, "margin": weight_margin}
        self.weights = {name: _non_negative(f"weight_{name}", value) for name, value in weights.items()}
        if not any(self.weights.values()):
            raise LiversegError("a loss needs at least one term with a positive weight; all weights are 0")
        self.gamma = _non_negative("gamma", gamma)
        self.margin = _non_negative("margin", margin)
        self.smooth = _non_negative("smooth", smooth)
        if self.smooth == 0:
            raise LiversegError("the Dice smoothing 'smooth' must be positive (e.g. 1e-5), got 0")
        if not isinstance(batch_dice, bool):
            raise LiversegError(f"'batch_dice' must be true or false, got {batch_dice!r}")
        self.batch_dice = batch_dice

    def terms(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """The unweighted terms with a positive weight, by name (``dice``, ``ce``, ``focal``, ``margin``), for logging."""
        logits, target, weight = prepare_inputs(logits, target, mask)
        log_probs = F.log_softmax(logits, dim=1)
        terms: dict[str, Tensor] = {}
        if self.weights["dice"]:
            dice = soft_dice(log_probs.exp(), target, weight, self.batch_dice, self.smooth)
            terms["dice"] = 1 - dice.mean()
        if self.weights["ce"] or self.weights["focal"]:
            log_pt = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
        if self.weights["ce"]:
            terms["ce"] = _weighted_mean(-log_pt, weight)
        if self.weights["focal"]:
            focal_weight = (-torch.expm1(log_pt)).clamp_min(_MIN_FOCAL_BASE) ** self.gamma
            terms["focal"] = _weighted_mean(-focal_weight * log_pt, weight)
        if self.weights["margin"]:
            terms["margin"] = _weighted_mean(margin_penalty(logits, self.margin), weight)
        return terms

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """The weighted sum of the terms: a scalar to minimise."""
        terms = self.terms(logits, target, mask)
        return torch.stack([self.weights[name] * value for name, value in terms.items()]).sum()

    def extra_repr(self) -> str:
        parts = [f"weight_{name}={w:g}" for name, w in self.weights.items() if w]
        if self.weights["dice"]:
            parts += [f"batch_dice={self.batch_dice}", f"smooth={self.smooth:g}"]
        if self.weights["focal"]:
            parts.append(f"gamma={self.gamma:g}")
        if self.weights["margin"]:
            parts.append(f"margin={self.margin:g}")
        return ", ".join(parts)


def prepare_inputs(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check shapes and labels; return float logits, ``(B, *spatial)`` long labels and voxel weights (or None).

    A label outside 0..K-1 is a user error: the plan's classes and the data disagree.
    """
    if logits.ndim < 3:
        raise ValueError(f"logits must be (B, K, *spatial), got shape {tuple(logits.shape)}")
    batch, num_classes, spatial = logits.shape[0], logits.shape[1], tuple(logits.shape[2:])
    if num_classes < 2:
        raise ValueError(f"logits have {num_classes} channel; losses need K >= 2 classes (binary models are 2-class softmax)")
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    target = _squeeze_channel(target, logits.ndim, "target")
    if tuple(target.shape) != (batch, *spatial):
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    target = (target.round() if target.is_floating_point() else target).long()
    if target.numel():
        low, high = torch.aminmax(target)
        if low < 0 or high >= num_classes:
            raise LiversegError(
                f"the training labels hold values {int(low)}..{int(high)} but the network predicts {num_classes} classes "
                f"(0..{num_classes - 1}); check the model's label mapping and number of classes in plans.json"
            )
    if mask is None:
        return logits, target, None
    weight = _squeeze_channel(mask, logits.ndim, "mask")
    if tuple(weight.shape) != (batch, *spatial):
        raise ValueError(f"mask shape {tuple(weight.shape)} does not match logits {tuple(logits.shape)}")
    return logits, target, weight.to(logits.dtype)


def _squeeze_channel(tensor: Tensor, logits_ndim: int, what: str) -> Tensor:
    if tensor.ndim == logits_ndim:
        if tensor.shape[1] != 1:
            raise ValueError(f"{what} must have one channel, got shape {tuple(tensor.shape)}")
        return tensor[:, 0]
    return tensor


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(_MIN_COUNT)


def _non_negative(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LiversegError(f"loss parameter '{name}' must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise LiversegError(f"loss parameter '{name}' must be a finite number >= 0, got {value!r}")
    return number


@LOSSES.register("dice_ce")
def dice_ce(weight_dice: float = 1.0, weight_ce: float = 1.0, batch_dice: bool = True, smooth: float = DICE_SMOOTH) -> SegmentationLoss:
    """Soft Dice over the foreground classes plus cross-entropy, equal weights: nnU-Net's default loss."""
    return SegmentationLoss(weight_dice=weight_dice, weight_ce=weight_ce, batch_dice=batch_dice, smooth=smooth)


@LOSSES.register("dice_focal")
def dice_focal(
    weight_dice: float = 1.0, weight_focal: float = 1.0, gamma: float = FOCAL_GAMMA, batch_dice: bool = True, smooth: float = DICE_SMOOTH
) -> SegmentationLoss:
    """Soft Dice plus focal loss (gamma 2): the voxel term concentrates on the hard voxels, e.g. lesion borders."""
    return SegmentationLoss(weight_dice=weight_dice, weight_focal=weight_focal, gamma=gamma, batch_dice=batch_dice, smooth=smooth)


@LOSSES.register("mbls")
def mbls(weight_ce: float = 1.0, weight_margin: float = MBLS_WEIGHT, margin: float = MBLS_MARGIN) -> SegmentationLoss:
    """Cross-entropy plus the margin penalty (MbLS): calibrated probabilities for lesion uncertainty."""
    return SegmentationLoss(weight_ce=weight_ce, weight_margin=weight_margin, margin=margin)


@LOSSES.register("dice_mbls")
def dice_mbls(
    weight_dice: float = 1.0,
    weight_ce: float = 1.0,
    weight_margin: float = MBLS_WEIGHT,
    margin: float = MBLS_MARGIN,
    batch_dice: bool = True,
    smooth: float = DICE_SMOOTH,
) -> SegmentationLoss:
    """Soft Dice plus MbLS (cross-entropy and margin penalty): Dice's overlap focus with calibrated logits."""
    return SegmentationLoss(
        weight_dice=weight_dice, weight_ce=weight_ce, weight_margin=weight_margin, margin=margin, batch_dice=batch_dice, smooth=smooth
    )


@LOSSES.register("ce")
def cross_entropy(weight_ce: float = 1.0) -> SegmentationLoss:
    """Cross-entropy alone."""
    return SegmentationLoss(weight_ce=weight_ce)


@LOSSES.register("dice")
def dice(weight_dice: float = 1.0, batch_dice: bool = True, smooth: float = DICE_SMOOTH) -> SegmentationLoss:
    """Soft Dice alone (Hänsch et al. 2022's tumour loss, computed inside the dilated liver mask)."""
    return SegmentationLoss(weight_dice=weight_dice, batch_dice=batch_dice, smooth=smooth)
