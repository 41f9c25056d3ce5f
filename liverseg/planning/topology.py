"""The U-Net's shape from the voxel spacing and the patch: pooling per axis, kernels, widths, depth.

Rules (after nnU-Net's, restated for ``(z, y, x)`` and anisotropic data):

- **Pooling.** At every step, an axis is halved if the feature map stays at least
  ``min_feature_map_size`` voxels long and its current (effective) spacing is less than
  ``POOL_SPACING_RATIO`` = 2 times the finest current spacing among the axes that can still be
  pooled. Thick-slice MRI (3-4 mm slices, 1 mm in-plane) therefore pools only in-plane at first
  and starts pooling z once in-plane voxels have grown to about the slice thickness, so the
  network's field of view grows alike in mm along every axis. Pooling stops at ``max_stages``.
- **Kernels.** A stage convolves along an axis (kernel 3) only when that axis' effective spacing is
  less than ``KERNEL_SPACING_RATIO`` = 2 times the finest; otherwise the kernel is 1 there
  (``[1, 3, 3]``: in-plane only, while slices are still much thicker than pixels). The bottleneck
  always uses 3 on every axis, so slices are mixed at least once.
- **Widths.** ``base_features`` doubling per stage up to ``max_features`` (32 to 320 by default).
- **Deep supervision.** On: the ``unet`` then has segmentation outputs at full resolution and
  every lower level except the two lowest (bottleneck and the one above it), which are too
  coarse to carry a useful loss.
- **In-plane only** (the 2D configuration, ``in_plane_only=True``): the same rules on y and x
  alone; z is never pooled and every kernel, the bottleneck's included, is 1 along z
  (``[1, 3, 3]``), so the network works on each slice by itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from liverseg.errors import LiversegError
from liverseg.planning.plans import NetworkTopology

POOL_SPACING_RATIO = 2.0
KERNEL_SPACING_RATIO = 2.0


@dataclass(frozen=True)
class NetworkSettings:
    """The preset's network sizing (see defaults.json): widths, depth limit, convolutions per stage."""

    network: str = "unet"
    base_features: int = 32
    max_features: int = 320
    max_stages: int = 7
    n_conv_per_stage: int = 2
    min_feature_map_size: int = 4

    def __post_init__(self) -> None:
        for name in ("base_features", "max_features", "max_stages", "n_conv_per_stage", "min_feature_map_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LiversegError(f"network setting {name} must be a positive integer; got {value!r}")
        if self.max_stages < 2:
            raise LiversegError(f"network setting max_stages must be at least 2 (a U-Net pools at least once); got {self.max_stages}")
        if self.max_features < self.base_features:
            raise LiversegError(f"max_features ({self.max_features}) must be at least base_features ({self.base_features})")


def strides_and_kernels(
    patch_size: Sequence[int], spacing: Sequence[float], settings: NetworkSettings, in_plane_only: bool = False
) -> tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, int, int], ...]]:
    """Per-stage strides (the first all ones) and kernel sizes for a patch at ``spacing``.

    The rules are in the module docstring. When no axis is long enough to pool, the axes the
    spacing rule allows are pooled once anyway (a U-Net needs two stages) and the caller rounds
    the patch up to match. ``in_plane_only`` leaves z alone (the 2D configuration).
    """
    axes = (1, 2) if in_plane_only else (0, 1, 2)
    size = [float(s) for s in patch_size]
    current = [float(s) for s in spacing]
    strides: list[tuple[int, int, int]] = [(1, 1, 1)]
    kernels: list[tuple[int, int, int]] = []
    while len(strides) < settings.max_stages:
        poolable = [a for a in axes if size[a] / 2 >= settings.min_feature_map_size]
        if not poolable:
            if len(strides) > 1:
                break
            poolable = list(axes)
        kernels.append(_kernel(current, axes))
        finest = min(current[a] for a in poolable)
        chosen = [a for a in poolable if current[a] < POOL_SPACING_RATIO * finest * (1 - 1e-9)]
        strides.append(tuple(2 if a in chosen else 1 for a in range(3)))  # type: ignore[arg-type]
        for a in chosen:
            size[a] /= 2
            current[a] *= 2
    # The bottleneck always convolves along every axis it may, so slices are mixed at least once in 3D.
    kernels.append((1, 3, 3) if in_plane_only else (3, 3, 3))
    return tuple(strides), tuple(kernels)


