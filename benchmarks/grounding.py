"""What the grounding loss costs a pre-training step of the miniature (`base_model.tiny.grounding_weight`).

Interleaved in one run: rounds of `train_denoiser` steps without and with grounding on the same
U-Net + text encoder (default size, batch 16, a natural set from `make-synthetic`), median
milliseconds per step and their ratio.

    python benchmarks/grounding.py --out results/benchmarks/grounding.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from selora import tinysd
from selora.config import load_params
from selora.grounding import attention_sides, grounding_targets
from selora.imagefolder import read_manifest, with_objects
from selora.io import Provenance, write_json
from selora.pretrain import tokenize, train_denoiser
from selora.synthetic import make_natural


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="steps per round and variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/grounding.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params("params.yaml", ["synthetic.natural.n_images=400"])
    cfg = params.base_model.tiny
    prov = Provenance("benchmarks/grounding.py", params.raw)
    with tempfile.TemporaryDirectory() as tmp:
        make_natural(params.synthetic.natural, Path(tmp) / "n", params.seed, progress=False)
        natural = Path(tmp) / "n"
        rows = with_objects(natural, [r for r in read_manifest(natural) if r["split"] == "train"])
    tokenizer = tinysd.train_tokenizer([r["text"] for r in rows], cfg.vocab_size, cfg.max_length)
    unet, text_encoder = tinysd.build_unet(cfg), tinysd.build_text_encoder(cfg, tokenizer)
    scheduler = tinysd.noise_scheduler(cfg)
    side = cfg.image_size // cfg.vae_factor
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(len(rows), cfg.latent_channels, side, side, generator=gen)  # stand-in latents
    std = torch.full_like(mean, 0.0025)
    ids, empty = tokenize(tokenizer, [r["text"] for r in rows]), tokenize(tokenizer, [""])[0]
    targets = grounding_targets(tokenizer, rows, attention_sides(side, len(cfg.unet_channels)), 1.0)

    def steps_ms(grounding) -> float:
        t0 = time.perf_counter()
        train_denoiser(unet, text_encoder, scheduler, mean, std, 1.0, ids, empty, args.steps, 1e-4,
                       cfg.batch_size, cfg.caption_dropout, gen, False, grounding=grounding)
        return (time.perf_counter() - t0) * 1000 / args.steps

    steps_ms(None), steps_ms(targets)  # warm-up
    plain, grounded = [], []
    for _ in range(args.rounds):
        plain.append(steps_ms(None))
        grounded.append(steps_ms(targets))
    result = {
        "torch_threads": args.threads,
        "grounded_rows": targets.counts,
        "step_ms_denoising_only": round(statistics.median(plain), 2),
        "step_ms_with_grounding": round(statistics.median(grounded), 2),
        "ratio": round(statistics.median(grounded) / statistics.median(plain), 3),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
    }
    print(f"pre-training step, batch {cfg.batch_size}, {args.threads} threads (medians of {args.rounds} "
          f"interleaved rounds of {args.steps}): denoising only {result['step_ms_denoising_only']} ms, "
          f"with grounding {result['step_ms_with_grounding']} ms, ratio {result['ratio']}")
    write_json(args.out, {**result, "provenance": prov.as_dict()})


if __name__ == "__main__":
    main()
