"""Stable Diffusion 1.5's published architecture as data, and random-weight builders for it.

SD 1.5's weights cannot be downloaded here, but its architecture is fixed by the configs published
with ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (``unet/``, ``text_encoder/``, ``vae/``,
``scheduler/`` ``config.json``). Random weights in exactly these shapes exercise every code path
the real weights do, at the real widths (320–1280 channels, 768 / 3072 text widths), which is what
speed and memory measurements at the paper's scale need. Only the non-default keys are listed; the
rest are diffusers' / transformers' defaults, which the published files also hold.

``scaled(...)`` keeps the layer structure (block types, layers per block, attention layout) with
narrow widths, for tests that must check the same code on a tiny model.
"""

from __future__ import annotations

from typing import Any

import torch

UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "skip_prk_steps": True,
}

# SD 1.5's layer structure at narrow widths (U-Net channels / 10, text tower / 12, VAE / 4): the same
# block types, 184 + 72 linear layers, 77-position 49,408-word text tower, 4-channel latents and
# factor-8 VAE, ~1/100 of the parameters. CI's reduced rehearsal (`make rehearse-ci`) runs on it:
# at the real widths each job's 1 B parameters on one CPU thread, not its rules, set the time.
NARROW: dict[str, dict[str, Any]] = {
    "unet": {**UNET, "block_out_channels": [32, 64, 128, 128], "cross_attention_dim": 64},
    "text_encoder": {**TEXT_ENCODER, "hidden_size": 64, "intermediate_size": 256,
                     "num_attention_heads": 4, "projection_dim": 64},
    "vae": {**VAE, "block_out_channels": [32, 64, 128, 128]},
}

# Linear layers the paper adapts (every nn.Linear): 184 in the U-Net, 72 in the text encoder.
N_LINEAR = {"unet": 184, "text_encoder": 72}
LATENT_FACTOR = 8  # pixels per latent cell (3 down-sampling VAE blocks)


def scaled(
    width: int = 32, text_width: int = 32, text_layers: int = 12, heads: int = 2, vocab: int = 1000
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(U-Net config, text-encoder config) of SD 1.5's layout at toy widths (tests)."""
    unet = {
        **UNET,
        "block_out_channels": [width, width, 2 * width, 2 * width],
        "cross_attention_dim": text_width,
        "attention_head_dim": heads,
        "norm_num_groups": min(32, width // 2),
    }
    text = {
        **TEXT_ENCODER,
        "hidden_size": text_width,
        "intermediate_size": 4 * text_width,
        "num_hidden_layers": text_layers,
        "num_attention_heads": heads,
        "projection_dim": text_width,
        "vocab_size": vocab,
    }
    return unet, text


def build_unet(config: dict[str, Any] | None = None, seed: int = 0) -> torch.nn.Module:
    """A ``UNet2DConditionModel`` with SD 1.5's config (or ``config``) and seeded random weights."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**(config or UNET))


def build_text_encoder(config: dict[str, Any] | None = None, seed: int = 0) -> torch.nn.Module:
    """A ``CLIPTextModel`` with SD 1.5's text tower config (or ``config``) and seeded random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**(config or TEXT_ENCODER)))


def build_vae(config: dict[str, Any] | None = None, seed: int = 0) -> torch.nn.Module:
    """An ``AutoencoderKL`` with SD 1.5's config (or ``config``) and seeded random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**(config or VAE))


def noise_scheduler():
    """SD 1.5's training noise schedule (DDPM with its betas; ``clip_sample`` off)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(SCHEDULER)  # keys only PNDM knows (skip_prk_steps) are ignored
