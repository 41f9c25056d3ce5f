"""Training throughput on this CPU for the fast preset of a ``small`` phantom (prints timings; not a test).

Makes a ``small`` phantom dataset (or reuses ``--root``), plans it with ``--preset fast`` and times:

1. **network step**: one optimiser step (forward, deep-supervision loss, backward, clipping,
   SGD) of the multiclass model on a batch already in memory, for 1 and 2 torch threads, fp32 and
   bf16 autocast, in the layout the trainer uses on a CPU (channels last,
   :mod:`liverseg.networks.memory_format`) and in PyTorch's default: what the CPU itself can do;
2. **training loop**: :func:`liverseg.training.trainer.train_model` for two epochs (no validation)
   with 0, 1 and 2 augmentation workers, reporting the second epoch (the first includes one-off
   warm-up): seconds per iteration, patches per second, and the share of the iterations' time spent
   waiting for the next batch (``data_wait``). Workers are restarted every epoch, which is included.

The machine is shared: the load average is printed with each block; compare numbers from one run.

    .venv/bin/python benchmarks/training_speed.py [--cases 8] [--iterations 20] [--root DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from liverseg.data.phantom import generate_dataset
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.planning.plans import load_plan
from liverseg.training.data import training_batches
from liverseg.training.settings import TrainSettings
from liverseg.training.trainer import build_parts, fold_cases, preprocessed_folder, train_model, train_step

DATASET = "Dataset950_SpeedPhantom"


def prepare(root: Path, cases: int) -> Path:
    """A planned, preprocessed small phantom under ``root``; returns its plans.json."""
    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        os.environ[f"LIVERSEG_{name.upper()}"] = str(root / name)
    plans = root / "preprocessed" / DATASET / "plans.json"
    if not plans.is_file():
        generate_dataset(root / "raw" / DATASET, cases, size="small", num_workers=2)
        plan_dataset(DATASET, num_workers=2, preset="fast", verify=False)
    return plans


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def time_steps(plan, model, threads: int, precision: str, steps: int, default_layout: bool = False) -> float:
    """Median seconds of one optimiser step on an in-memory batch (``default_layout``: not channels last)."""
    torch.set_num_threads(threads)
    settings = TrainSettings.from_overrides(model, num_workers=0, precision=precision, device="cpu")
    torch.manual_seed(0)
    parts = build_parts(model, len(plan.channel_names), settings, torch.device("cpu"))
    if default_layout:
        parts.network.to(memory_format=torch.contiguous_format)
        parts = dataclasses.replace(parts, memory_format=torch.contiguous_format)
    folder = preprocessed_folder(plan, model)
    train_cases, val_cases, _ = fold_cases(plan, folder, 0)
    with training_batches(plan, model, folder, train_cases, val_cases, seed=0, num_workers=0) as (batches, _):
        batch = next(batches)
    for _ in range(2):
        train_step(parts, batch)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(parts, batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_loop(plan, model, workers: int, threads: int, precision: str, iterations: int, results: Path) -> dict:
    """The second epoch's record of a two-epoch run without validation."""
    torch.set_num_threads(threads)
    settings = TrainSettings.from_overrides(model, epochs=2, iterations_per_epoch=iterations, validation_iterations=0,
                                            num_workers=workers, precision=precision, device="cpu", final_validation=False)
    folder = results / f"w{workers}_t{threads}_{precision}"
    return train_model(plan, model, 0, folder, settings)["history"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8, help="phantom cases to make (default 8)")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per timed epoch (default 20)")
    parser.add_argument("--steps", type=int, default=8, help="timed network steps per setting (default 8)")
    parser.add_argument("--root", type=Path, default=None, help="folder for the stores (default: a temporary folder)")
    parser.add_argument("--models", default="multiclass", help="comma-separated models of the pipelines (default multiclass)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as temporary:
        root = args.root or Path(temporary)
        plan = load_plan(prepare(root, args.cases))
        models = {m.name: m for p in plan.pipelines if p.emitted for m in p.models}
        for name in args.models.split(","):
            model = models[name]
            patch = "x".join(map(str, model.topology.patch_size))
            print(f"\n{name}: patch {patch}, batch {model.batch_size}, features {list(model.topology.features_per_stage)}")
            print(f"network step (batch in memory), {load()}")
            best = None
            for threads in (1, 2):
                for precision in ("fp32", "bf16"):
                    seconds = time_steps(plan, model, threads, precision, args.steps)
                    default = time_steps(plan, model, threads, precision, args.steps, default_layout=True)
                    print(f"  {threads} thread(s) {precision:5s} {seconds:6.3f} s/step  "
                          f"{model.batch_size / seconds:6.2f} patches/s  (default layout {default:6.3f} s/step, "
                          f"{default / seconds:4.2f}x)")
                    if best is None or seconds < best[0]:
                        best = (seconds, threads, precision)
            _, threads, precision = best
            print(f"training loop, {threads} thread(s) {precision}, second epoch of {args.iterations} iterations, {load()}")
            for workers in (0, 1, 2):
                record = time_loop(plan, model, workers, threads, precision, args.iterations, root / "results" / name)
                per_iteration = record["epoch_seconds"] / args.iterations
                print(f"  {workers} worker(s): {per_iteration:6.3f} s/iteration  {model.batch_size / per_iteration:6.2f} "
                      f"patches/s  waiting for data {100 * record['data_wait']:4.1f}%")
        print(f"done, {load()}")


if __name__ == "__main__":
    main()
