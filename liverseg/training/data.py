"""The trainer's data: endless augmented training batches and validation batches for one model.

:func:`training_batches` builds, from the plan alone, a :class:`~liverseg.training.patch_loader.PatchLoader`
per case list and the augmentation pipelines of :mod:`liverseg.training.augmentation`, runs both in
background workers (:mod:`liverseg.training.background`) and stops them on exit.

Augmentation settings from the plan:

- **anisotropic** when the model's grid has a z spacing at least ``ANISOTROPY_THRESHOLD`` (2) times
  the coarser in-plane spacing, the planner's own rule for thick slices: rotation and scaling then
  stay in-plane and slice-thickness augmentation is on;
- **mirroring** as the model's ``mirroring`` in the plan says: ``auto``, nnU-Net's axes (y and x
  on thick slices or single slices, all three otherwise), or ``none`` (dual_binary's liver model);
- **bias field** augmentation when every channel is MRI (a dataset.json channel name other than
  ``CT``): a smooth multiplicative field is what MRI coils do and CT scanners do not;
- training regions are larger than the patch (:func:`~liverseg.training.augmentation.sampling_region_size`)
  so rotations and zooms show image rather than padding; validation regions are the patch itself
  and pass only through a centre crop (the identity), so validation batches are deterministic.

Seeding. Patch sampling draws from the loaders' own generators, seeded from ``seed`` and
``seed_stream`` (training and validation use different streams). Augmentation in workers is
seeded the same way; with ``num_workers=0`` it draws from the caller's global numpy and torch RNGs
(:mod:`liverseg.training.background`), so seed those too for bit-identical batches. Validation
runs in one worker at most (zero when ``num_workers`` is 0), so its batches arrive in the same
order every time and are identical with and without workers.

Several training processes (DDP, ``shard=(rank, processes)``): ``batch_size`` is this process'
part of the global batch; its loaders are sharded (:class:`~liverseg.training.patch_loader.PatchLoader`:
the centre kinds of the global batch are shared, cases and centres are the process' own) and its
augmentation workers are seeded with :func:`liverseg.training.distributed.rank_seed`, so the
processes train and validate on different patches.
"""
from __future__ import annotations

import contextlib
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from liverseg.planning.plans import ModelPlan, Plan
from liverseg.planning.spacing import is_anisotropic, mirror_axes
from liverseg.preprocessing.normalize import scheme_for_channel
from liverseg.training.augmentation import build_training_transforms, build_validation_transforms, sampling_region_size
from liverseg.training.background import background_augmenter
from liverseg.training.distributed import rank_seed
from liverseg.training.patch_loader import PatchLoader

log = logging.getLogger(__name__)


def model_mirror_axes(model: ModelPlan, spacing: Sequence[float]) -> tuple[int, ...]:
    """The axes ``model`` is mirrored along on a grid of ``spacing``, in training and at test time (none: ``()``)."""
    return mirror_axes(model.mirroring, spacing, one_slice=int(model.topology.patch_size[0]) == 1)


def is_mri(plan: Plan) -> bool:
    """Whether every image channel of the dataset is MRI (channel name other than CT)."""
    return all(scheme_for_channel(name) != "ct" for name in plan.channel_names.values())


class _Batches:
    """The trainer's view of augmented batches: target and mask split out of the label channels."""

    def __init__(self, batches: Iterator[dict[str, Any]] | None, has_mask: bool) -> None:
        self.batches = batches
        self.has_mask = has_mask

    def __iter__(self) -> "_Batches":
        return self

    def __next__(self) -> dict[str, Any]:
        if self.batches is None:
            raise StopIteration
        batch = next(self.batches)
        labels = batch["target"]
        return {
            "data": batch["data"],
            "target": labels[:, :1].to(torch.int64),
            "mask": labels[:, 1:2].to(torch.bool) if self.has_mask else None,
            "keys": list(batch["keys"]),
        }


@contextmanager
def training_batches(
    plan: Plan,
    model: ModelPlan,
    data_folder: Path,
    train_cases: Sequence[str],
    val_cases: Sequence[str],
    seed: int,
    num_workers: int,
    seed_stream: int = 0,
    batch_size: int | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[Iterator[dict], Iterator[dict]]]:
    """Yield ``(train_batches, val_batches)``, endless iterators of batches for ``model``; stop the workers on exit.

    Each ``next()`` gives ``{"data": float32 (B, C, *patch), "target": int64 (B, 1, *patch) in
    0..num_classes-1, "mask": bool (B, 1, *patch) or None, "keys": case ids}``; ``mask`` (where the
    loss counts) is given when the model has ``loss_mask_dilation_mm``. ``data_folder`` holds the
    model's preprocessed cases. ``num_workers`` background processes augment the training
    batches (0: in this process); ``seed_stream`` separates restarts of one run (e.g. the epoch a
    resumed run starts at); ``batch_size`` overrides the plan's. With no ``val_cases``,
    ``val_batches`` is empty. ``shard`` ``(rank, processes)``: this process' part of a DDP run.
    Sampling and augmentation settings: module docstring.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    data_folder = Path(data_folder)
    spec = plan.preprocessing[model.preprocessing]
    patch = tuple(int(p) for p in model.topology.patch_size)
    anisotropic = is_anisotropic(spec.target_spacing)
    region = sampling_region_size(patch, anisotropic)
    train_stream, val_stream = 2 * seed_stream, 2 * seed_stream + 1
    train_loader = PatchLoader(data_folder, train_cases, model, region, seed, train_stream, batch_size, shard)
    val_loader = PatchLoader(data_folder, val_cases, model, patch, seed, val_stream, batch_size, shard) if val_cases else None
    augmentation_seed = seed if shard is None else rank_seed(seed, shard[0])
    transforms = build_training_transforms(patch, anisotropic, mirror_axes=model_mirror_axes(model, spec.target_spacing),
                                           bias_field=is_mri(plan), slice_thickness=anisotropic)
    has_mask = model.loss_mask_dilation_mm is not None
    log.info("model %s: patch %s, training regions %s (%s), batch %d, %d training / %d validation case(s), %d worker(s)",
             model.name, list(patch), list(region), "anisotropic" if anisotropic else "isotropic", train_loader.batch_size,
             len(train_cases), len(val_cases), num_workers)
    with contextlib.ExitStack() as stack:
        train = stack.enter_context(background_augmenter(train_loader, transforms, num_workers, seed=augmentation_seed,
                                                         seed_stream=train_stream))
        val = None
        if val_loader is not None:
            val_transforms = build_validation_transforms(patch)
            val = stack.enter_context(background_augmenter(val_loader, val_transforms, min(num_workers, 1),
                                                           seed=augmentation_seed, seed_stream=val_stream))
        yield _Batches(train, has_mask), _Batches(val, has_mask)
