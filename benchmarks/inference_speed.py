"""Seconds per case of the sliding window on this CPU, with and without test-time mirroring (prints; not a test).

An nnU-Net-sized U-Net (6 stages, 32-320 features, in-plane kernels and no z pooling in the first
two stages, random weights, patch 40x224x224) predicts one preprocessed volume: a ``full`` phantom
case of 60x320x320 voxels at 3x1.1x1.1 mm resampled to a target spacing. The default target is
liverseg's rule for the phantom set (median spacing, 3.8x0.94x0.94 mm: 47x374x374, 18 windows);
``--target-spacing 2.66 0.94 0.94`` is nnU-Net's plan for the same data (68x374x374, the 27
windows nnU-Net needs), the like-for-like comparison of the engine.

Each configuration runs in a fresh process, so its peak resident memory (``ru_maxrss``) is its
own. Printed per configuration: seconds per case (wall and CPU time; nnU-Net used 256-290 CPU
seconds for its 150 s), the share of that time inside the network's forward calls (the rest is
overhead), seconds per window pass, peak memory, and the ratio to nnU-Net v2 on this machine
(``../shared/FACTS.md``: 150 s without mirroring, 1,600 s with its 8-pass mirroring). The load
average is printed first: other jobs on a 2-core machine slow every number here.

    .venv/bin/python benchmarks/inference_speed.py [--configs fp32 bf16 bf16-tta fp32-tta]
        [--target-spacing 3.8 0.94 0.94 | --shape Z Y X] [--patch 40 224 224] [--batch-windows 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch
from torch import nn

from liverseg.inference import compute_steps, mirror_combinations, predict_sliding_window
from liverseg.networks import build_network
from liverseg.preprocessing.resample import target_shape

TOPOLOGY = dict(kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                strides=[[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                features_per_stage=[32, 64, 128, 256, 320, 320])
NUM_CLASSES = 3
CASE_SHAPE, CASE_SPACING = (60, 320, 320), (3.0, 1.1, 1.1)  # a `full` phantom case, (z, y, x)
CONFIGS = {  # name: (use_bf16, mirror axes)
    "fp32": (False, None),
    "bf16": (True, None),
    "fp32-tta": (False, (1, 2)),
    "bf16-tta": (True, (1, 2)),
    "bf16-tta8": (True, (0, 1, 2)),
}
NNUNET_SECONDS = {1: 150.0, 8: 1600.0}  # FACTS.md: nnU-Net v2.8.1, 3d_fullres, one fold, this machine


class TimedNetwork(nn.Module):
    """Runs ``inner`` and adds up the wall time of its forward calls (synchronous on the CPU)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seconds, self.calls = inner, 0.0, 0
        self.in_channels = getattr(inner, "in_channels", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.inner(x)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_one(name: str, shape: list[int], patch: list[int], batch_windows: int, threads: int) -> dict:
    """Predict one volume with configuration ``name``; returns the measurements."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    use_bf16, mirror = CONFIGS[name]
    net = TimedNetwork(build_network("unet", 1, NUM_CLASSES, deep_supervision=False, **TOPOLOGY))
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=use_bf16):
        net.eval()(torch.zeros(batch_windows, 1, *patch))  # first call: oneDNN picks and builds its kernels
    warmup = time.perf_counter() - start
    net.seconds, net.calls = 0.0, 0
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    probabilities = predict_sliding_window(net, image, patch, NUM_CLASSES, mirror_axes=mirror,
                                           batch_windows=batch_windows, use_bf16=use_bf16)
    total, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    windows = math.prod(len(s) for s in compute_steps(shape, patch))
    return dict(name=name, seconds=total, cpu_seconds=cpu, forward=net.seconds, warmup=warmup, windows=windows,
                passes=len(mirror_combinations(mirror)), calls=net.calls,
                peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                output_mib=probabilities.numel() * 4 / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS),
                        default=["fp32", "bf16", "bf16-tta", "fp32-tta"])
    parser.add_argument("--target-spacing", nargs=3, type=float, default=[3.8, 0.94, 0.94], metavar=("Z", "Y", "X"),
                        help="mm; the 60x320x320 case at 3x1.1x1.1 mm is resampled to this grid")
    parser.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"),
                        help="predict a volume of this shape instead (overrides --target-spacing)")
    parser.add_argument("--patch", nargs=3, type=int, default=[40, 224, 224], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-windows", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--single", choices=sorted(CONFIGS), help=argparse.SUPPRESS)  # one run, JSON to stdout
    args = parser.parse_args()
    if args.shape is None:
        args.shape = list(target_shape(CASE_SHAPE, CASE_SPACING, args.target_spacing))
    if args.single:
        print(json.dumps(run_one(args.single, args.shape, args.patch, args.batch_windows, args.threads)))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), volume {'x'.join(map(str, args.shape))}, patch "
          f"{'x'.join(map(str, args.patch))}, step 0.5, {args.batch_windows} window(s) per forward pass")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'config':10} {'s/case':>8} {'CPU s':>7} {'forward':>8} {'s/pass':>7} {'warm-up':>8} {'peak GiB':>9} "
          f"{'vs nnU-Net':>11}")
    for name in args.configs:
        command = [sys.executable, __file__, "--single", name, "--shape", *map(str, args.shape), "--patch",
                   *map(str, args.patch), "--batch-windows", str(args.batch_windows), "--threads", str(args.threads)]
        r = json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()[-1])
        per_pass = r["seconds"] / (r["windows"] * r["passes"])
        reference = NNUNET_SECONDS[1 if r["passes"] == 1 else 8]
        versus = f"{r['seconds'] / reference:10.2f}x"
        print(f"{name:10} {r['seconds']:8.1f} {r['cpu_seconds']:7.0f} {r['forward'] / r['seconds']:8.1%} "
              f"{per_pass:7.2f} {r['warmup']:8.1f} {r['peak_gib']:9.2f} {versus}", flush=True)
    print(f"{r['windows']} windows; 'forward' = share of the time inside the network; 'vs nnU-Net' = seconds / "
          f"nnU-Net's {NNUNET_SECONDS[1]:.0f} s without mirroring, or for mirrored runs / its "
          f"{NNUNET_SECONDS[8]:.0f} s with its default 8-pass mirroring, on this machine")


if __name__ == "__main__":
    main()
