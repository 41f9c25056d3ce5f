"""``liverseg_convert``: turn a downloaded ATLAS 2023 or LiTS release into a raw dataset."""
from __future__ import annotations

import argparse
from pathlib import Path

from liverseg.cli.common import add_hidden_alias, add_num_workers, add_verbose, run_command, setup_logging
from liverseg.io.converters import convert_atlas, convert_lits

_CONVERTERS = {"atlas": (convert_atlas, "ATLAS"), "lits": (convert_lits, "LiTS")}


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of liverseg_convert."""
    parser = argparse.ArgumentParser(
        prog="liverseg_convert",
        description="Convert a downloaded dataset into $LIVERSEG_RAW/<name> (nnU-Net v2 raw layout). "
        "Prints the folder written.",
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="{atlas,lits}")
    helps = {
        "atlas": "ATLAS 2023 training release: atlas-train-dataset-1.0.1.zip or its extracted folder (any level)",
        "lits": "LiTS training data: folder holding volume-<i>.nii and segmentation-<i>.nii (any sub-folders), or one zip",
    }
    for name, (_, default_name) in _CONVERTERS.items():
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        p.add_argument("-i", "--input", required=True, type=Path, help="downloaded folder or zip file (required)")
        dataset = p.add_argument("-d", "--dataset", default=default_name,
                                 help="name of the raw dataset folder to write (default: %(default)s)")
        add_hidden_alias(p, "--dataset-name", dataset)  # its name before the flags were made consistent
        p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
        add_num_workers(p, 1, "parallel worker processes (default: %(default)s)")
        p.add_argument(
            "--tolerance", type=float, default=1e-3,
            help="largest label/image header difference repaired as float noise (mm or direction cosine; "
            "default: %(default)s)",
        )
        add_verbose(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_convert."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        convert, _ = _CONVERTERS[args.source]
        folder = convert(args.input, args.dataset, args.overwrite, args.num_workers, args.tolerance)
        print(folder)
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
