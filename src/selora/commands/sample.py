"""Generate the test prompts' images of one run: its best adapter is loaded from the exported
standard LoRA file into a fresh diffusers pipeline, with the scheduler, steps, guidance scale and
fixed seeds from params (sample.*). Writes samples/images/*.png and samples/manifest.jsonl.

``--method none --seed 0`` samples the untouched base model (no adapter) into
results/runs/<setup>/none/default/seed0/samples: the quality tables' "no adapter" row."""

from __future__ import annotations

import argparse

from selora.commands import add_params_arguments
from selora.commands.train import add_run_arguments, resolve_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from selora.engine.sample import sample
    from selora.runlayout import NO_ADAPTER, no_adapter_run

    if args.method == NO_ADAPTER:
        from selora.commands import load_params_from_args
        from selora.errors import ConfigError

        params = load_params_from_args(args)
        params.setup(args.setup)  # unknown setup → clear error
        run_id = no_adapter_run(args.setup)
        if (args.seed, args.variant) != (run_id.seed, run_id.variant):
            raise ConfigError("--method none: the base model has one run per setup, "
                              f"--seed {run_id.seed} --variant {run_id.variant}")
    else:
        params, run_id = resolve_run(args)
    summary = sample(params, run_id, data_dir=args.data, out_dir=args.run_dir, progress=not args.quiet)
    print(f"sampled {run_id.relpath}: {summary['n_images']} images for {summary['n_prompts']} prompts")
    return 0
