"""How long liverseg_plan takes on a full-size phantom set, against nnU-Net (prints timings; not a test).

Generates (or reuses) a ``full`` phantom dataset, then times, with ``-np`` workers:

1. integrity check + fingerprint, and planning (plans.json, plans.png, splits.json);
2. preprocessing for the full-resolution spec: with step 1, the work nnU-Net does in
   ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` (about 100 s for 16 such cases with ``-np 2`` on
   this machine kind, ../shared/FACTS.md), so the ratio compares like with like;
3. preprocessing for the other specs in use (the cascade's low-resolution grid), which nnU-Net's
   3d_fullres run does not do;
4. a rerun of the whole flow with everything up to date (idempotence costs).

Peak memory is the resident-set high-water mark of this process and of its largest worker.

    .venv/bin/python benchmarks/plan_speed.py [--num-cases 20] [-np 2] [--root /tmp/liverseg_plan_bench] [--preset default]
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import time
from pathlib import Path

NNUNET_SECONDS_PER_16_CASES = 100.0  # fingerprint 23 s + planning 6.5 s + 3d_fullres preprocessing 71 s


def _peak_mib() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> None:
    """Run the benchmark and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-cases", type=int, default=20)
    parser.add_argument("-np", "--num-workers", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("/tmp/liverseg_plan_bench"))
    parser.add_argument("--dataset", default="PhantomFull")
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()
    for name in ("raw", "preprocessed", "results"):
        os.environ[f"LIVERSEG_{name.upper()}"] = str(args.root / name)
    logging.basicConfig(level=logging.WARNING)

    # Imported after the stores are set, so nothing caches another location.
    from liverseg.data.phantom import generate_dataset
    from liverseg.paths import preprocessed_root, raw_root
    from liverseg.planning.plan_dataset import plan_dataset
    from liverseg.planning.report import format_plan
    from liverseg.preprocessing.run import preprocess_dataset

    raw = raw_root() / args.dataset
    if not (raw / "dataset.json").is_file() or len(list((raw / "labelsTr").glob("*.nii.gz"))) != args.num_cases:
        start = time.perf_counter()
        generate_dataset(raw, args.num_cases, size="full", num_workers=args.num_workers, overwrite=True)
        print(f"generated {args.num_cases} full phantom cases in {time.perf_counter() - start:.1f} s (not counted)")
    shutil.rmtree(preprocessed_root() / args.dataset, ignore_errors=True)

    start = time.perf_counter()
    result = plan_dataset(raw, num_workers=args.num_workers, preset=args.preset, preprocess=False)
    planned = time.perf_counter() - start
    specs = result.plan.specs_in_use()
    out = preprocessed_root() / args.dataset
    start = time.perf_counter()
    preprocess_dataset(raw, [specs["fullres"]], out, args.num_workers)
    fullres = time.perf_counter() - start
    others = [spec for key, spec in specs.items() if key != "fullres"]
    start = time.perf_counter()
    if others:
        preprocess_dataset(raw, others, out, args.num_workers)
    rest = time.perf_counter() - start
    start = time.perf_counter()
    plan_dataset(raw, num_workers=args.num_workers, preset=args.preset)
    rerun = time.perf_counter() - start
    own, children = _peak_mib()

    print(format_plan(result.plan))
    print()
    nnunet = NNUNET_SECONDS_PER_16_CASES * args.num_cases / 16
    same_work = planned + fullres
    print(f"{args.num_cases} cases, -np {args.num_workers}, preset {args.preset}:")
    print(f"  check + fingerprint            {result.seconds['fingerprint']:7.1f} s")
    print(f"  plan + plans.png + splits      {result.seconds['plan']:7.1f} s")
    print(f"  preprocess fullres             {fullres:7.1f} s")
    print(f"  = nnU-Net's work (3d_fullres)  {same_work:7.1f} s  vs nnU-Net ~{nnunet:.0f} s scaled to {args.num_cases} cases: "
          f"ratio {same_work / nnunet:.2f}")
    whole = same_work + rest
    print(f"  preprocess other specs ({len(others)})    {rest:7.1f} s  (whole flow {whole:.1f} s, ratio {whole / nnunet:.2f})")
    print(f"  rerun, everything up to date   {rerun:7.1f} s")
    print(f"  peak memory: this process {own:.0f} MiB, largest worker {children:.0f} MiB")


if __name__ == "__main__":
    main()
