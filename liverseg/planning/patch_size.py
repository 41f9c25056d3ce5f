"""Patch size and batch size of one model: from bounding boxes, under a memory budget.

The patch starts as the box that holds a high percentile (default 95th) of the bounding boxes of
what the model segments, plus context, at the model's spacing; it is never larger than the median
image (a patch larger than the data only pads). While the training-memory estimate for a batch of
2 exceeds the budget (or the patch exceeds the preset's voxel limit), the axis with the largest
extent in mm loses one pooling unit, so the patch stays as close to a cube in millimetres as the
budget allows (nnU-Net shrinks the axis that is largest relative to the median image, which
ignores what the model must see). Every size is a multiple of the pooling factors: rounded up when
the budget allows, down otherwise. Then the batch grows to fill the budget, at least 2, at most
what makes one batch 5% of the dataset's voxels (nnU-Net's cap against overfitting small sets).

A 2D model (``in_plane_only``) has a patch of one slice that only y and x shrink. Its batch obeys the
same rules, except that a preset's batch limit (``max_batch_size`` patches of at most
``max_patch_voxels``) counts voxels: the slices of one batch may hold as many voxels as the
largest 3D batch the preset allows. nnU-Net's 2d configuration likewise trains with far larger
batches than its 3d one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from liverseg.errors import LiversegError
from liverseg.planning.memory import GIB, estimate_training_memory, memory_per_sample
from liverseg.planning.plans import NetworkTopology
from liverseg.planning.topology import NetworkSettings, derive_topology

MIN_BATCH_SIZE = 2
DATASET_FRACTION_PER_BATCH = 0.05


@dataclass(frozen=True)
class PatchChoice:
    """A model's topology (with its patch) and batch size, and why."""

    topology: NetworkTopology
    batch_size: int
    memory_bytes: float
    patch_reason: str
    batch_reason: str


def percentile_extent(extents_mm: np.ndarray, percentile: float) -> np.ndarray:
    """Per-axis percentile of ``(n, 3)`` box extents in mm."""
    extents_mm = np.asarray(extents_mm, dtype=np.float64).reshape(-1, 3)
    if len(extents_mm) == 0:
        raise ValueError("no boxes to take a percentile of")
    return np.percentile(extents_mm, percentile, axis=0)


def coverage(extents_mm: np.ndarray, patch_mm: Sequence[float]) -> float:
    """Fraction of boxes that fit inside the patch on all three axes at once."""
    extents_mm = np.asarray(extents_mm, dtype=np.float64).reshape(-1, 3)
    if len(extents_mm) == 0:
        return 1.0
    return float(np.mean(np.all(extents_mm <= np.asarray(patch_mm) + 1e-6, axis=1)))


def fits_budget(
    topology: NetworkTopology, budget_bytes: float, max_patch_voxels: int | None = None, num_input_channels: int = 1, num_classes: int = 3
) -> bool:
    """Whether a batch of 2 trains within ``budget_bytes`` and the patch within the voxel limit."""
    if max_patch_voxels is not None and math.prod(topology.patch_size) > max_patch_voxels:
        return False
    return estimate_training_memory(topology, MIN_BATCH_SIZE, num_input_channels, num_classes) <= budget_bytes


def fit_patch(
    desired: Sequence[int],
    spacing: Sequence[float],
    settings: NetworkSettings,
    budget_bytes: float,
    max_patch_voxels: int | None = None,
    num_input_channels: int = 1,
    num_classes: int = 3,
    in_plane_only: bool = False,
) -> tuple[NetworkTopology, list[str]]:
    """The topology whose patch is ``desired`` (in voxels), shrunk until a batch of 2 fits the budget.

    Returns the topology and notes on each axis that had to shrink. ``in_plane_only``: a 2D
    topology (:func:`~liverseg.planning.topology.derive_topology`).
    """
    topology = derive_topology([max(1, int(d)) for d in desired], spacing, settings, in_plane_only)
    spacing_array = np.asarray(spacing, dtype=np.float64)
    while not fits_budget(topology, budget_bytes, max_patch_voxels, num_input_channels, num_classes):
        patch = np.array(topology.patch_size)
        divisor = np.array(topology.divisor)
        longest_first = np.argsort(-(patch * spacing_array), kind="stable")
        shrinkable = [a for a in longest_first if patch[a] - divisor[a] >= settings.min_feature_map_size]
        if not shrinkable:
            smallest = estimate_training_memory(topology, MIN_BATCH_SIZE, num_input_channels, num_classes) / GIB
            raise LiversegError(
                f"a memory budget of {budget_bytes / GIB:.3g} GB cannot hold even a {list(topology.patch_size)} patch with batch "
                f"{MIN_BATCH_SIZE} ({smallest:.3g} GB estimated); raise --gpu-memory-gb or use a smaller network (--preset fast)"
            )
        patch[shrinkable[0]] -= divisor[shrinkable[0]]
        topology = derive_topology(patch.tolist(), spacing, settings, in_plane_only)
    notes = [
        f"{axis} {want} -> {got}" for axis, want, got in zip("zyx", desired, topology.patch_size) if got < want
    ]
    return topology, notes