def _kernel(spacing: Sequence[float], axes: Sequence[int] = (0, 1, 2)) -> tuple[int, int, int]:
    finest = min(spacing[a] for a in axes)
    return tuple(3 if a in axes and s < KERNEL_SPACING_RATIO * finest * (1 - 1e-9) else 1  # type: ignore[return-value]
                 for a, s in enumerate(spacing))


def is_in_plane(kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]]) -> bool:
    """Whether a topology never convolves or pools along z (every kernel and stride is 1 there): a 2D network."""
    return all(int(k[0]) == 1 for k in kernel_sizes) and all(int(s[0]) == 1 for s in strides)


def divisor_of(strides: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """Product of the strides per axis."""
    return tuple(math.prod(s[a] for s in strides) for a in range(3))  # type: ignore[return-value]


def round_up(patch_size: Sequence[int], divisor: Sequence[int]) -> tuple[int, int, int]:
    """Each axis rounded up to a multiple of its divisor."""
    return tuple(max(d, math.ceil(p / d) * d) for p, d in zip(patch_size, divisor))  # type: ignore[return-value]


def derive_topology(patch_size: Sequence[int], spacing: Sequence[float], settings: NetworkSettings,
                    in_plane_only: bool = False) -> NetworkTopology:
    """The topology for (at least) ``patch_size``: the patch is rounded up until the strides divide it.

    Rounding up can allow one more pooling step, so pooling and rounding are repeated until they
    agree (at most a few rounds). ``in_plane_only``: a 2D topology (module docstring).
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise LiversegError(f"patch size must be three positive integers (z, y, x); got {list(patch_size)}")
    for _ in range(16):
        strides, kernels = strides_and_kernels(patch, spacing, settings, in_plane_only)
        rounded = round_up(patch, divisor_of(strides))
        if rounded == patch:
            break
        patch = rounded
    else:  # pragma: no cover - pooling only grows with the patch, so this settles within a few rounds
        raise RuntimeError(f"pooling and rounding did not settle for patch {list(patch_size)}")
    stages = len(strides)
    return NetworkTopology(
        network=settings.network,
        patch_size=patch,  # type: ignore[arg-type]
        kernel_sizes=kernels,
        strides=strides,
        features_per_stage=tuple(min(settings.base_features * 2**s, settings.max_features) for s in range(stages)),
        n_conv_per_stage=settings.n_conv_per_stage,
        n_conv_per_stage_decoder=settings.n_conv_per_stage,
        deep_supervision=True,
    )


def describe_topology(topology: NetworkTopology) -> str:
    """One sentence on the pooling, kernels and widths of a topology, for the plan's reasons."""
    pools_per_axis = [sum(1 for s in topology.strides if s[a] == 2) for a in range(3)]
    z_steps = [i for i, s in enumerate(topology.strides) if s[0] == 2]
    z_text = f"z first pooled at stage {z_steps[0]}" if z_steps else "z never pooled"
    inplane_only = sum(1 for k in topology.kernel_sizes if k[0] == 1)
    if is_in_plane(topology.kernel_sizes, topology.strides):
        kernel_text = "[1, 3, 3] kernels in every stage: a 2D network, each slice on its own"
    elif inplane_only:
        kernel_text = (
            f"[1, 3, 3] kernels in the first {inplane_only} stage(s), where slices are at least "
            f"{KERNEL_SPACING_RATIO:g}x thicker than the (pooled) in-plane voxels"
        )
    else:
        kernel_text = "3x3x3 kernels throughout"
    return (
        f"{topology.num_stages} stages, halvings per axis (z, y, x) {pools_per_axis} ({z_text}), {kernel_text}; "
        f"features {topology.features_per_stage[0]} to {max(topology.features_per_stage)}; "
        f"deep supervision at {max(1, topology.num_stages - 2)} resolution(s)"
    )
