"""Pre-train the embedded miniature Stable Diffusion (base_model: tiny) on the natural set and save
it in diffusers' folder format (StableDiffusionPipeline.save_pretrained), with a report of its VAE
reconstruction PSNR, caption dependence and a colour probe on generated images."""

from __future__ import annotations

import argparse

from selora.commands import add_params_arguments, load_params_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_params_arguments(parser)
    parser.add_argument("--data", default="data/synthetic/natural", help="natural scenes (make-synthetic)")
    parser.add_argument("--reports", help="a prepared/synthetic set whose texts join the tokenizer corpus "
                        "(default: data/raw/<the synthetic set's data-set name>; '' = none)")
    parser.add_argument("--out", default=None, help="output folder (default: <paths.models>/tiny-sd)")


def run(args: argparse.Namespace) -> int:
    from selora.basemodel import tiny_path
    from selora.data.synthetic import NAME
    from selora.pretrain import pretrain_base

    params = load_params_from_args(args)
    out = args.out or str(tiny_path(params))
    reports = f"data/raw/{NAME}" if args.reports is None else args.reports or None
    report = pretrain_base(params, args.data, reports, out, progress=not args.quiet)
    cxr = ""
    if "vae_psnr_db_cxr" in report:
        cxr = (f" (CXR phantoms {report['vae_psnr_db_cxr']:.1f} dB, "
               f"colour cast {report['vae_colour_cast_cxr']:.3f})")
    print(f"tiny Stable Diffusion → {out}: VAE PSNR {report['vae_psnr_db']:.1f} dB{cxr}, "
          f"loss matched/shuffled captions {report['matched_caption_loss']:.4f}/"
          f"{report['shuffled_caption_loss']:.4f}, colour probe {report['colour_probe_accuracy']:.0%}, "
          f"caption probe colour/shape/position {report['caption_probe']['colour']:.0%}/"
          f"{report['caption_probe']['shape']:.0%}/{report['caption_probe']['position']:.0%}, "
          f"sample probe {report['sample_probe']['colour']:.0%}/{report['sample_probe']['shape']:.0%}/"
          f"{report['sample_probe']['position']:.0%}")
    return 0
