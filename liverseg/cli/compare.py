"""liverseg_compare: paired significance tests between two evaluations of the same cases."""
from __future__ import annotations

import argparse

from liverseg.cli.common import add_verbose, run_command, setup_logging
from liverseg.evaluation.statistics import compare_summaries, format_comparison, load_summary, write_comparison


def build_parser() -> argparse.ArgumentParser:
    """Arguments of liverseg_compare."""
    parser = argparse.ArgumentParser(
        prog="liverseg_compare",
        description="Compare two pipelines from the summary.json files liverseg_evaluate wrote for the "
        "same cases: per metric, Shapiro-Wilk on the paired differences, then a one-sided paired t-test "
        "(normal) or Wilcoxon signed-rank test, Benjamini-Hochberg adjusted across metrics. Prints a "
        "markdown table.",
    )
    parser.add_argument("summary_a", help="summary.json of pipeline A")
    parser.add_argument("summary_b", help="summary.json of pipeline B")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="false discovery rate for significance, also the Shapiro-Wilk level "
                        "(default: %(default)s)")
    parser.add_argument("--two-sided", action="store_true",
                        help="report two-sided p-values instead of the one-sided p of the favoured side")
    parser.add_argument("--higher-is-better", nargs="+", default=[], metavar="METRIC",
                        help="metrics to compare as higher-is-better that the name rules do not recognise "
                        "(default: none)")
    parser.add_argument("--lower-is-better", nargs="+", default=[], metavar="METRIC",
                        help="metrics to compare as lower-is-better that the name rules do not recognise "
                        "(default: none)")
    parser.add_argument("-o", "--output", help="also write the full comparison as JSON here (default: print only)")
    add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of liverseg_compare."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        directions = {m: "higher" for m in args.higher_is_better}
        directions.update({m: "lower" for m in args.lower_is_better})
        result = compare_summaries(load_summary(args.summary_a), load_summary(args.summary_b),
                                   alpha=args.alpha, normality_alpha=args.alpha, two_sided=args.two_sided,
                                   directions=directions, sources=(args.summary_a, args.summary_b))
        result.update(summary_a=args.summary_a, summary_b=args.summary_b)
        if args.output:
            write_comparison(args.output, result)
        print(format_comparison(result, args.summary_a, args.summary_b))
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
