"""Write dvc.yaml from the Snakemake DAG, so both tools run the same jobs (one definition):

    selora dvc-yaml                                                        # dvc.yaml (params.yaml)
    selora dvc-yaml --configfile params-paper.yaml --out paper/dvc.yaml    # paper scale
    selora dvc-yaml --check                                                # fails if dvc.yaml is stale

Run it in the working directory of the pipeline (the repository root). Each DVC stage is one
Snakemake job: the same command, inputs, outputs, and the params keys that change the job's
Snakemake rerun hash.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", action="append", default=[], metavar="FILE",
                        help="params file merged over params.yaml, as `snakemake --configfile` (repeatable)")
    parser.add_argument("--out", default="dvc.yaml", help="the dvc.yaml to write (default: dvc.yaml)")
    parser.add_argument("--snakefile", default="Snakefile",
                        help="the workflow (default: ./Snakefile); paths stay relative to the current folder")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if --out differs from what would be generated")


def run(args: argparse.Namespace) -> int:
    from selora.dag import dvc_yaml
    from selora.io import write_text

    out = Path(args.out)
    text = dvc_yaml([Path("params.yaml"), *map(Path, args.configfile)], Path(args.snakefile), out)
    if args.check:
        if not out.is_file() or out.read_text() != text:
            cmd = " ".join(["selora dvc-yaml", *(f"--configfile {c}" for c in args.configfile),
                            *([f"--out {args.out}"] if args.out != "dvc.yaml" else [])])
            print(f"{out} is not what the Snakemake DAG generates; regenerate it: {cmd}", file=sys.stderr)
            return 1
        print(f"{out} is current")
        return 0
    write_text(out, text)
    print(f"wrote {out}")
    return 0
