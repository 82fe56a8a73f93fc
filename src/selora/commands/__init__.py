"""One module per ``selora`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Top-level imports here must stay light (argparse, pathlib): heavy libraries load inside ``run``.
"""

from __future__ import annotations

import argparse


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """``--params FILE`` and repeatable ``--set KEY=VALUE`` overrides, shared by every phase."""
    parser.add_argument(
        "--params", action="append", metavar="FILE",
        help="params file (default: params.yaml); repeat to merge several, later ones win",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one param, e.g. --set methods.selora.threshold=1.3 (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load_params_from_args(args: argparse.Namespace):
    from selora.config import load_params

    return load_params(args.params or ["params.yaml"], args.overrides)
