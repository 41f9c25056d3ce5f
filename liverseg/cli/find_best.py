"""liverseg_find_best: choose the best pipeline or ensemble on cross-validation and write inference.json."""
from __future__ import annotations

import argparse

from liverseg.cli.common import add_device, add_num_workers, add_verbose, run_command, setup_logging
from liverseg.inference.device import configure_threads
from liverseg.inference.models import CHECKPOINT_CHOICES
from liverseg.selection.find_best import find_best


def build_parser() -> argparse.ArgumentParser:
    """Arguments of liverseg_find_best."""
    parser = argparse.ArgumentParser(
        prog="liverseg_find_best",
        description="Predict every fold's validation cases with each trained pipeline (that fold's models only; "
        "<Results>/<Dataset>/<pipeline>/crossval/, resumable), score each pipeline and every ensemble of two or more "
        "(mean of whole-liver and tumour Dice, pooled lesion F1 breaking ties), decide which post-processing steps "
        "help, print the table, and write <Results>/<Dataset>/inference.json (what liverseg_predict then uses by "
        "default) and find_best.json. See docs/model_selection.md.",
    )
    parser.add_argument("-d", "--dataset", required=True, help="dataset name, folder name or id under $LIVERSEG_RESULTS")
    parser.add_argument("-c", "--pipeline", nargs="+", default=None, help="the pipelines to choose from, one or more "
                        "(default: every trained one)")
    parser.add_argument("-f", "--folds", nargs="+", default=None, help="folds to use (default: every fold of splits.json; "
                        "each pipeline must be trained on each)")
    parser.add_argument("--no-ensembles", dest="ensembles", action="store_false", help="do not try ensembles of pipelines")
    parser.add_argument("--no-optional-steps", dest="optional_steps", action="store_false", help="only decide on the "
                        "plan's post-processing steps, do not try the other registered ones")
    parser.add_argument("--tta", action="store_true", help="test-time mirroring while predicting the cases (4-8x slower)")
    parser.add_argument("--checkpoint", choices=CHECKPOINT_CHOICES, default="best", help="best (default: "
                        "checkpoint_best.pt, else checkpoint_latest.pt) or latest")
    add_device(parser)
    parser.add_argument("--fp32", action="store_true", help="full precision instead of bf16/fp16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs this process may use)")
    add_num_workers(parser, 2, "threads preparing the next cases while the network runs, and scoring cases "
                    "(default %(default)s)")
    add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_find_best."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        configure_threads(args.threads)
        result = find_best(args.dataset, args.pipeline, args.folds, ensembles=args.ensembles, tta=args.tta,
                           checkpoint=args.checkpoint, try_optional_steps=args.optional_steps,
                           num_workers=args.num_workers, device=args.device, use_bf16=False if args.fp32 else "auto")
        print(result.table())
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