def choose_batch_size(
    topology: NetworkTopology,
    budget_bytes: float,
    dataset_voxels: float,
    max_batch_size: int | None = None,
    num_input_channels: int = 1,
    num_classes: int = 3,
    limit_name: str = "preset limit",
) -> tuple[int, str]:
    """Batch size filling the budget, at least 2, capped at 5% of the dataset's voxels per batch.

    ``limit_name`` says where ``max_batch_size`` comes from, for the reason text.
    """
    fixed = estimate_training_memory(topology, 0, num_input_channels, num_classes)
    per_sample = memory_per_sample(topology, num_input_channels, num_classes)
    by_memory = int((budget_bytes - fixed) // per_sample)
    by_dataset = int(DATASET_FRACTION_PER_BATCH * dataset_voxels // math.prod(topology.patch_size))
    candidates = {"memory budget": by_memory, "5% of the dataset's voxels": by_dataset}
    if max_batch_size is not None:
        candidates[limit_name] = max_batch_size
    limit, value = min(candidates.items(), key=lambda kv: kv[1])
    batch = max(MIN_BATCH_SIZE, value)
    if batch == value:
        reason = f"{batch}: limited by the {limit} (memory allows {by_memory}, the 5% rule {by_dataset})"
    else:
        reason = f"{batch}: the minimum (the {limit} alone would allow {value})"
    return batch, reason


def plan_patch(
    desired_mm: Sequence[float],
    image_shape: Sequence[int],
    spacing: Sequence[float],
    settings: NetworkSettings,
    budget_bytes: float,
    dataset_voxels: float,
    max_patch_voxels: int | None = None,
    max_batch_size: int | None = None,
    num_input_channels: int = 1,
    num_classes: int = 3,
    what: str = "the boxes",
    in_plane_only: bool = False,
) -> PatchChoice:
    """Patch, topology and batch for a model that must see ``desired_mm`` on images of ``image_shape``.

    ``what`` describes ``desired_mm`` for the reason text (e.g. "the 95th percentile of the liver
    boxes plus 2 x 10 mm"). ``in_plane_only``: a 2D model, whose patch is one slice and whose
    batch limit counts voxels (module docstring); ``desired_mm`` along z is then ignored.
    """
    spacing_array = np.asarray(spacing, dtype=np.float64)
    wanted = np.ceil(np.asarray(desired_mm, dtype=np.float64) / spacing_array - 1e-6).astype(int)
    if in_plane_only:
        wanted[0] = 1
    desired = np.minimum(np.maximum(wanted, 1), np.asarray(image_shape, dtype=int))
    topology, notes = fit_patch(desired.tolist(), spacing, settings, budget_bytes, max_patch_voxels, num_input_channels,
                                num_classes, in_plane_only)
    memory = estimate_training_memory(topology, MIN_BATCH_SIZE, num_input_channels, num_classes)
    clipped = [axis for axis, w, d in zip("zyx", wanted, desired) if d < w]
    patch_mm = np.asarray(topology.patch_size) * spacing_array
    parts = [
        f"{_triple(topology.patch_size)} voxels = {_triple(patch_mm, '{:.0f}')} mm; wanted {_triple(wanted)} voxels to hold {what} "
        f"({_triple(desired_mm, '{:.0f}')} mm)"
    ]
    if clipped:
        parts.append(f"clipped to the median image ({_triple(image_shape)}) on {', '.join(clipped)}")
    if notes:
        limit = f"{budget_bytes / GIB:.3g} GB" + (f" and {max_patch_voxels} voxels" if max_patch_voxels else "")
        parts.append(f"shrunk to fit {limit} with batch {MIN_BATCH_SIZE} ({'; '.join(notes)})")
    parts.append(f"multiple of the pooling product {_triple(topology.divisor)}; estimate {memory / GIB:.2f} GB at batch {MIN_BATCH_SIZE}")
    limit_name = "preset limit"
    if in_plane_only and max_batch_size is not None and max_patch_voxels is not None:
        limit_name = f"preset limit ({max_batch_size} patches of {max_patch_voxels} voxels, counted in slices)"
        max_batch_size = max(max_batch_size, max_batch_size * max_patch_voxels // math.prod(topology.patch_size))
    batch, batch_reason = choose_batch_size(topology, budget_bytes, dataset_voxels, max_batch_size, num_input_channels, num_classes,
                                            limit_name)
    memory = estimate_training_memory(topology, batch, num_input_channels, num_classes)
    batch_reason += f"; estimate {memory / GIB:.2f} GB of {budget_bytes / GIB:.3g} GB"
    return PatchChoice(topology, batch, memory, "; ".join(parts), batch_reason)


def _triple(values: Sequence[float], fmt: str = "{:d}") -> str:
    return " x ".join(fmt.format(int(v) if fmt == "{:d}" else float(v)) for v in values)
