"""Training data for the engine: latents cached once, a seeded resumable batch order, and the
fixed validation draws.

The VAE is frozen (paper Section 3.5: no adapter in the VAE), so every image is encoded once:
we keep the posterior mean and std and draw ``mean + std · ε`` per step from the run's generator,
exactly what ``latent_dist.sample()`` would give, without running the encoder every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from selora.errors import DatasetFormatError


@dataclass
class LatentSet:
    """One split, encoded: posterior mean/std [N, C, h, w] (unscaled) and token ids [N, L]."""

    mean: torch.Tensor
    std: torch.Tensor
    input_ids: torch.Tensor
    rows: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.rows)


def load_pixels(rows: list[dict[str, Any]], size: int) -> torch.Tensor:
    """[N, 3, size, size] in [-1, 1]; the prepared images must already be ``size`` px (paper B.1)."""
    out = torch.empty(len(rows), 3, size, size)
    for i, row in enumerate(rows):
        try:
            with Image.open(row["path"]) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    raise DatasetFormatError(
                        f"{row['path']} is {im.size[0]}×{im.size[1]} px but the setup says {size} px: "
                        "prepare the data set for this size (selora prepare --size ...)"
                    )
                arr = np.asarray(im, dtype=np.float32)
        except OSError as exc:
            raise DatasetFormatError(f"cannot read prepared image {row['path']}: {exc}") from exc
        out[i] = torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0
    return out


@torch.no_grad()
def encode_rows(vae, tokenizer, rows: list[dict[str, Any]], size: int, device: torch.device,
                batch_size: int = 32, progress: bool = False, desc: str = "encode") -> LatentSet:
    """Encode images with the frozen VAE and tokenize prompts (truncated to the encoder's limit)."""
    means, stds = [], []
    for i in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress):
        pixels = load_pixels(rows[i:i + batch_size], size).to(device, vae.dtype)
        post = vae.encode(pixels).latent_dist
        means.append(post.mean.float().cpu())
        stds.append(post.std.float().cpu())
    return LatentSet(torch.cat(means), torch.cat(stds), tokenize(tokenizer, [r["text"] for r in rows]), rows)


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids [N, L], padded to and truncated at the encoder's limit (as diffusers' pipelines do)."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch: depends only on (seed, epoch), so a resumed run sees the same."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Last partial batch kept (no sample is skipped), as diffusers' DataLoader default does."""
    return (n + batch_size - 1) // batch_size


@dataclass
class ValidationDraws:
    """Fixed (sample index, noise, timestep) triples: every epoch and every method sees the same."""

    index: torch.Tensor       # [M]
    noise: torch.Tensor       # [M, C, h, w] latent noise
    latent_eps: torch.Tensor  # [M, C, h, w] posterior sampling noise
    timesteps: torch.Tensor   # [M]


def validation_draws(val: LatentSet, draws: int, num_train_timesteps: int, seed: int) -> ValidationDraws:
    gen = torch.Generator().manual_seed(seed + 7919)
    index = torch.arange(len(val)).repeat_interleave(draws)
    shape = (len(index), *val.mean.shape[1:])
    return ValidationDraws(
        index=index,
        noise=torch.randn(shape, generator=gen),
        latent_eps=torch.randn(shape, generator=gen),
        timesteps=torch.randint(0, num_train_timesteps, (len(index),), generator=gen),
    )
