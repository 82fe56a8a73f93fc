"""Write the embedded synthetic data: the "natural" captioned scenes the miniature is pre-trained
on, and the synthetic chest-radiograph set (with findings labels) that stands in for IU X-Ray.
Both are imagefolder directories with per-split metadata.jsonl."""

from __future__ import annotations

import argparse

from selora.commands import add_params_arguments, load_params_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    parser.add_argument("--natural-out", default="data/synthetic/natural", help="natural scenes folder")
    parser.add_argument("--cxr-out", help="synthetic CXR folder (default: data/raw/<its data-set name>)")
    parser.add_argument("--only", choices=["natural", "cxr"], help="write only one of the two sets")


def run(args: argparse.Namespace) -> int:
    from selora.data.synthetic import NAME
    from selora.synthetic import make_cxr, make_natural

    params = load_params_from_args(args)
    cxr_out = args.cxr_out or f"data/raw/{NAME}"
    if args.only in (None, "natural"):
        counts = make_natural(params.synthetic.natural, args.natural_out, params.seed, not args.quiet)
        print(f"natural scenes → {args.natural_out}: {counts}")
    if args.only in (None, "cxr"):
        counts = make_cxr(params.synthetic.cxr, cxr_out, params.seed, not args.quiet)
        print(f"synthetic CXR → {cxr_out}: {counts}")
    return 0
