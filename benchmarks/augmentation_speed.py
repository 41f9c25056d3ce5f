"""Seconds per batch of the training augmentation pipeline on this CPU (prints timings; not a test).

Two batch shapes: 2 x 1 x 32 x 96 x 96 (the fast preset) and 2 x 1 x 40 x 224 x 224 (nnU-Net's
patch for ATLAS-like data). Each sample starts as the region :func:`sampling_region_size` asks the
sampler for, with three labels, and goes through the full pipeline (bias field, slice thickness and
deep-supervision targets on). Timed three ways:

- ``in-process``: the default pipeline over a batch in this process, one torch thread (what one
  worker does), with linear and with nearest label interpolation;
- ``spatial always``: the same with rotation and scaling on every sample (the worst case);
- ``1 worker``: seconds between batches delivered by :func:`background_augmenter` with one worker
  (default pipeline), including the transfer to this process.

    .venv/bin/python benchmarks/augmentation_speed.py [--batches 20]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from batchgenerators.dataloading.data_loader import DataLoader
from scipy import ndimage

from liverseg.training.augmentation import build_training_transforms, sampling_region_size
from liverseg.training.background import PerSampleTransform, background_augmenter

SHAPES = {"fast preset": (32, 96, 96), "nnU-Net size": (40, 224, 224)}
DS_SCALES = [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25], [0.25, 0.125, 0.125]]


class RegionLoader(DataLoader):
    """Cuts batches from a few pre-made regions, as a sampler over memory-mapped cases would."""

    def __init__(self, regions: list[tuple[np.ndarray, np.ndarray]], batch_size: int = 2) -> None:
        super().__init__(None, batch_size, 1, infinite=True)
        self.regions = regions
        self.indices = list(range(len(regions)))

    def generate_train_batch(self) -> dict:
        chosen = np.random.choice(len(self.regions), self.batch_size)
        return {"data": np.stack([self.regions[i][0] for i in chosen]),
                "seg": np.stack([self.regions[i][1] for i in chosen])}


def make_regions(region: tuple[int, ...], count: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """Smooth random images (z-scored) with labels 0/1/2 from two thresholds."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        image = ndimage.gaussian_filter(rng.normal(size=region), (1, 6, 6)).astype(np.float32)
        image = (image - image.mean()) / image.std()
        seg = np.digitize(image, [0.5, 1.5]).astype(np.int16)
        out.append((image[None], seg[None]))
    return out


def time_in_process(transform: PerSampleTransform, loader: RegionLoader, batches: int) -> float:
    """Mean seconds per batch over ``batches`` batches (after one warm-up batch)."""
    transform(**next(loader))
    total = 0.0
    for _ in range(batches):
        batch = next(loader)
        start = time.perf_counter()
        transform(**batch)
        total += time.perf_counter() - start
    return total / batches


def time_one_worker(pipeline, loader: RegionLoader, batches: int) -> float:
    """Mean seconds between batches delivered by one background worker, in the steady state.

    The first few batches come from the queues the worker filled ahead; they are taken untimed.
    """
    with background_augmenter(loader, pipeline, num_workers=1, num_cached_per_worker=1, seed=0) as stream:
        for _ in range(4):
            next(stream)
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    np.random.seed(0)
    torch.manual_seed(0)
    print(f"{'batch':<30} {'region':<11} {'in-process':>10} {'(nearest)':>10} "
          f"{'spatial always':>14} {'(nearest)':>10} {'1 worker':>9}")
    for name, patch in SHAPES.items():
        region = sampling_region_size(patch, anisotropic=True)
        loader = RegionLoader(make_regions(region))
        times = []
        for p_spatial in (0.2, 1.0):
            for labels in ("linear", "nearest"):
                pipeline = build_training_transforms(
                    patch, True, mirror_axes=(1, 2), bias_field=True, slice_thickness=True,
                    deep_supervision_scales=DS_SCALES, p_rotation=p_spatial, p_scaling=p_spatial,
                    label_interpolation=labels)
                times.append(time_in_process(PerSampleTransform(pipeline), loader, args.batches))
        default = build_training_transforms(patch, True, mirror_axes=(1, 2), bias_field=True, slice_thickness=True,
                                            deep_supervision_scales=DS_SCALES)
        times.append(time_one_worker(default, loader, args.batches))
        label = f"2x1x{'x'.join(map(str, patch))} ({name})"
        print(f"{label:<30} {'x'.join(map(str, region)):<11} {times[0]:>9.3f}s {times[1]:>9.3f}s "
              f"{times[2]:>13.3f}s {times[3]:>9.3f}s {times[4]:>8.3f}s")

if __name__ == "__main__":
    main()
