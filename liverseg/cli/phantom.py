"""liverseg_phantom: write a synthetic ATLAS-like liver MRI dataset into the raw store."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from liverseg.cli.common import add_num_workers, add_verbose, run_command, setup_logging
from liverseg.data.phantom import generate_dataset
from liverseg.data.phantom_case import SIZES
from liverseg.data.phantom_preview import write_preview
from liverseg.errors import LiversegError
from liverseg.paths import raw_root


def build_parser() -> argparse.ArgumentParser:
    """Arguments of liverseg_phantom."""
    parser = argparse.ArgumentParser(
        prog="liverseg_phantom",
        description="Generate synthetic contrast-enhanced abdominal MRI cases with liver and tumour labels "
        "(nnU-Net v2 raw layout) to try the pipeline end to end without real data. A case depends only on "
        "the seed and its index. Prints the dataset folder.",
    )
    parser.add_argument("-d", "--dataset", required=True,
                        help="dataset folder name, e.g. Phantom or Dataset900_Phantom (required)")
    parser.add_argument("-n", "--num-cases", type=int, default=20, help="number of cases (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the set (default: %(default)s)")
    parser.add_argument("--size", choices=SIZES, default="full",
                        help="full: real scan sizes (256-512 in-plane, 40-100 slices, 350-450 mm field of view); "
                        "small (about 128x128x32) and tiny (about 48x48x16, for tests) shrink the patient to fit, "
                        "at the same ATLAS spacings (default: %(default)s)")
    add_num_workers(parser, min(4, os.cpu_count() or 1), "worker processes (default: number of CPUs, at most 4)")
    parser.add_argument("--preview", action="store_true",
                        help="also write <dataset>/preview.png, a montage of slices with label outlines")
    parser.add_argument("--output-dir", help="parent folder of the dataset (default: $LIVERSEG_RAW)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset folder's imagesTr, labelsTr, dataset.json and preview")
    add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_phantom."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        name = args.dataset
        if not name or Path(name).name != name or name in (".", ".."):
            raise LiversegError(f"dataset name '{name}' must be a plain folder name (no '/'); "
                                "use --output-dir for the location")
        parent = Path(args.output_dir).expanduser() if args.output_dir else raw_root()
        root = generate_dataset(parent / name, args.num_cases, seed=args.seed, size=args.size,
                                num_workers=args.num_workers, overwrite=args.overwrite)
        if args.preview:
            write_preview(root, root / "preview.png")
        print(root)
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
