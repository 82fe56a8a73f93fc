"""Shared checks for adapter tests: a fixed batch, a few training steps that follow the adapter
contract (see selora.adapters.base), frozen-base and export round-trip assertions."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selora.imagefolder import read_manifest
from selora.pretrain import encode, load_images, tokenize


def tiny_parts(pipe) -> dict[str, torch.nn.Module]:
    """Private copies of the U-Net and text encoder, so a test never mutates the shared pipeline."""
    return {"unet": copy.deepcopy(pipe.unet), "text_encoder": copy.deepcopy(pipe.text_encoder)}


def fixed_batch(pipe, data_dir: Path, n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    rows = [r for r in read_manifest(data_dir) if r["split"] == "train"][:n]
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    mean, _ = encode(pipe.vae, load_images(rows, size))
    gen = torch.Generator().manual_seed(seed)
    latents = mean * pipe.vae.config.scaling_factor
    return {
        "latents": latents,
        "input_ids": tokenize(pipe.tokenizer, [r["text"] for r in rows]),
        "noise": torch.randn(latents.shape, generator=gen),
        "timesteps": torch.randint(0, 1000, (len(rows),), generator=gen),
    }


def diffusion_loss(pipe, parts, batch) -> torch.Tensor:
    from selora.tinysd import noise_scheduler

    noisy = noise_scheduler().add_noise(batch["latents"], batch["noise"], batch["timesteps"])
    hidden = parts["text_encoder"](batch["input_ids"])[0]
    pred = parts["unet"](noisy, batch["timesteps"], encoder_hidden_states=hidden).sample
    return F.mse_loss(pred, batch["noise"])


def run_steps(adapter, pipe, parts, batch, steps: int, lr: float = 1e-3) -> list[float]:
    """Train on one fixed batch, calling the adapter hooks in the order the engine does."""
    for module in parts.values():
        module.train()
    opt = torch.optim.Adam(adapter.trainable_parameters(), lr=lr)
    losses = []
    for step in range(steps):
        adapter.before_forward(step)
        loss = diffusion_loss(pipe, parts, batch)
        extra = adapter.extra_loss()
        total = loss if extra is None else loss + extra
        total.backward()
        opt.step()
        adapter.after_optimizer_step(step, opt)
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    for module in parts.values():
        module.eval()
    return losses


def selora_from_export(adapter, path: Path) -> None:
    """Put an exported standard LoRA file into an attached SeLoRA adapter (A, and B / s undoing the
    folded scale, at the file's ranks): proves the export holds all SeLoRA needs to go on."""
    from selora.adapters.export import load_standard_lora

    loaded = load_standard_lora(path)
    assert {(p, n) for p, layers in loaded.items() for n in layers} == set(adapter.layers), \
        "the export's layers are not the adapted ones"
    for (part, name), layer in adapter.layers.items():
        a, b = loaded[part][name]
        layer.set_factors(a, b / layer.scale)


def base_state(parts) -> list[tuple[str, torch.nn.Parameter, torch.Tensor]]:
    """Call BEFORE attaching: every base parameter object with a copy of its value."""
    return [(f"{k}.{n}", p, p.detach().clone()) for k, m in parts.items() for n, p in m.named_parameters()]


def assert_base_unchanged(before, adapter) -> None:
    """Every base parameter (tracked by object, so wrappers that rename it are fine) is frozen and
    bit-identical after training; only the adapter's own parameters moved."""
    trainable = {id(p) for p in adapter.trainable_parameters()}
    for name, param, value in before:
        assert id(param) not in trainable, f"{name} is a base weight but the optimiser updates it"
        assert not param.requires_grad, f"{name} is not frozen"
        assert torch.equal(param.detach(), value), f"{name} changed"


def generate(pipe, parts, prompts: list[str], seed: int = 0, steps: int = 8) -> np.ndarray:
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline(vae=pipe.vae, text_encoder=parts["text_encoder"], tokenizer=pipe.tokenizer,
                                unet=parts["unet"], scheduler=pipe.scheduler, safety_checker=None,
                                feature_extractor=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    return p(prompts, num_inference_steps=steps, guidance_scale=3.0, generator=gen, output_type="np").images


def assert_export_roundtrip(adapter, pipe, parts, base_path: Path, out_dir: Path, tol: float = 1e-5) -> float:
    """Images of the trained in-memory model == images of a fresh pipeline + load_lora_weights."""
    from diffusers import StableDiffusionPipeline

    prompts = ["The heart is enlarged. Small left pleural effusion.", "The lungs are clear."]
    for module in parts.values():
        module.eval()
    with torch.no_grad():
        trained = generate(pipe, parts, prompts)
    adapter.export(out_dir)
    fresh = StableDiffusionPipeline.from_pretrained(base_path, safety_checker=None,
                                                    requires_safety_checker=False)
    fresh.load_lora_weights(str(out_dir))
    with torch.no_grad():
        loaded = generate(fresh, {"unet": fresh.unet, "text_encoder": fresh.text_encoder}, prompts)
    diff = float(np.abs(trained - loaded).max())
    assert diff <= tol, f"exported LoRA reproduces the trained images only to {diff:.2e}"
    with torch.no_grad():
        base = generate(fresh, {"unet": pipe.unet, "text_encoder": pipe.text_encoder}, prompts)
    assert np.abs(trained - base).max() > 10 * tol, "the adapter changed nothing: the check would be vacuous"
    return diff
