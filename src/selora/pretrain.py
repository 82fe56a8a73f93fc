"""``selora pretrain-base``: pre-train the miniature Stable Diffusion on the "natural" set.

Adapting it to the synthetic CXR set afterwards is then a real domain adaptation, as
SD 1.5 → chest X-rays is. Phases:

1. VAE (``AutoencoderKL``): reconstruction + a small KL term, as in latent diffusion.
2. Latent scaling factor: 1 / std of the training latents (how SD's 0.18215 was chosen).
3. Tokenizer: CLIP-style BPE learnt from the captions (and the CXR reports' words, as SD's
   vocabulary covers everyday and medical English; their embeddings stay untrained here).
4. Text encoder + U-Net, jointly, on the v-prediction MSE of a zero-terminal-SNR schedule (SD 1.5
   predicts ε; see ``train_denoiser``) with 10 % empty captions so classifier-free guidance works,
   plus a grounding loss that puts each phrase's cross-attention on its object's box
   (:mod:`selora.grounding`).
5. Save the ``StableDiffusionPipeline`` folder atomically, with a report: VAE PSNR on held-out
   images, denoising loss with matched vs. shuffled captions, and a colour test on generated images.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from selora import tinysd
from selora.basemodel import PRETRAIN_REPORT, loading_bars
from selora.config import Params
from selora.diffusion import prediction_target
from selora.engine.data import tokenize
from selora.engine.device import use_threads
from selora.errors import DatasetFormatError
from selora.grounding import (
    GroundingTargets,
    attention_sides,
    grounding_loss,
    grounding_targets,
    recording_cross_attention,
)
from selora.imagefolder import OBJECTS, read_manifest, with_objects
from selora.io import Provenance, atomic_dir, write_json
from selora.metrics.samples import colour_cast
from selora.probes import caption_probe, sample_probe

REPORT = PRETRAIN_REPORT
LOGVAR = -12.0  # pinned posterior log-variance of the tiny VAE (std ≈ 0.0025)
COLOUR_PROBES = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220),
                 "yellow": (235, 215, 40)}


def load_images(rows: list[dict[str, Any]], size: int) -> torch.Tensor:
    """[N, 3, size, size] in [-1, 1]."""
    out = torch.empty(len(rows), 3, size, size)
    for i, row in enumerate(rows):
        with Image.open(row["path"]) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            out[i] = torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    return out


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(x.clamp(-1, 1), y.clamp(-1, 1)).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def _batches(n: int, batch_size: int, gen: torch.Generator):
    """Endless stream of shuffled index batches."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def vae_loss(rec: torch.Tensor, x: torch.Tensor, chroma_weight: float = 0.0) -> torch.Tensor:
    """MSE of a reconstruction [N, 3, H, W], plus ``chroma_weight`` × the MSE of its colour
    differences (R − G, B − G): an error shared by the three channels (brightness) costs only the MSE,
    one that tints a gray image costs more (``base_model.tiny.vae_chroma_weight``)."""
    loss = F.mse_loss(rec, x)
    if chroma_weight:
        err = rec - x  # [N, 3, H, W]
        loss = loss + chroma_weight * F.mse_loss(err[:, [0, 2]], err[:, [1, 1]])
    return loss


