"""``selora``: one subcommand per pipeline phase (Snakemake rules and DVC stages call these).

Each phase lives in ``selora.commands.<name>`` with ``add_arguments(parser)`` and ``run(args)``;
modules are imported lazily so ``selora --help`` stays fast. Errors that mean bad input
(:class:`selora.errors.SeloraError`) print one clear line and exit with status 2; an operating
system error (disk full, permission denied, a file vanishing under a job) prints one line naming
the file and exits with status 1, so a cluster log shows the cause rather than a traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import sys
from collections.abc import Sequence

# Phase order of the pipeline; a phase whose module is absent is not offered.
PHASES: tuple[tuple[str, str, str], ...] = (
    ("make-synthetic", "make_synthetic", "write the embedded synthetic data (natural scenes, CXR phantoms)"),
    ("pretrain-base", "pretrain_base", "pre-train the miniature Stable Diffusion ('tiny') on natural scenes"),
    ("prepare", "prepare", "prepare a data set from its official distribution (splits, resize, manifest)"),
    ("train", "train", "fine-tune one adapter (LoRA, AdaLoRA, DyLoRA, SeLoRA) on a prepared data set"),
    ("sample", "sample", "generate the test prompts' images with a run's best adapter"),
    ("evaluate", "evaluate", "score one run's samples (FID 64/192/2048, KID, CLIP score, finding accuracy)"),
    ("report", "report", "aggregate all runs into results/tables/*.md and results/figures/*.png"),
    ("rehearsal-assets", "rehearsal_assets",
     "build the paper path's ingredients offline (SD 1.5 with random weights, metric weights, raw layouts)"),
    ("dvc-yaml", "dvc_yaml", "write dvc.yaml from the Snakemake DAG (the same jobs, commands and params)"),
)


def build_parser() -> argparse.ArgumentParser:
    from selora import __version__

    parser = argparse.ArgumentParser(
        prog="selora",
        description="SeLoRA benchmark: self-expanding LoRA vs LoRA/AdaLoRA/DyLoRA on latent diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"selora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="PHASE", required=True)
    for name, module, help_text in PHASES:
        if importlib.util.find_spec(f"selora.commands.{module}") is None:
            continue  # not offered (see PHASES)
        mod = importlib.import_module(f"selora.commands.{module}")
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def pin_cpu_from_args(args: argparse.Namespace) -> dict[str, str]:
    """Apply the params' ``cpu_isa`` (:mod:`selora.cpuisa`) before the phase imports torch: read from
    the params files and overrides alone, since loading the params in full imports torch."""
    if not hasattr(args, "overrides"):  # a phase without params
        return {}
    from pathlib import Path

    from selora.config import raw_params
    from selora.cpuisa import pin_cpu_isa

    # The phase's own files; without --params its default, params.yaml, when there is one (prepare
    # runs on the schema's defaults without it, and the other phases say it is missing).
    paths = args.params or (["params.yaml"] if Path("params.yaml").is_file() else [])
    return pin_cpu_isa(raw_params(paths, args.overrides).get("cpu_isa"))


def main(argv: Sequence[str] | None = None) -> int:
    from selora.errors import SeloraError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        pin_cpu_from_args(args)
        return int(args._module.run(args) or 0)
    except SeloraError as exc:
        print(f"selora {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"selora {args.command}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"selora {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The ``selora`` console script (and ``python -m selora``): :func:`main`, then the heap frozen
    before the interpreter exits.

    Interpreter shutdown runs the cyclic garbage collector over every object torch, diffusers,
    transformers and torchmetrics left behind, ~1 s a process here, and the pipeline runs one
    process per job (55 in ``make repro``). Frozen objects are left to the operating system. Nothing
    of a phase waits for that pass: its files are written, closed and renamed before :func:`main`
    returns, and atexit handlers and the flushing of stdout/stderr still run. Only the entry point
    does this; :func:`main` called in-process (tests, notebooks) leaves the collector as it is.
    """
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(entry())
