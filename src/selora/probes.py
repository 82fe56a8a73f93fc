"""Does the miniature read its captions? A held-out probe of colour, shape and position.

The probe asks the model's own conditional density, as a diffusion classifier does (Li et al.
2023, "Your diffusion model is secretly a zero-shot classifier"): for fresh single-object scenes
(never seen in pre-training), the denoising loss with the true caption is compared with the losses
of the same caption with one attribute swapped ("red" → "blue"), on the *same* noise and
timesteps. The candidate with the lowest loss is the model's answer. A caption-blind model scores
each candidate alike and lands at chance (1/4 colours, 1/5 shapes, 1/9 positions, 1/6
backgrounds); a model that reads the words scores far above it.

Why not judge generated images instead: sampling compounds every small error of a 1 M-parameter
U-Net over 15–25 steps, so a probe on samples is a marginal, machine-dependent property, while the
paired likelihood comparison averages over many scenes and draws and is large by construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from selora.synthetic.natural import BACKGROUNDS, POSITIONS, PREPOSITION, SHAPES, render_scene

PROBE_COLOURS = ("red", "green", "blue", "yellow")  # visible on every background of the set
ATTRIBUTES = ("colour", "shape", "position", "background")
_PROBE_SET_ID = 3  # generator stream of probe scenes; 1 and 2 are the natural and CXR sets


def _phrase(labels: dict[str, str]) -> str:
    pos = labels["position"]
    return f"a {labels['size']} {labels['colour']} {labels['shape']} {PREPOSITION[pos]} {pos}"


def probe_scenes(n: int, size: int, seed: int) -> tuple[np.ndarray, list[dict[str, str]], list[str]]:
    """``n`` held-out single-object scenes with a probe colour: images [n, size, size, 3] uint8,
    their labels, and the background part of each caption (" on a gray background")."""
    images, labels, rests = [], [], []
    i = 0
    while len(images) < n:
        rng = np.random.default_rng([seed, _PROBE_SET_ID, i])
        i += 1
        image, caption, lab, _ = render_scene(rng, size)
        if " and " in caption or lab["colour"] not in PROBE_COLOURS:
            continue
        phrase = _phrase(lab)
        assert caption.startswith(phrase), (caption, phrase)  # the caption grammar of natural.py
        rest = caption[len(phrase):]  # " on a <name>[ gradient| striped] background"
        name = rest.removeprefix(" on a ").removesuffix(" background")
        name = name.removesuffix(" gradient").removesuffix(" striped")
        assert name in BACKGROUNDS, rest
        images.append(np.asarray(image))
        labels.append({**lab, "background": name})
        rests.append(rest)
    return np.stack(images), labels, rests


def candidates(attribute: str) -> tuple[str, ...]:
    return {"colour": PROBE_COLOURS, "shape": SHAPES, "position": tuple(POSITIONS),
            "background": tuple(BACKGROUNDS)}[attribute]


def _caption(labels: dict[str, str], rest: str, attribute: str, option: str) -> str:
    """The scene's caption with one attribute set to ``option``."""
    if attribute == "background":
        return _phrase(labels) + rest.replace(f" on a {labels['background']} ", f" on a {option} ", 1)
    return _phrase({**labels, attribute: option}) + rest


@torch.no_grad()
def caption_probe(pipe, n: int = 64, draws: int = 4, seed: int = 0,
                  batch_size: int = 512) -> dict[str, Any]:
    """Accuracy of naming each attribute of held-out scenes from the model's denoising loss.

    Returns ``{"colour": acc, "shape": acc, "position": acc, "background": acc, "chance": {...}, "n": n,
    "margin": {...}}`` where margin is the mean (loss of the best wrong candidate − loss of the
    true caption) relative to the true caption's loss: positive when the words matter.
    """
    from diffusers import DDPMScheduler

    from selora.diffusion import prediction_target
    from selora.pretrain import tokenize  # pretrain imports this module

    unet, text_encoder, tokenizer, vae = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the model's own schedule and target
    size = vae.config.sample_size
    images, labels, rests = probe_scenes(n, size, seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # [n, 3, H, W]
    latents = torch.cat([vae.encode(x[i:i + 64]).latent_dist.mean for i in range(0, n, 64)])
    latents = latents * vae.config.scaling_factor  # [n, C, h, w]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, draws, *latents.shape[1:]), generator=gen)  # [n, K, C, h, w]
    t = torch.linspace(100, 900, draws).round().long()  # [K], the same for every candidate
    clean = latents[:, None].expand_as(noise).reshape(-1, *latents.shape[1:])  # [n·K, C, h, w]
    eps, steps = noise.reshape(-1, *latents.shape[1:]), t.repeat(n)
    noisy = scheduler.add_noise(clean, eps, steps)
    target = prediction_target(scheduler, clean, eps, steps)

    result: dict[str, Any] = {"n": n, "draws": draws, "chance": {}, "margin": {}}
    for attribute in ATTRIBUTES:
        options = candidates(attribute)
        losses = torch.empty(n, len(options))  # [n, m]
        for j, option in enumerate(options):
            captions = [_caption(lab, rest, attribute, option)
                        for lab, rest in zip(labels, rests, strict=True)]
            hidden = text_encoder(tokenize(tokenizer, captions))[0]  # [n, L, D]
            hidden = hidden.repeat_interleave(draws, dim=0)  # [n·K, L, D]
            per = torch.empty(n * draws)
            for s in range(0, n * draws, batch_size):
                pred = unet(noisy[s:s + batch_size], steps[s:s + batch_size],
                            encoder_hidden_states=hidden[s:s + batch_size]).sample
                per[s:s + batch_size] = ((pred - target[s:s + batch_size]) ** 2).mean(dim=(1, 2, 3))
            losses[:, j] = per.view(n, draws).mean(1)
        truth = torch.tensor([options.index(lab[attribute]) for lab in labels])
        result[attribute] = float((losses.argmin(1) == truth).float().mean())
        result["chance"][attribute] = 1 / len(options)
        true_loss = losses.gather(1, truth[:, None]).squeeze(1)
        wrong = losses.scatter(1, truth[:, None], float("inf")).min(1).values
        result["margin"][attribute] = float(((wrong - true_loss) / true_loss).mean())
    return result


@torch.no_grad()
def background_gap(pipe, n: int = 8, seed: int = 0, steps: int = 15,
                   guidance_scale: float = 7.5) -> dict[str, float]:
    """Mean brightness of generated images asked for a white vs. a black background.

    Both prompts start from the same noise (one generator seed), so the difference is the
    caption's doing alone: exactly 0 for a model that ignores its captions, and about the
    distance between the two backgrounds (≈ 0.9 in [0, 1]) for one that follows them.
    """
    means = {}
    for name in ("black", "white"):
        gen = torch.Generator().manual_seed(seed)
        out = pipe([f"a small red circle in the center on a {name} background"] * n,
                   num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen,
                   output_type="np").images  # [n, H, W, 3] in [0, 1]
        h = out.shape[1]
        border = np.ones((h, h), dtype=bool)
        border[h // 4:h - h // 4, h // 4:h - h // 4] = False  # leave the object out
        means[name] = float(out[:, border].mean())
    return {"black": means["black"], "white": means["white"], "gap": means["white"] - means["black"]}
