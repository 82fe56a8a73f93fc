"""Score generated images: FID at three feature depths (the paper's FID / FID 192 / FID 64), KID,
CLIP score, finding accuracy and the in-domain share. Two steps, as the workflow calls them:

1. once per setup — fit the evaluation reference (real test features, reference network):

       selora evaluate --params params.yaml --setup synthetic-cxr-32 --fit-reference
           [--data data/prepared/synthetic-cxr-32] [--out results/reference/synthetic-cxr-32]

   writes ``<out>/reference.json`` (+ ``real_features.safetensors``, ``reference.safetensors``,
   ``domain_probe.safetensors``).

2. once per run — score its samples against that reference:

       selora evaluate --params params.yaml --run-dir results/runs/<setup>/<method>/<variant>/seed<N>
           [--reference results/reference/<setup>] [--data data/prepared/<setup>]

   writes ``<run-dir>/metrics.json``.

Feature space (``evaluate.feature_space``): ``inception`` uses the FID Inception-v3 whose weights
file ``evaluate.inception_weights`` names (or torch's hub cache holds); ``reference`` uses the
reference network trained on the setup's real training images; ``auto`` picks Inception exactly
when ``evaluate.inception_weights`` is set. ``evaluate.clip_model: null`` skips CLIP score.
"""

from __future__ import annotations

import argparse

from selora.commands import add_params_arguments, load_params_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--run-dir", help="a run folder .../<setup>/<method>/<variant>/seed<N> with samples/")
    what.add_argument(
        "--fit-reference",
        action="store_true",
        help="fit the setup's reference (needs --setup): real features + reference network",
    )
    parser.add_argument("--setup", help="setup name (with --fit-reference)")
    parser.add_argument("--reference", help="reference folder (default: <paths.results>/reference/<setup>)")
    parser.add_argument("--out", help="with --fit-reference: output folder (default: as --reference)")
    parser.add_argument("--data", help="prepared data folder (default: <paths.data>/prepared/<setup>)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")


def run(args: argparse.Namespace) -> int:
    from selora.engine.device import resolve_device
    from selora.errors import ConfigError
    from selora.metrics.evaluate import evaluate_run
    from selora.metrics.fit_reference import fit_setup

    params = load_params_from_args(args)
    device = str(resolve_device(args.device, "--device"))  # the one resolver training uses too
    if args.fit_reference:
        if not args.setup:
            raise ConfigError("--fit-reference needs --setup NAME")
        info = fit_setup(params, args.setup, args.data, args.out or args.reference, device)
        net = info.get("reference_network")
        acc = (
            (
                f", reference network balanced finding accuracy {net['real_test']['balanced_accuracy']:.3f} "
                f"on {net['real_test']['n']} real test images"
            )
            if net
            else ""
        )
        if info.get("domain_probe"):
            acc += f", domain probe held-out accuracy {info['domain_probe']['held_out']['accuracy']:.3f}"
        print(
            f"evaluation reference for {args.setup}: {info['feature_space']} features of "
            f"{info['real_features']['n']} real test images{acc}"
        )
        return 0
    m = evaluate_run(params, args.run_dir, args.reference, args.data, device, progress=not args.quiet)
    shown = ("clip_score", "finding_accuracy", "domain_share", "colour_cast")
    extra = "".join(f", {k} {m[k]:.3f}" for k in shown if m.get(k) is not None)
    print(
        f"{args.run_dir}: FID ({m['feature_space']['name']}) {m['fid']:.3f}, "
        f"KID {m['kid_mean']:.4f} ± {m['kid_std']:.4f}{extra} → metrics.json"
    )
    return 0
