"""The SD 1.5 parts every SD 1.5 benchmark step runs on (benchmarks/sd15.py, _sd15_pipeline.py): the
frozen base with random weights, copies of it that share its tensors, random batches, the loss."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selora import sd15

Batch = dict[str, torch.Tensor]
Parts = dict[str, nn.Module]


def build_base(
    unet_cfg: Mapping[str, Any] | None = None, text_cfg: Mapping[str, Any] | None = None, seed: int = 0
) -> Parts:
    """SD 1.5's U-Net and text encoder (or the given configs), random weights, frozen, train mode."""
    parts = {
        "unet": sd15.build_unet(dict(unet_cfg) if unet_cfg else None, seed),
        "text_encoder": sd15.build_text_encoder(dict(text_cfg) if text_cfg else None, seed),
    }
    for m in parts.values():
        m.requires_grad_(False).train()
    return parts


def shared_copy(parts: Parts) -> Parts:
    """New module trees around the same parameter and buffer tensors: each method injects its own
    layers without a second copy of the 4 GB base."""
    out = {}
    for name, module in parts.items():
        memo: dict[int, Any] = {id(t): t for t in (*module.parameters(), *module.buffers())}
        out[name] = copy.deepcopy(module, memo)
    return out


def make_batches(n: int, batch_size: int, latent: int, vocab: int, seed: int) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "latents": torch.randn(batch_size, 4, latent, latent, generator=gen),
            "noise": torch.randn(batch_size, 4, latent, latent, generator=gen),
            "input_ids": torch.randint(0, vocab, (batch_size, 77), generator=gen),
            "timesteps": torch.randint(0, 1000, (batch_size,), generator=gen),
        }
        for _ in range(n)
    ]


_SCHEDULER: dict[str, Any] = {}


def diffusion_loss(parts: Parts, batch: Batch, autocast: torch.autocast | None = None) -> torch.Tensor:
    """ε-prediction MSE of SD 1.5's training objective."""
    sched = _SCHEDULER.setdefault("ddpm", sd15.noise_scheduler())
    noisy = sched.add_noise(batch["latents"], batch["noise"], batch["timesteps"])
    with autocast or torch.autocast("cpu", enabled=False):
        hidden = parts["text_encoder"](batch["input_ids"])[0]
        pred = parts["unet"](noisy, batch["timesteps"], encoder_hidden_states=hidden).sample
    return F.mse_loss(pred.float(), batch["noise"].float())
