"""Seconds per case of the whole prediction (file in, label map and lesion report out) on this CPU (prints; not a test).

The case is the one nnU-Net v2's figures in ``../shared/FACTS.md`` are for: a ``full`` phantom of
60 x 320 x 320 voxels at 3 x 1.1 x 1.1 mm (phantom case 1 of seed 0, 60 slices around its liver,
its spacing set to 3 x 1.1 x 1.1 mm). The networks are those of the **default preset's plan** for a
set of ``full`` phantoms (planned once into ``--root``), with random weights: speed does not
depend on the weights. One fold, the multiclass pipeline (``--pipeline`` for another).

Each configuration runs in a fresh process (its peak resident memory, ``ru_maxrss``, is its own):
``liverseg.inference.run.predict_folder`` on the one file, one case after the other (``-np 0``),
after one warm-up forward pass (oneDNN picks its kernels on the first call; a cohort pays this
once). Printed: seconds per case and per stage (read, preprocess, network, map back,
post-processing, report, write), its CPU time, the share of the case's time inside the network's forward calls,
peak memory, and the ratio to nnU-Net v2 on this machine (150 s without mirroring, 1,600 s with its
default 8-pass mirroring). The load average is printed first: other jobs slow every number.

    .venv/bin/python benchmarks/predict_speed.py [--configs bf16 bf16-tta fp32] [--root DIR] [--threads 2]
        [--pipeline multiclass] [--shape 150 512 512] [--step 0.5] [--overlap N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from liverseg.data.phantom import generate_dataset
from liverseg.data.phantom_case import generate_case
from liverseg.inference.models import LoadedModel, LoadedPipeline
from liverseg.inference.predictor import Predictor
from liverseg.inference.run import predict_folder
from liverseg.networks import build_network
from liverseg.planning.plan_dataset import plan_dataset
from liverseg.planning.plans import load_plan
from liverseg.training.run import training_order

DATASET = "Dataset955_PredictSpeed"
CASE_SHAPE, CASE_SPACING = (60, 320, 320), (3.0, 1.1, 1.1)  # (z, y, x), as FACTS.md's nnU-Net figures
CONFIGS = {"bf16": (True, False), "bf16-tta": (True, True), "fp32": (False, False), "fp32-tta": (False, True)}
NNUNET_SECONDS = {False: 150.0, True: 1600.0}  # without mirroring; with its default 8-pass mirroring


class TimedNetwork(nn.Module):
    """Runs ``inner`` and adds up the wall time of its forward calls (synchronous on the CPU)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seconds = inner, 0.0
        self.in_channels = getattr(inner, "in_channels", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.inner(x)
        self.seconds += time.perf_counter() - start
        return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare(root: Path, shape: list[int] | None) -> tuple[Path, Path]:
    """The default preset's plan for ``full`` phantoms (made once) and the case file; returns (plans.json, case)."""
    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        os.environ[f"LIVERSEG_{name.upper()}"] = str(root / name)
    plans = root / "preprocessed" / DATASET / "plans.json"
    if not plans.is_file():
        generate_dataset(root / "raw" / DATASET, 4, size="full", num_workers=2)
        plan_dataset(DATASET, num_workers=2, preset="default", verify=False, preprocess=False)
    case = root / "case" / ("case_0000.nii.gz" if shape is None else f"case_{'x'.join(map(str, shape))}_0000.nii.gz")
    if not case.is_file():
        case.parent.mkdir(exist_ok=True)
        if shape is None:
            phantom = generate_case(1, 0, "full")  # 77 x 320 x 320
            liver_z = np.flatnonzero(phantom.label.any(axis=(1, 2)))
            start = int(np.clip((liver_z[0] + liver_z[-1]) // 2 - CASE_SHAPE[0] // 2, 0,
                                phantom.image.shape[0] - CASE_SHAPE[0]))
            array = phantom.image[start:start + CASE_SHAPE[0]]
        else:  # a larger volume for the memory bound: case 0 (75 x 512 x 512) stacked with its mirror image along z
            big = generate_case(0, 0, "full").image
            copies = [big if k % 2 == 0 else big[::-1] for k in range(-(-shape[0] // big.shape[0]))]
            array = np.concatenate(copies)[: shape[0], : shape[1], : shape[2]]
        image = sitk.GetImageFromArray(array.astype(np.int16))
        image.SetSpacing(CASE_SPACING[::-1])
        sitk.WriteImage(image, str(case), useCompression=True)
    return plans, case


def run_one(plans: Path, case: Path, pipeline: str, config: str, threads: int, step: float, copies: int = 0) -> dict:
    """Predict the case with one configuration in this process; returns the measurements.

    With ``copies`` > 0, a folder of that many copies of the case is predicted twice instead, one
    case after the other (``-np 0``) and overlapped (``-np 1``), and the wall times are returned.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    use_bf16, tta = CONFIGS[config]
    plan = load_plan(plans)
    spec = plan.pipeline(pipeline)
    timed, models = [], []
    for model in training_order(spec.models):
        network = build_network(model.topology.network, len(plan.channel_names), model.num_classes,
                                **{**model.topology.network_kwargs(), "deep_supervision": False})
        timed.append(TimedNetwork(network.eval()))
        models.append(LoadedModel(model, plan.preprocessing[model.preprocessing], [timed[-1]], [Path("random weights")]))
    predictor = Predictor(LoadedPipeline(plan.dataset, plan, spec, models, [0], plans, list(spec.postprocessing)),
                          device="cpu", tta=tta, use_bf16=use_bf16, step=step)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=use_bf16):
        for net, model in zip(timed, models):
            net(torch.zeros(2, len(plan.channel_names), *model.plan.topology.patch_size))
    warmup = time.perf_counter() - start
    for net in timed:
        net.seconds = 0.0
    if copies:
        return _overlap(case, predictor, copies)
    cpu_start = _cpu_seconds()
    with tempfile.TemporaryDirectory() as out:
        summary = predict_folder(case, out, predictor, num_workers=0)
    cpu = _cpu_seconds() - cpu_start
    stages = next(iter(summary.timings.values()))
    return dict(config=config, seconds=sum(stages.values()), cpu_seconds=cpu, stages=stages,
                forward=sum(n.seconds for n in timed), warmup=warmup,
                peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                patches={m.name: list(m.plan.topology.patch_size) for m in models},
                mirror=predictor.describe()["mirror_axes"],
                target_spacing={m.name: list(m.spec.target_spacing) for m in models},
                features={m.name: list(m.plan.topology.features_per_stage) for m in models})


def _overlap(case: Path, predictor: Predictor, copies: int) -> dict:
    """Wall seconds of a folder of ``copies`` cases with -np 0 and -np 1."""
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "in"
        inputs.mkdir()
        for k in range(copies):
            (inputs / f"case{k}_0000.nii.gz").write_bytes(case.read_bytes())
        for workers in (0, 1):
            start = time.perf_counter()
            summary = predict_folder(inputs, Path(folder) / f"out{workers}", predictor, num_workers=workers)
            seconds[workers] = time.perf_counter() - start
            stages = summary.timings
    outside = sum(v for t in stages.values() for k, v in t.items() if k not in ("network",))
    return {"copies": copies, "serial": seconds[0], "overlapped": seconds[1], "outside_network": outside}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["bf16", "bf16-tta", "fp32"])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "liverseg_predict_speed",
                        help="where the phantom set, its plan and the case are kept between runs")
    parser.add_argument("--pipeline", default="multiclass")
    parser.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"),
                        help="predict a volume of this shape at 3 x 1.1 x 1.1 mm instead "
                        "(e.g. 150 512 512 for the memory bound)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step", type=float, default=0.5, help="window step (1 = fewer windows; memory does not change)")
    parser.add_argument("--overlap", type=int, default=0, metavar="N",
                        help="instead: a folder of N copies of the case, -np 0 against -np 1 (first config only)")
    parser.add_argument("--single", choices=sorted(CONFIGS), help=argparse.SUPPRESS)  # one run, JSON to stdout
    args = parser.parse_args()
    plans, case = prepare(args.root, args.shape)
    if args.single:
        print(json.dumps(run_one(plans, case, args.pipeline, args.single, args.threads, args.step, args.overlap)))
        return
    shape = sitk.ReadImage(str(case)).GetSize()[::-1]
    print(f"torch {torch.__version__}, {args.threads} thread(s); case {'x'.join(map(str, shape))} voxels at "
          f"{'x'.join(map(str, CASE_SPACING))} mm; pipeline {args.pipeline}, one fold, random weights, step {args.step}")
    results = []
    for config in args.configs:
        load = os.getloadavg()[0]
        command = [sys.executable, __file__, "--single", config, "--root", str(args.root), "--pipeline", args.pipeline,
                   "--threads", str(args.threads), "--step", str(args.step), "--overlap", str(args.overlap),
                   *(["--shape", *map(str, args.shape)] if args.shape else [])]
        r = json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()[-1])
        r["load"] = load
        if args.overlap:
            print(f"{config}, {r['copies']} cases: -np 0 {r['serial']:.1f} s, -np 1 {r['overlapped']:.1f} s "
                  f"({r['serial'] / r['overlapped']:.2f}x); the stages outside the network take "
                  f"{r['outside_network']:.1f} s of the overlapped run's case time; load {load:.1f}")
            return
        results.append(r)
        if len(results) == 1:
            print(f"plan: target spacing {r['target_spacing']}, patch {r['patches']}, features {r['features']}")
            print(f"{'config':9} {'s/case':>7} {'CPU s':>6} {'forward':>8} {'read':>5} {'prep':>5} {'net':>6} "
                  f"{'map':>5} {'post':>5} "
                  f"{'report':>6} {'write':>5} {'warm-up':>7} {'peak GiB':>8} {'vs nnU-Net':>10} {'load':>5}  mirror")
        s = r["stages"]
        versus = r["seconds"] / NNUNET_SECONDS[CONFIGS[config][1]]
        print(f"{config:9} {r['seconds']:7.1f} {r['cpu_seconds']:6.0f} {r['forward'] / r['seconds']:8.1%} "
              f"{s['read']:5.1f} {s['preprocess']:5.1f} "
              f"{s['network']:6.1f} {s['map_back']:5.1f} {s['postprocess']:5.1f} {s['report']:6.1f} {s['write']:5.1f} "
              f"{r['warmup']:7.1f} {r['peak_gib']:8.2f} {versus:9.2f}x {r['load']:5.1f}  {r['mirror']}", flush=True)
    print("'CPU s' = CPU time of the case (nnU-Net: 256-290 CPU s for its 150 s); 'forward' = share of the case's "
          "time inside the network's forward calls; 'net' = sliding window and fold averaging; 'vs nnU-Net' = seconds "
          "/ nnU-Net v2's 150 s without mirroring (or its 1,600 s with 8-pass mirroring for -tta configurations), "
          "same case, same machine kind")


if __name__ == "__main__":
    main()
