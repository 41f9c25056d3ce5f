"""liverseg_demo: the whole product on built-in phantom data, on the CPU, within a time budget."""
from __future__ import annotations

import argparse
from pathlib import Path

from liverseg.cli.common import add_device, add_num_workers, add_verbose, run_command, setup_logging
from liverseg.data.phantom import SIZES
from liverseg.demo.run import DEFAULT_CASES, run_demo

DEFAULT_WORKDIR = Path("liverseg_demo")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of liverseg_demo."""
    parser = argparse.ArgumentParser(
        prog="liverseg_demo",
        description="Generate phantom MRI data, plan it (fast preset), train the recommended pipeline on fold 0 within "
        "the time budget, predict held-out phantoms (mirroring, post-processing, lesion reports), evaluate them "
        "(ATLAS metrics, lesion detection) and draw overview.png. Everything goes into --workdir.",
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="folder for the demo's data, models and outputs (default: ./%(default)s); a previous "
                        "demo in it is replaced")
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget of the whole demo (default %(default)s)")
    parser.add_argument("-n", "--num-cases", type=int, default=DEFAULT_CASES,
                        help="training phantoms (default %(default)s, as many as ATLAS 2023 has volumes)")
    parser.add_argument("--num-test", type=int, default=5, help="held-out test phantoms (default %(default)s)")
    parser.add_argument("--size", choices=SIZES, default="small", help="phantom size (default %(default)s; tiny runs "
                        "in about a minute but learns little)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default %(default)s)")
    add_device(parser)
    add_num_workers(parser, 2, "worker processes for data generation, planning and evaluation (default %(default)s)")
    add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_demo."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        result = run_demo(args.workdir, minutes=args.minutes, num_cases=args.num_cases, num_test=args.num_test,
                          seed=args.seed, device=args.device, num_workers=args.num_workers, size=args.size)
        print(result.report())
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