def train_vae(vae, images: torch.Tensor, steps: int, lr: float, batch_size: int,
              gen: torch.Generator, progress: bool, chroma_weight: float = 0.0) -> list[float]:
    """Train as a deterministic autoencoder (posterior mean), then pin a tiny posterior variance.

    Sampling the posterior from the start (its std is ≈ 1 at initialisation) slows learning several
    times at this size; pinning log σ² = -12 afterwards keeps ``latent_dist.sample()`` (which
    diffusers' training scripts call) a faithful, near-deterministic code.

    Gradients are clipped to norm 1 (as the U-Net's are): without it the loss rises during the
    warm-up before it falls, and where it lands depended on rounding — the same seed reached a
    final loss of 0.016 with one torch thread and 0.024 (2 dB less PSNR) with two.
    """
    opt = torch.optim.Adam(vae.parameters(), lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    losses: list[float] = []
    batches = _batches(len(images), min(batch_size, len(images)), gen)
    vae.train()
    for _ in tqdm(range(steps), desc="pretrain VAE", disable=not progress):
        x = images[next(batches)]
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        loss = vae_loss(rec, x, chroma_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0, foreach=True)
        opt.step()
        sched.step()
        losses.append(loss.item())
    vae.eval()
    with torch.no_grad():
        half = vae.quant_conv.out_channels // 2
        vae.quant_conv.weight[half:].zero_()
        vae.quant_conv.bias[half:] = LOGVAR
    return losses


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (unscaled)."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        post = vae.encode(images[i:i + batch_size]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor) -> torch.Tensor:
    mean, _ = encode(vae, images)
    return torch.cat([vae.decode(mean[i:i + 64]).sample for i in range(0, len(mean), 64)])


def reconstruction_psnr(vae, images: torch.Tensor) -> float:
    return psnr(reconstruct(vae, images), images)


def denoise_loss(unet, text_encoder, scheduler, latents: torch.Tensor, ids: torch.Tensor, noise: torch.Tensor,
                 timesteps: torch.Tensor, snr_gamma: float | None = None) -> torch.Tensor:
    """The MSE of latent diffusion (ε or v target, from the scheduler), optionally Min-SNR-γ
    weighted (Hang et al. 2023; the weight is min(SNR, γ) / SNR for ε and / (SNR + 1) for v)."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    hidden = text_encoder(ids)[0]
    pred = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
    target = prediction_target(scheduler, latents, noise, timesteps)
    if snr_gamma is None:
        return F.mse_loss(pred, target)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    denominator = snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr
    weight = torch.clamp(snr, max=snr_gamma) / denominator  # [B]
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()


def train_denoiser(unet, text_encoder, scheduler, mean: torch.Tensor, std: torch.Tensor,
                   scaling: float, ids: torch.Tensor, empty_ids: torch.Tensor, steps: int, lr: float,
                   batch_size: int, caption_dropout: float, gen: torch.Generator,
                   progress: bool, snr_gamma: float | None = None, offset_noise: float = 0.0,
                   grounding: GroundingTargets | None = None) -> tuple[list[float], list[float]]:
    """Denoising training (ε or v, as the scheduler says) of U-Net and text encoder together;
    returns the denoising and the grounding loss of every step.

    The miniature's scheduler ends at zero SNR (``base_model.tiny.zero_terminal_snr``): SD 1.5's
    noisiest latent still holds √ᾱ_T ≈ 7 % of the image, and on 8×8 latents that residue shows the
    background and where each object is, so a model trained on it reads the layout from the noise
    instead of the caption; sampling starts from pure noise, and every sample came out mid-grey with
    its objects wherever the noise put them. ``offset_noise`` (Guttenberg 2023), a random
    per-(image, channel) constant in the noise, is the older fix for the background alone.

    With ``grounding``, each step adds ``grounding.weight`` × the token loss of the cross-attention
    maps (:func:`selora.grounding.grounding_loss`) for the captions that were not dropped.
    """
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, fused=True)  # one kernel for all tensors
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    losses: list[float] = []
    ground_losses: list[float] = []
    batches = _batches(len(mean), min(batch_size, len(mean)), gen)
    T = scheduler.config.num_train_timesteps
    unet.train()
    text_encoder.train()
    recording = recording_cross_attention(unet) if grounding is not None else nullcontext()
    with recording as recorder:
        for _ in tqdm(range(steps), desc="pretrain U-Net + text encoder", disable=not progress):
            idx = next(batches)
            latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling
            batch_ids = ids[idx].clone()
            drop = torch.rand(len(idx), generator=gen) < caption_dropout
            batch_ids[drop] = empty_ids
            noise = torch.randn(latents.shape, generator=gen)  # [B, C, h, w]
            if offset_noise:
                noise = noise + offset_noise * torch.randn((*latents.shape[:2], 1, 1), generator=gen)
            t = torch.randint(0, T, (len(idx),), generator=gen)
            if recorder is not None:
                recorder.maps = []  # this step's cross-attention maps, one [B, HW, L] per layer
            loss = denoise_loss(unet, text_encoder, scheduler, latents, batch_ids, noise, t, snr_gamma)
            ground = torch.zeros(())
            if grounding is not None:
                weights, masks = grounding.batch(idx, ~drop, ids.shape[1])
                ground = grounding.weight * grounding_loss(recorder.maps, weights, masks)
            opt.zero_grad(set_to_none=True)
            (loss + ground).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
            sched.step()
            losses.append(loss.item())
            ground_losses.append(ground.item())
    unet.eval()
    text_encoder.eval()
    return losses, ground_losses


@torch.no_grad()
def caption_gap(unet, text_encoder, scheduler, latents: torch.Tensor, ids: torch.Tensor,
                seed: int) -> dict[str, float]:
    """Held-out denoising loss with the right captions vs. the same captions shuffled."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(50, 950, (len(latents),), generator=gen)
    perm = torch.roll(torch.arange(len(ids)), 1)
    matched = denoise_loss(unet, text_encoder, scheduler, latents, ids, noise, t).item()
    shuffled = denoise_loss(unet, text_encoder, scheduler, latents, ids[perm], noise, t).item()
    return {"matched_caption_loss": matched, "shuffled_caption_loss": shuffled}


def colour_probe(pipe, seed: int, steps: int = 20, n: int = 2) -> dict[str, Any]:
    """Generate "a large <colour> circle in the center on a black background" and check the colour.

    Returns the accuracy of naming the probe colour from the mean RGB of the image centre (nearest
    of the probe colours), the per-colour mean RGB, and the images.
    """
    prompts = [f"a large {c} circle in the center on a black background" for c in COLOUR_PROBES]
    gen = torch.Generator().manual_seed(seed)
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=7.5, generator=gen,
               num_images_per_prompt=n, output_type="np")
    imgs = out.images  # [len(prompts)*n, H, W, 3] in [0, 1]
    h = imgs.shape[1]
    c0, c1 = h // 4, h - h // 4
    refs = np.array(list(COLOUR_PROBES.values()), dtype=np.float32) / 255.0
    names = list(COLOUR_PROBES)
    correct, means = 0, {}
    for i, img in enumerate(imgs):
        want = names[i // n]
        rgb = img[c0:c1, c0:c1].reshape(-1, 3).mean(0)
        means.setdefault(want, []).append(rgb.round(3).tolist())
        correct += names[int(np.argmin(((refs - rgb) ** 2).sum(1)))] == want
    return {"accuracy": correct / len(imgs), "mean_rgb": means, "images": imgs}


def save_grid(images: np.ndarray, path: Path, cols: int) -> None:
    n, h, w, _ = images.shape
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = (img * 255).round().astype(np.uint8)
    Image.fromarray(grid).resize((cols * w * 2, rows * h * 2), Image.Resampling.NEAREST).save(path)


def _target_domain_reconstruction(vae, reports_dir: str | Path | None, size: int,
                                  limit: int = 128) -> dict[str, float]:
    """How well the VAE codes the fine-tuning domain: PSNR and colour cast of its reconstructions
    of (up to ``limit``) held-out CXR phantoms. Every generated image is decoded by this VAE, so
    this bounds what fine-tuning the U-Net can reach (the paper's SD 1.5 VAE codes radiographs
    nearly losslessly)."""
    if reports_dir is None:
        return {}
    rows = [r for r in read_manifest(reports_dir) if r["split"] != "train"][:limit]
    if not rows:
        return {}
    x = load_images(rows, size)
    rec = reconstruct(vae, x)
    cast = colour_cast(rec, -1.0, 1.0)  # rec in the VAE's [-1, 1]
    return {"vae_psnr_db_cxr": round(psnr(rec, x), 2), "vae_colour_cast_cxr": round(cast, 4)}


def pretrain_base(params: Params, natural_dir: str | Path, reports_dir: str | Path | None,
                  out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run phases 1–5 and write the pipeline folder to ``out``; returns the report."""
    cfg = params.base_model.tiny
    prov = Provenance("pretrain-base", params.raw)
    use_threads(cfg.threads)
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    train_rows, test_rows = _natural_splits(natural_dir, cfg.batch_size)
    train_rows = with_objects(natural_dir, train_rows)
    if cfg.grounding_weight and not any(r["objects"] for r in train_rows):
        raise DatasetFormatError(
            f"{natural_dir}: no training image has its objects' phrases and boxes (train/{OBJECTS}), "
            "which base_model.tiny.grounding_weight > 0 needs; rebuild the set with "
            "this version's `selora make-synthetic` (snakemake --forcerun make_synthetic) or set "
            "base_model.tiny.grounding_weight: 0"
        )
    train_x = load_images(train_rows, cfg.image_size)
    test_x = load_images(test_rows, cfg.image_size)
    corpus = [r["text"] for r in train_rows]
    if reports_dir is not None:
        corpus += [r["text"] for r in read_manifest(reports_dir) if r["split"] == "train"]

    # 1. VAE
    vae = tinysd.build_vae(cfg)
    vae_losses = train_vae(vae, train_x, cfg.vae_steps, cfg.vae_lr, cfg.vae_batch_size, gen, progress,
                           cfg.vae_chroma_weight)
    vae.requires_grad_(False)
    vae_psnr = reconstruction_psnr(vae, test_x)
    target = _target_domain_reconstruction(vae, reports_dir, cfg.image_size)

    # 2. Latents and the scaling factor
    mean, std = encode(vae, train_x)
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)

    # 3. Tokenizer
    tokenizer = tinysd.train_tokenizer(corpus, cfg.vocab_size, cfg.max_length)

    # 4. Text encoder + U-Net
    text_encoder = tinysd.build_text_encoder(cfg, tokenizer)
    unet = tinysd.build_unet(cfg)
    scheduler = tinysd.noise_scheduler(cfg)
    ids = tokenize(tokenizer, [r["text"] for r in train_rows])
    empty_ids = tokenize(tokenizer, [""])[0]
    grounding = None
    if cfg.grounding_weight:
        sides = attention_sides(mean.shape[-1], len(cfg.unet_channels))
        grounding = grounding_targets(tokenizer, train_rows, sides, cfg.grounding_weight)
    unet_losses, ground_losses = train_denoiser(
        unet, text_encoder, scheduler, mean, std, scaling, ids, empty_ids, cfg.unet_steps, cfg.unet_lr,
        cfg.batch_size, cfg.caption_dropout, gen, progress, cfg.snr_gamma, cfg.offset_noise, grounding)
    test_mean, _ = encode(vae, test_x)
    gap = caption_gap(unet, text_encoder, scheduler, test_mean * scaling,
                      tokenize(tokenizer, [r["text"] for r in test_rows]), params.seed)

    # 5. Save the pipeline folder (atomically) with its report: what the miniature reads and draws
    pipe = _pipeline(vae, text_encoder, tokenizer, unet, tinysd.sampling_scheduler(cfg))
    probe = colour_probe(pipe, params.seed)
    report = {
        "vae_psnr_db": round(vae_psnr, 2),
        **target,
        "latent_scaling_factor": scaling,
        "vocab_size": len(tokenizer),
        **{k: round(v, 5) for k, v in gap.items()},
        "colour_probe_accuracy": probe["accuracy"],
        "colour_probe_mean_rgb": probe["mean_rgb"],
        "caption_probe": caption_probe(pipe, seed=params.seed),
        # what it draws for held-out captions, sampled as the grid samples (DDIM, params.sample)
        "sample_probe": sample_probe(pipe, seed=params.seed, steps=params.sample.steps,
                                     guidance_scale=params.sample.guidance_scale,
                                     guidance_rescale=params.sample.guidance_rescale),
        "vae_final_loss": float(np.mean(vae_losses[-20:])) if vae_losses else None,
        "unet_final_loss": float(np.mean(unet_losses[-50:])) if unet_losses else None,
        "grounding": _grounding_report(grounding, ground_losses),
        "n_train": len(train_rows),
        "n_heldout": len(test_rows),
        "parameters": {name: sum(p.numel() for p in m.parameters())
                       for name, m in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder))},
    }
    with atomic_dir(out) as tmp:
        with loading_bars(progress):  # transformers draws a "Writing model shards" bar
            pipe.save_pretrained(tmp, safe_serialization=True)
        save_grid(probe["images"], Path(tmp) / "colour_probe.png", cols=len(COLOUR_PROBES) * 2 // 2)
        write_json(Path(tmp) / REPORT, {**report, "provenance": prov.as_dict()})
    return report


Rows = list[dict[str, Any]]


def _grounding_report(grounding: GroundingTargets | None, losses: list[float]) -> dict[str, Any]:
    """The grounding weight, how many training captions had boxes (and why the others had none),
    and the final unweighted grounding loss (1 = every phrase's attention outside its box)."""
    if grounding is None:
        return {"weight": 0.0}
    final = float(np.mean(losses[-50:])) / grounding.weight if losses else None
    return {"weight": grounding.weight, **grounding.counts, "final_loss": final}


def _natural_splits(natural_dir: str | Path, batch_size: int) -> tuple[Rows, Rows]:
    """The natural set's training and held-out rows (enough of each to pre-train and to score)."""
    rows = read_manifest(natural_dir)
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] != "train"]
    if len(train_rows) < batch_size or not test_rows:
        raise DatasetFormatError(
            f"{natural_dir}: need ≥ {batch_size} training and ≥ 1 held-out images, found "
            f"{len(train_rows)} / {len(test_rows)}; run `selora make-synthetic` first"
        )
    return train_rows, test_rows


def _pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """The trained parts as a diffusers ``StableDiffusionPipeline`` (SD 1.5's, sampling with DDIM)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
