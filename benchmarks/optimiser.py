"""Fused vs. per-tensor Adam on the embedded miniature, interleaved in one run (CPU).

    python benchmarks/optimiser.py --out results/benchmarks/optimiser.json [--rounds 30] [--threads 2]

1. Pre-training step (`selora pretrain-base` phase 4): U-Net + text encoder forward, v-prediction
   loss, backward, gradient clipping and AdamW, batch 16 — with AdamW's per-tensor loop vs its
   fused kernel (what `pretrain.train_denoiser` uses).
2. Fine-tuning optimiser step (`selora train`): Adam over LoRA's matrices on the same U-Net and
   text encoder (random gradients; the forward/backward is the same for both and left out).

Rounds alternate the two variants so machine noise hits both alike; the ratios are medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from selora import tinysd
from selora.adapters import create_adapter
from selora.config import load_params
from selora.diffusion import prediction_target
from selora.io import Provenance, write_json

CAPTION = ("a large red circle in the upper left and a small blue square in the lower right "
           "on a black background")


def _models(params):
    cfg = params.base_model.tiny
    torch.manual_seed(0)
    tokenizer = tinysd.train_tokenizer([CAPTION] * 4, cfg.vocab_size, cfg.max_length)
    return cfg, tokenizer, tinysd.build_text_encoder(cfg, tokenizer), tinysd.build_unet(cfg)


def _interleaved(calls: dict[str, Callable[[], object]], rounds: int, repeats: int = 1,
                 warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each variant, the variants' order alternating every round so
    machine noise hits them alike; the first ``warmup`` rounds are untimed."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(warmup + rounds):
        for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            t0 = time.perf_counter()
            for _ in range(repeats):
                calls[name]()
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) / repeats)
    return {name: statistics.median(v) for name, v in times.items()}


def pretrain_steps(params, rounds: int, batch: int = 16) -> dict[str, float]:
    """Median seconds per pre-training step with per-tensor vs. fused AdamW."""
    cfg, tokenizer, te, unet = _models(params)
    sched = tinysd.noise_scheduler(cfg)
    ids = tokenizer([CAPTION] * batch, padding="max_length", max_length=cfg.max_length,
                    return_tensors="pt").input_ids
    weights = list(unet.parameters()) + list(te.parameters())
    opts = {name: torch.optim.AdamW(weights, lr=1e-4, weight_decay=1e-2, fused=name == "fused")
            for name in ("per_tensor", "fused")}
    lat = torch.randn(batch, cfg.latent_channels, 8, 8)  # [B, C, h, w]

    def step(opt) -> None:
        noise, t = torch.randn_like(lat), torch.randint(0, 1000, (batch,))
        pred = unet(sched.add_noise(lat, noise, t), t, encoder_hidden_states=te(ids)[0]).sample
        loss = F.mse_loss(pred, prediction_target(sched, lat, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, 1.0, foreach=True)
        opt.step()

    return _interleaved({name: (lambda o=opt: step(o)) for name, opt in opts.items()}, rounds)


def adapter_optimiser_steps(params, rounds: int) -> dict[str, float]:
    """Median seconds per Adam step over LoRA's matrices, per-tensor vs. fused."""
    _, _, te, unet = _models(params)
    adapter = create_adapter("lora", params.methods.get("lora"), seed=0)
    adapter.attach({"unet": unet, "text_encoder": te}, total_steps=1)
    weights = list(adapter.trainable_parameters())
    for w in weights:
        w.grad = torch.randn_like(w)
    opts = {name: torch.optim.Adam(weights, lr=1e-4, fused=name == "fused")
            for name in ("per_tensor", "fused")}
    return {"tensors": len(weights), **_interleaved({name: opt.step for name, opt in opts.items()}, rounds,
                                                     repeats=10)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="results/benchmarks/optimiser.json")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params, [])
    prov = Provenance("benchmarks/optimiser.py", params.raw)
    pre = pretrain_steps(params, args.rounds)
    ada = adapter_optimiser_steps(params, args.rounds)
    result = {
        "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "pretrain_step_ms": {k: round(v * 1e3, 2) for k, v in pre.items()},
        "pretrain_step_speedup": round(pre["per_tensor"] / pre["fused"], 3),
        "lora_adam_step_ms": {k: round(v * 1e3, 3) if k != "tensors" else v for k, v in ada.items()},
        "lora_adam_step_speedup": round(ada["per_tensor"] / ada["fused"], 2),
        "provenance": prov.as_dict(),
    }
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
