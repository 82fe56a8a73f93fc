"""Generate the test prompts' images of one run: its best adapter is loaded from the exported
standard LoRA file into a fresh diffusers pipeline, with the scheduler, steps, guidance scale and
fixed seeds from params (sample.*). Writes samples/images/*.png and samples/manifest.jsonl."""

from __future__ import annotations

import argparse

from selora.commands import add_params_arguments
from selora.commands.train import add_run_arguments, resolve_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from selora.engine.sample import sample

    params, run_id = resolve_run(args)
    summary = sample(params, run_id, data_dir=args.data, out_dir=args.run_dir, progress=not args.quiet)
    print(f"sampled {run_id.relpath}: {summary['n_images']} images for {summary['n_prompts']} prompts")
    return 0
