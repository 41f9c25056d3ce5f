"""liverseg_evaluate: segmentation (and lesion detection) metrics of predicted label maps."""
from __future__ import annotations

import argparse
from pathlib import Path

from liverseg.cli.common import add_num_workers, add_verbose, run_command, setup_logging
from liverseg.evaluation.evaluate import LESION_CONNECTIVITIES, evaluate_folders
from liverseg.evaluation.profiles import ASSD_DEFINITIONS, HD95_DEFINITIONS, SURFACES, get_profile, profile_names
from liverseg.evaluation.report import markdown_table
from liverseg.evaluation.uncertainty import STATUS_RULES


def build_parser() -> argparse.ArgumentParser:
    """Arguments of liverseg_evaluate."""
    parser = argparse.ArgumentParser(
        prog="liverseg_evaluate",
        description="Compare predicted label maps (0 background, 1 liver, 2 tumour) with reference labels: Dice, "
        "Surface Dice, HD, HD95 and ASSD for the whole liver (1+2) and the tumour (2), tumour-burden RMSE, and lesion "
        "detection metrics. Cases are matched by name (also ATLAS im<N> against lb<N>). With lesion reports "
        "(<case>.lesions.json, from liverseg_predict) beside the predictions, also the uncertainty of TP vs FP "
        "lesions. Prints markdown tables; writes summary.json, a per-case CSV and the uncertainty figure. "
        "Definitions: docs/evaluation.md, docs/lesion_metrics.md.",
    )
    parser.add_argument("-r", "--reference", nargs="+", required=True, metavar="REF",
                        help="folder(s) of reference labels (or a raw dataset folder with labelsTr); "
                        "several folders = several raters (required)")
    parser.add_argument("-p", "--prediction", required=True, help="folder of predicted label maps (required)")
    parser.add_argument("-o", "--output", help="summary JSON to write (default: <prediction>/summary.json)")
    parser.add_argument("--csv", help="per-case CSV to write (default: <output stem>_per_case.csv beside the summary)")
    parser.add_argument("--profile", default="default", choices=profile_names(),
                        help="metric definitions and empty-mask rule: 'atlas' as the ATLAS 2023 challenge, "
                        "'default' (= 'lesion') with Dice 1 for two empty masks (default: %(default)s)")
    parser.add_argument("--tolerance-mm", type=float, default=5.0,
                        help="Surface Dice tolerance in mm (default: %(default)s)")
    parser.add_argument("--hd95", choices=HD95_DEFINITIONS,
                        help="override the profile's HD95 definition (default: the profile's)")
    parser.add_argument("--assd", choices=ASSD_DEFINITIONS,
                        help="override the profile's ASSD definition (default: the profile's)")
    parser.add_argument("--distance-surface", choices=SURFACES,
                        help="override the surface model of HD, HD95 and ASSD (voxels: boundary-voxel centres; "
                        "surfels: area-weighted corner-grid surface elements; default: the profile's)")
    lesions = parser.add_argument_group("lesions")
    lesions.add_argument("--lesions", action=argparse.BooleanOptionalAction, default=True,
                         help="also compute lesion detection metrics and, with lesion reports, the uncertainty "
                         "analysis (default: on)")
    lesions.add_argument("--lesion-threshold", type=float, default=0.2, metavar="DICE",
                         help="a lesion correspondence is a hit when its Dice is above this (default: %(default)s)")
    lesions.add_argument("--lesion-connectivity", type=int, choices=LESION_CONNECTIVITIES, default=26,
                         help="voxel neighbourhood joining tumour voxels into one lesion: 26 (corners too), 18 "
                         "(edges) or 6 (faces only, as LiTS) (default: %(default)s)")
    lesions.add_argument("--uncertainty-rule", choices=STATUS_RULES, default="hit",
                         help="when a reported lesion counts as TP in the uncertainty analysis: hit (in a "
                         "correspondence with Dice above the threshold) or overlap (touches the reference tumour, "
                         "as the ATLAS paper) (default: %(default)s)")
    add_num_workers(parser, 2, "worker processes, one case each (default: %(default)s)")
    add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_evaluate."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        profile = get_profile(args.profile, hd95=args.hd95, assd=args.assd, distance_surface=args.distance_surface)
        output = Path(args.output) if args.output else Path(args.prediction) / "summary.json"
        summary = evaluate_folders(args.reference, args.prediction, output=output, profile=profile,
                                   tolerance_mm=args.tolerance_mm, num_workers=args.num_workers,
                                   lesions=args.lesions, csv_path=args.csv, lesion_threshold=args.lesion_threshold,
                                   lesion_connectivity=args.lesion_connectivity,
                                   uncertainty_rule=args.uncertainty_rule)
        print(markdown_table(summary))
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
