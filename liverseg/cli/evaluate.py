"""liverseg_evaluate: segmentation (and lesion detection) metrics of predicted label maps."""
from __future__ import annotations

import argparse
from pathlib import Path

from liverseg.cli.common import run_command, setup_logging
from liverseg.evaluation.evaluate import evaluate_folders
from liverseg.evaluation.profiles import ASSD_DEFINITIONS, HD95_DEFINITIONS, SURFACES, get_profile, profile_names
from liverseg.evaluation.report import markdown_table


def build_parser() -> argparse.ArgumentParser:
    """Arguments of liverseg_evaluate."""
    parser = argparse.ArgumentParser(
        prog="liverseg_evaluate",
        description="Compare predicted label maps (0 background, 1 liver, 2 tumour) with reference labels: Dice, "
        "Surface Dice, HD, HD95 and ASSD for the whole liver (1+2) and the tumour (2), tumour-burden RMSE, and lesion "
        "detection metrics. Cases are matched by name (also ATLAS im<N> against lb<N>). Prints a markdown table; "
        "writes summary.json and a per-case CSV. Definitions: docs/evaluation.md.",
    )
    parser.add_argument("-r", "--reference", nargs="+", required=True, metavar="REF",
                        help="folder(s) of reference labels (or a raw dataset folder with labelsTr); "
                        "several folders = several raters")
    parser.add_argument("-p", "--prediction", required=True, help="folder of predicted label maps")
    parser.add_argument("-o", "--output", help="summary JSON to write (default: <prediction>/summary.json)")
    parser.add_argument("--csv", help="per-case CSV to write (default: <output stem>_per_case.csv beside the summary)")
    parser.add_argument("--profile", default="default", choices=profile_names(),
                        help="metric definitions and empty-mask rule: 'atlas' as the ATLAS 2023 challenge, "
                        "'default' (= 'lesion') with Dice 1 for two empty masks (default: %(default)s)")
    parser.add_argument("--tolerance-mm", type=float, default=5.0,
                        help="Surface Dice tolerance in mm (default: %(default)s)")
    parser.add_argument("--hd95", choices=HD95_DEFINITIONS, help="override the profile's HD95 definition")
    parser.add_argument("--assd", choices=ASSD_DEFINITIONS, help="override the profile's ASSD definition")
    parser.add_argument("--distance-surface", choices=SURFACES,
                        help="override the surface model of HD, HD95 and ASSD (voxels: boundary-voxel centres; "
                        "surfels: area-weighted corner-grid surface elements)")
    parser.add_argument("--lesions", action=argparse.BooleanOptionalAction, default=True,
                        help="also compute lesion detection metrics (default: on)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_evaluate."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        profile = get_profile(args.profile, hd95=args.hd95, assd=args.assd, distance_surface=args.distance_surface)
        output = Path(args.output) if args.output else Path(args.prediction) / "summary.json"
        summary = evaluate_folders(args.reference, args.prediction, output=output, profile=profile,
                                   tolerance_mm=args.tolerance_mm, num_workers=args.num_processes,
                                   lesions=args.lesions, csv_path=args.csv)
        print(markdown_table(summary))
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
