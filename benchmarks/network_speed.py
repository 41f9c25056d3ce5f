"""How fast the U-Net trains on this CPU: one forward+backward step, fp32 and bf16 autocast (prints; not a test).

Two networks: a fast-preset-like one (4 stages, 16-128 features, patch 32x96x96, batch 2) and an
nnU-Net-sized one (6 stages, 32-320 features, patch 40x224x224, batch 2, in-plane kernels and no
z pooling in the first two stages, as nnU-Net plans thick-slice liver MRI). For each it prints the
parameter count, the estimated activation memory, the seconds per step (best of the repeats, the
least disturbed by other load) and the peak resident memory of the process.

    .venv/bin/python benchmarks/network_speed.py [--repeats 3] [--threads 2] [--only fast|nnunet]

Measured (November 2026, AVX-512 CPU shared with other jobs, load average 2-5, so upper bounds),
seconds per forward+backward step, batch 2:

    1 thread      fp32    bf16 autocast
    fast          2.1     0.83  (2.5x)
    nnU-Net-size  54.6    33.6  (1.6x)   peak RSS 11.6 GiB, activation estimate 8.8 GiB

With 2 threads on the loaded machine the same steps took 2-4x *longer* (4.7 s / 3.9 s for the
fast net): OpenMP threads wait for a core that another process holds. Use one torch thread per
free core, not more. The test-size net (3 stages, 8-32 features, 16x32x32) takes 28 ms per step.
"""
from __future__ import annotations

import argparse
import resource
import time
from contextlib import nullcontext

import torch

from liverseg.networks import build_network

NETWORKS = {
    "fast": dict(
        patch=(32, 96, 96),
        topology=dict(kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                      strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                      features_per_stage=[16, 32, 64, 128]),
    ),
    "nnunet": dict(
        patch=(40, 224, 224),
        topology=dict(kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                      strides=[[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                      features_per_stage=[32, 64, 128, 256, 320, 320]),
    ),
}
BATCH = 2
NUM_CLASSES = 3


def train_step(net: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, bf16: bool) -> None:
    """Forward, a cross-entropy loss over all deep-supervision outputs, backward."""
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        outputs = net(x)
    loss = 0.0
    for output in outputs:
        factor = [t // o for t, o in zip(target.shape[1:], output.shape[2:])]
        small = target[:, ::factor[0], ::factor[1], ::factor[2]]
        loss = loss + torch.nn.functional.cross_entropy(output.float(), small)
    loss.backward()


def best_time(net: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, bf16: bool, repeats: int) -> float:
    train_step(net, x, target, bf16)  # warm-up: kernel selection, gradient buffers
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_step(net, x, target, bf16)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=sorted(NETWORKS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"batch {BATCH}, best of {args.repeats}")
    for name, spec in NETWORKS.items():
        if args.only and name != args.only:
            continue
        net = build_network("unet", 1, NUM_CLASSES, **spec["topology"])
        x = torch.randn(BATCH, 1, *spec["patch"])
        target = torch.randint(0, NUM_CLASSES, (BATCH, *spec["patch"]))
        estimate = net.activation_memory_bytes(spec["patch"], BATCH) / 2**30
        print(f"\n{name}: patch {'x'.join(map(str, spec['patch']))}, features {spec['topology']['features_per_stage']}, "
              f"{net.num_parameters() / 1e6:.2f} M parameters, activation estimate {estimate:.2f} GiB fp32")
        fp32 = best_time(net, x, target, bf16=False, repeats=args.repeats)
        print(f"  fp32            {fp32:7.2f} s/step  {BATCH / fp32:6.2f} patches/s")
        bf16 = best_time(net, x, target, bf16=True, repeats=args.repeats)
        print(f"  bf16 autocast   {bf16:7.2f} s/step  {BATCH / bf16:6.2f} patches/s  ({fp32 / bf16:.2f}x fp32)")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"  process peak RSS so far {peak:.2f} GiB")


if __name__ == "__main__":
    main()
