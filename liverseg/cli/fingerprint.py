"""liverseg_fingerprint: check a raw dataset and measure it (fingerprint.json + fingerprint.png)."""
from __future__ import annotations

import argparse

from liverseg.cli.common import add_num_workers, add_verbose, run_command, setup_logging
from liverseg.data.integrity import verify_dataset
from liverseg.fingerprint.dataset import format_summary, write_fingerprint
from liverseg.io.dataset import open_dataset
from liverseg.io.atomic import read_json


def build_parser() -> argparse.ArgumentParser:
    """Arguments of liverseg_fingerprint."""
    parser = argparse.ArgumentParser(
        prog="liverseg_fingerprint",
        description="Check a raw dataset for errors, then measure spacings, shapes, liver and lesion "
        "bounding boxes and foreground intensities into $LIVERSEG_PREPROCESSED/<dataset>/fingerprint.json "
        "(+ fingerprint.png). Sizes are printed in (z, y, x) order.",
    )
    parser.add_argument("-d", "--dataset", required=True,
                        help="dataset name, folder name or id (e.g. ATLAS, Dataset501_ATLAS, 501) (required)")
    add_num_workers(parser, 2, "worker processes (default: %(default)s; 1 runs in this process)")
    checks = parser.add_mutually_exclusive_group()
    checks.add_argument("--verify-only", action="store_true", help="only run the integrity check and print its report")
    checks.add_argument("--skip-verify", action="store_true", help="do not run the integrity check first")
    add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_fingerprint."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_workers < 1:
        parser.error("-np must be at least 1")
    setup_logging(args.verbose)

    def body() -> int:
        dataset = open_dataset(args.dataset)
        if args.verify_only:
            report = verify_dataset(dataset, num_workers=args.num_workers)
            print(report.format())
            report.raise_if_errors()
            return 0
        path = write_fingerprint(dataset, num_workers=args.num_workers, verify=not args.skip_verify)
        print(format_summary(read_json(path)))
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
