"""liverseg_plan: check and fingerprint a dataset, plan its pipelines, make folds, preprocess."""
from __future__ import annotations

import argparse

from liverseg.cli.common import add_num_workers, add_verbose, run_command, setup_logging
from liverseg.planning.plan_dataset import plan_dataset, preprocess_plan
from liverseg.planning.report import format_plan


def build_parser() -> argparse.ArgumentParser:
    """Arguments of liverseg_plan."""
    parser = argparse.ArgumentParser(
        prog="liverseg_plan",
        description="Check a raw dataset, measure it (fingerprint.json), decide the spacing, patch sizes, networks and "
        "sampling of the multiclass, dual_binary and cascade pipelines (plans.json, plans.png, with the reason for "
        "every decision), make cross-validation folds (splits.json, kept once written) and preprocess every case, "
        "all into $LIVERSEG_PREPROCESSED/<dataset>/. Prints a summary of the plan; sizes are (z, y, x).",
    )
    parser.add_argument("-d", "--dataset", required=True,
                        help="dataset name, folder name or id (e.g. ATLAS, Dataset501_ATLAS, 501) (required)")
    add_num_workers(parser, 2, "worker processes (default: %(default)s; 1 runs in this process)")
    parser.add_argument("--preset", default="default", help="planner preset from liverseg_configs/defaults.json: "
                        "default, or fast (small network and patches for CPU runs) (default: %(default)s)")
    parser.add_argument("--gpu-memory-gb", type=float, default=None, help="memory budget for training one model, in GB "
                        "(default: the preset's, 8 for default, 2 for fast); estimates assume mixed precision")
    parser.add_argument("-p", "--overrides", default=None, help="JSON file shaped like plans.json with the values to "
                        "change; merged into the plan and validated (default: none)")
    parser.add_argument("--percentile", type=float, default=95.0, help="percentile of the bounding boxes each patch "
                        "must hold when memory allows (default: %(default)g)")
    parser.add_argument("--templates", action="append", default=[], metavar="DIR", help="extra folder of pipeline "
                        "templates (<pipeline>.json); may be repeated. $LIVERSEG_PREPROCESSED/templates is always read "
                        "(default: none)")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--no-preprocess", action="store_true", help="stop after writing plans.json and splits.json")
    steps.add_argument("--preprocess-only", action="store_true", help="only preprocess, with the existing (possibly "
                       "hand-edited) plans.json")
    parser.add_argument("--skip-verify", action="store_true", help="do not run the dataset integrity check first")
    add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_plan."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_workers < 1:
        parser.error("-np must be at least 1")
    if args.gpu_memory_gb is not None and args.gpu_memory_gb <= 0:
        parser.error("--gpu-memory-gb must be positive")
    if not 0 < args.percentile <= 100:
        parser.error("--percentile must be in (0, 100]")
    setup_logging(args.verbose)

    def body() -> int:
        if args.preprocess_only:
            folders = preprocess_plan(args.dataset, num_workers=args.num_workers)
            print("\n".join(str(f) for f in folders.values()))
            return 0
        result = plan_dataset(
            args.dataset,
            num_workers=args.num_workers,
            preset=args.preset,
            gpu_memory_gb=args.gpu_memory_gb,
            percentile=args.percentile,
            overrides=args.overrides,
            templates=args.templates,
            preprocess=not args.no_preprocess,
            verify=not args.skip_verify,
        )
        print(format_plan(result.plan))
        print(f"plan: {result.plan_path}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
