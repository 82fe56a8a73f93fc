"""Does the miniature read its captions? A held-out probe of colour, shape and position.

Two probes. :func:`caption_probe` asks the model's likelihood; :func:`sample_probe` draws an image
for each held-out caption and reads the object off the pixels (:func:`read_object`), as a person
judging samples would.

The probe asks the model's own conditional density, as a diffusion classifier does (Li et al.
2023, "Your diffusion model is secretly a zero-shot classifier"): for fresh single-object scenes
(never seen in pre-training), the denoising loss with the true caption is compared with the losses
of the same caption with one attribute swapped ("red" → "blue"), on the *same* noise and
timesteps. The candidate with the lowest loss is the model's answer. A caption-blind model scores
each candidate alike and lands at chance (1/4 colours, 1/5 shapes, 1/9 positions, 1/6
backgrounds); a model that reads the words scores far above it.

Why the likelihood probe as well: sampling compounds every small error of a 1 M-parameter U-Net
over 15–25 steps and a 32-px drawing blurs a small square into a circle, so a probe on samples is a
marginal, machine-dependent property, while the paired likelihood comparison averages over many
scenes and draws and is large by construction. The sample probe is what a user sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from selora.synthetic.natural import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    PREPOSITION,
    SHAPES,
    SS,
    draw_shape,
    render_scene,
)

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
    from selora.engine.data import tokenize

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


def plain_probe_scenes(n: int, size: int, seed: int) -> tuple[np.ndarray, list[dict[str, str]], list[str]]:
    """The first ``n`` probe scenes (:func:`probe_scenes`) on a plain background, whose border is
    the background a reader can subtract."""
    images, labels, rests = probe_scenes(4 * n, size, seed)
    keep = [i for i, r in enumerate(rests) if r == f" on a {labels[i]['background']} background"][:n]
    if len(keep) < n:  # pragma: no cover - about half the probe scenes are plain
        raise ValueError(f"only {len(keep)} plain-background probe scenes among {4 * n}")
    return images[keep], [labels[i] for i in keep], [rests[i] for i in keep]


def _shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Where natural.py draws ``shape`` at centre (cx, cy) and radius r (image fractions): [size,
    size] bool, drawn super-sampled and box-filtered as the scenes are."""
    big = size * SS
    img = Image.new("L", (big, big), 0)
    draw_shape(ImageDraw.Draw(img), shape, cx * big, cy * big, r * big, 255, width=SS)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX)) > 127


def read_object(image: np.ndarray) -> dict[str, str] | None:
    """The colour, shape and position of the one object of a scene, read off its pixels.

    ``image`` is [H, W, 3] in [0, 1]. The background is the median of the border; the object, the
    pixels farthest from it (L1 distance above 0.35 and above half the largest). Colour: the named
    colour nearest the object's mean; position: the named position nearest its centroid; shape: the
    drawn shape (any radius 0.08–0.30, centred within a pixel of the centroid) that overlaps it
    best (IoU). None when nothing stands out from the background.
    """
    h = image.shape[0]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # [4H, 3]
    dist = np.abs(image - np.median(border, axis=0)).sum(-1)  # [H, W]
    mask = dist > max(0.35, 0.5 * float(dist.max()))
    if mask.sum() < 3:
        return None
    rgb = image[mask].mean(0) * 255
    colour = min(COLOURS, key=lambda c: float(((np.array(COLOURS[c]) - rgb) ** 2).sum()))
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean() + 0.5) / h, (ys.mean() + 0.5) / h
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)

    def iou(shape: str, r: float, dx: int, dy: int) -> float:
        drawn = _shape_mask(shape, cx + dx / h, cy + dy / h, r, h)
        return float((drawn & mask).sum() / max((drawn | mask).sum(), 1))

    fits = [(iou(sh, r, dx, dy), sh) for sh in SHAPES for r in np.linspace(0.08, 0.30, 12)
            for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    return {"colour": colour, "shape": max(fits)[1], "position": position}


@torch.no_grad()
def sample_probe(pipe, n: int = 64, seed: int = 0, steps: int = 15, guidance_scale: float = 2.0,
                 guidance_rescale: float = 0.0) -> dict[str, Any]:
    """Accuracy of the objects drawn for ``n`` held-out captions (single objects on plain
    backgrounds, so the border is the background), read by :func:`read_object`.

    Returns ``{"colour": acc, "shape": acc, "position": acc, "chance": {...}, "n": n,
    "reader": {...}}``; ``reader`` is the reader's own accuracy on the real scenes of those
    captions, the ceiling of what the probe can see at this size. An image with no object counts
    as wrong on every attribute.
    """
    images, labels, rests = plain_probe_scenes(n, pipe.vae.config.sample_size, seed)
    prompts = [_phrase(lab) + rest for lab, rest in zip(labels, rests, strict=True)]
    gen = torch.Generator().manual_seed(seed)
    drawn = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale,
                 guidance_rescale=guidance_rescale, generator=gen, output_type="np").images

    def accuracy(imgs: Any) -> dict[str, float]:
        reads = [read_object(np.asarray(img, dtype=np.float32)) for img in imgs]
        return {a: float(np.mean([r is not None and r[a] == lab[a]
                                  for r, lab in zip(reads, labels, strict=True)]))
                for a in ("colour", "shape", "position")}

    return {**accuracy(drawn), "n": n, "reader": accuracy(images / 255.0),
            "chance": {"colour": 1 / len(PROBE_COLOURS), "shape": 1 / len(SHAPES),
                       "position": 1 / len(POSITIONS)}}
