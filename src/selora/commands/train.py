"""Fine-tune one adapter (lora, adalora, dylora, selora) on one prepared setup, following the
paper's protocol (Section 3.5): adapters in every linear layer of the U-Net and text encoder,
Adam with the params' train.lr / train.betas / train.weight_decay, validation each epoch keeping
the best adapter as a standard LoRA file. Resumes from
results/runs/<setup>/<method>/<variant>/seed<N>/train/checkpoint when restarted."""

from __future__ import annotations

import argparse

from selora.commands import add_params_arguments


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--setup/--method/--seed/--variant/--run-dir: which run (shared with `selora sample`)."""
    parser.add_argument("--setup", required=True, help="a key of params.setups, e.g. synthetic-cxr-32")
    parser.add_argument("--method", required=True, help="a registered method (params methods.<name>)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--variant", default="default",
                        help="'default', or a SeLoRA ablation point: threshold-<λ> / test_interval-<t>")
    parser.add_argument("--run-dir", help="override results/runs/<setup>/<method>/<variant>/seed<N>")
    parser.add_argument("--data", help="prepared data folder (default: <paths.data>/prepared/<setup>)")


def resolve_run(args: argparse.Namespace):
    """(params with the variant's overrides applied, RunId)."""
    from selora.config import load_params
    from selora.runlayout import RunId, variant_overrides

    overrides = [*variant_overrides(args.method, args.variant), *args.overrides]
    params = load_params(args.params or ["params.yaml"], overrides)
    params.methods.get(args.method)  # unknown method → clear error naming the key
    params.setup(args.setup)
    return params, RunId(args.setup, args.method, args.variant, args.seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    add_run_arguments(parser)
    parser.add_argument("--device", help="override train.device (auto | cpu | cuda | cuda:N)")


def run(args: argparse.Namespace) -> int:
    from selora.engine.train import train

    if args.device:
        args.overrides.append(f"train.device={args.device}")
    params, run_id = resolve_run(args)
    summary = train(params, run_id, data_dir=args.data, out_dir=args.run_dir, progress=not args.quiet)
    best = summary["best_val_loss"]
    print(f"trained {run_id.relpath}: {summary['steps']} steps in {summary['train_time_s']:.0f} s, "
          f"best epoch {summary['best_epoch']}" + (f" (val loss {best:.4f})" if best is not None else ""))
    return 0

