"""Aggregate every run of the experiment grid (params.yaml's experiment section) into the paper's
tables and figures:

    selora report --params params.yaml [--results results] [--strict] [--no-figures]

writes ``<results>/tables/*.md`` (+ ``summary.csv``, ``aggregate.csv``, ``index.md``) and
``<results>/figures/*.png``, both folders regenerated as a whole. Runs without ``metrics.json`` are
listed as missing in every table they belong to and never averaged silently; ``--strict`` refuses
to write a report while any configured run is missing.
"""

from __future__ import annotations

import argparse
import sys

from selora.commands import add_params_arguments, load_params_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    parser.add_argument("--results", help="results folder holding runs/ (default: paths.results)")
    parser.add_argument("--strict", action="store_true", help="fail if any configured run lacks metrics.json")
    parser.add_argument("--no-figures", action="store_true", help="tables only (figures left as they are)")


def run(args: argparse.Namespace) -> int:
    from selora.report import build_report

    params = load_params_from_args(args)
    out = build_report(params, args.results, strict=args.strict, figures=not args.no_figures)
    print(
        f"report: {len(out['tables'])} tables, {len(out['figures'])} figures; "
        f"{out['runs'] - out['missing']} of {out['runs']} runs evaluated"
        + (f" ({out['missing']} missing, listed in the tables)" if out["missing"] else "")
    )
    if out["placeholder_inputs"]:
        print("report: WARNING: the numbers are meaningless (placeholder inputs, see the tables' "
              "first lines): " + "; ".join(out["placeholder_inputs"]), file=sys.stderr)
    return 0
