"""Target spacing and the one z policy of a plan, from the spacings of the training cases.

- **In-plane**: the median in-plane spacing of the dataset (per axis). Half the cases are then
  slightly upsampled and half slightly downsampled; no case is blown up to the finest scanner's
  grid, which would multiply memory for detail most cases do not have.
- **z**: the median slice spacing, kept as it is. Upsampling thick slices only invents slices
  between the real ones (more voxels, no information, interpolated lesions), which is why the
  anisotropic MRI paper (Hänsch et al. 2022) resamples in-plane to 1 mm and leaves z alone.
  nnU-Net instead takes the 10th percentile of the slice spacings when the median is more than 3x
  the in-plane spacing and the volume has few slices: 2.66 mm where the median is 3.8 mm on
  thick-slice liver MRI, i.e. 43% more slices to store, resample and convolve. Each plan records
  what nnU-Net would have chosen next to our choice.
- **z policy**: ``separate_z`` (in-plane cubic, then z on its own) when the target grid is
  anisotropic, slice spacing at least ``ANISOTROPY_THRESHOLD`` = 2 times the in-plane spacing,
  and then for *every* case: nnU-Net decides per case at a ratio of 3, and ATLAS ratios (about 1.4
  to 6.6) straddle that, so its cases of one dataset get resampled differently. Along z we use
  nearest (order 0) for images and labels: a resampled slice is then one real slice with its own
  label, never a blend of two slices labelled as one of them, and a small lesion keeps its
  contrast instead of being halved into two ghost slices (nnU-Net also uses order 0 along z in
  this mode). Linear (order 1) is the alternative; set ``order_z_image`` in plans.json to use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from liverseg.errors import LiversegError

ANISOTROPY_THRESHOLD = 2.0
# nnU-Net's anisotropy rule, restated to report what it would have chosen.
_NNUNET_RATIO = 3.0
_NNUNET_PERCENTILE = 10
# Each coarser cascade grid is this factor coarser than the previous one.
COARSENING_STEP = 1.1


IN_PLANE_AXES = (1, 2)
ALL_AXES = (0, 1, 2)


def is_anisotropic(spacing: Sequence[float]) -> bool:
    """Whether a ``(z, y, x)`` grid has thick slices: z at least ``ANISOTROPY_THRESHOLD`` times the in-plane spacing."""
    return float(spacing[0]) / max(float(spacing[1]), float(spacing[2])) >= ANISOTROPY_THRESHOLD


def mirror_axes(mirroring: str, spacing: Sequence[float], one_slice: bool = False) -> tuple[int, ...]:
    """The axes a model with plan setting ``mirroring`` is mirrored along, in training and at test time.

    ``auto``: nnU-Net's axes, y and x on thick slices or single slices, all three otherwise;
    ``none``: no axes.
    """
    if mirroring == "none":
        return ()
    return IN_PLANE_AXES if one_slice or is_anisotropic(spacing) else ALL_AXES


@dataclass(frozen=True)
class SpacingDecision:
    """The plan's target spacing and z policy, with what nnU-Net would have chosen."""

    target_spacing: tuple[float, float, float]
    separate_z: bool
    order_z_image: int
    order_z_label: int
    anisotropy: float
    nnunet_target_spacing: tuple[float, float, float]
    reason: str
    z_policy_reason: str


def nnunet_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[float, float, float]:
    """The full-resolution target spacing nnU-Net v2 would choose (for comparison in the plan)."""
    target = np.median(spacings, axis=0)
    median_shape = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    anisotropic_spacing = target[worst] > _NNUNET_RATIO * min(target[others])
    few_voxels = median_shape[worst] * _NNUNET_RATIO < min(median_shape[others])
    if anisotropic_spacing and few_voxels:
        low = float(np.percentile(spacings[:, worst], _NNUNET_PERCENTILE))
        target[worst] = max(low, max(target[others]) + 1e-5)
    return tuple(float(s) for s in target)  # type: ignore[return-value]


def choose_target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> SpacingDecision:
    """Target spacing (median in-plane, median z kept) and the plan's z policy, with reasons.

    ``spacings`` and ``shapes`` are the ``(z, y, x)`` spacing and voxel shape of every training case.
    """
    spacings = np.asarray(spacings, dtype=np.float64).reshape(-1, 3)
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 3)
    if len(spacings) == 0 or spacings.min() <= 0:
        raise LiversegError("the fingerprint holds no cases with positive spacings; "
                            "run liverseg_fingerprint on a dataset with training cases")
    target = tuple(round(float(s), 4) for s in np.median(spacings, axis=0))
    anisotropy = target[0] / max(target[1], target[2])
    separate_z = anisotropy >= ANISOTROPY_THRESHOLD
    nnunet = tuple(round(s, 4) for s in nnunet_target_spacing(spacings, shapes))
    case_ratios = spacings[:, 0] / spacings[:, 1:].max(axis=1)
    z_text = (
        f"z {target[0]:g} mm is the median slice spacing, kept (thick slices are not upsampled)"
        if nnunet[0] == target[0]
        else f"z {target[0]:g} mm is the median slice spacing, kept; nnU-Net would upsample to {nnunet[0]:g} mm "
        f"(its 10th percentile rule), {target[0] / nnunet[0]:.2f}x the slices for no new information"
    )
    reason = (
        f"in-plane {target[1]:g} x {target[2]:g} mm is the median in-plane spacing of {len(spacings)} cases "
        f"(range {spacings[:, 1:].min():.3g}-{spacings[:, 1:].max():.3g} mm); {z_text}"
    )
    if separate_z:
        z_policy = (
            f"the target grid is anisotropic (z / in-plane = {anisotropy:.2f} >= {ANISOTROPY_THRESHOLD:g}), so every case "
            f"(ratios {case_ratios.min():.2f}-{case_ratios.max():.2f}) is resampled in-plane (cubic) and then along z on its own, "
            "nearest along z for images and labels alike (a resampled slice is one real slice with its own label); "
            "one policy for all cases, where nnU-Net switches per case at a ratio of 3"
        )
    else:
        z_policy = (
            f"the target grid is close to isotropic (z / in-plane = {anisotropy:.2f} < {ANISOTROPY_THRESHOLD:g}), so every case "
            "is resampled with one 3D cubic interpolation (labels through one-hot linear interpolation)"
        )
    return SpacingDecision(target, separate_z, 0, 0, anisotropy, nnunet, reason, z_policy)  # type: ignore[arg-type]


def coarser_spacings(spacing: Sequence[float], max_factor: float = 16.0) -> Iterator[tuple[float, float, float]]:
    """Ever coarser grids for a cascade's first stage, starting with ``spacing`` itself.

    Axes finer than the coarsest are coarsened first (thick-slice data becomes isotropic at the
    slice spacing), then all axes together, by :data:`COARSENING_STEP` per grid, until the finest
    axis is ``max_factor`` times its starting spacing.
    """
    current = np.asarray(spacing, dtype=np.float64)
    start = current.copy()
    yield tuple(float(s) for s in current)  # type: ignore[misc]
    while np.min(current / start) < max_factor:
        coarsest = current.max()
        if np.all(current >= coarsest * (1 - 1e-9)):
            current = current * COARSENING_STEP
        else:
            current = np.minimum(current * COARSENING_STEP, coarsest)
            current[current >= coarsest * (1 - 1e-9)] = coarsest
        yield tuple(round(float(s), 4) for s in current)  # type: ignore[misc]
