"""FID and KID between two feature matrices, computed by torchmetrics in float64.

Features are extracted once (real test images once per setup, generated images once per run) and
handed to torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` through a
pass-through "feature extractor", so one Inception or reference-network forward serves every tap
and both metrics, and the distance maths is the library's, not ours.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from selora.metrics import one_thread
from selora.metrics.samples import SampleError

# The three FID taps every feature space provides, final / middle / low (Inception: 2048 / 192 / 64,
# the paper's FID / FID 192 / FID 64): metrics.json's keys and the quality tables' columns.
TAP_ROLES = ("fid", "fid_mid", "fid_low")


class PassThrough(nn.Module):
    """A torchmetrics feature extractor for features that are already extracted: [N, d] → [N, d]."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _check(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"feature matrices must be [N, d] with the same d, got {real.shape} and {fake.shape}"
        )
    for name, f in (("real", real), ("generated", fake)):
        if f.shape[0] < 2:
            raise SampleError(f"{f.shape[0]} {name} image(s): FID/KID need at least 2")
        if not torch.isfinite(f).all():
            raise SampleError(f"{name} features contain NaN/inf (blank or corrupt images?)")


@one_thread()  # torchmetrics' matrix square root rounds differently on two threads (~1e-10 relative)
def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to real [N, d] and generated [M, d] features; the
    same bits whatever torch's thread count (`dvc repro` runs a stage on every core, Snakemake on one)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check(real, fake)
    metric = FrechetInceptionDistance(feature=PassThrough(real.shape[1]), reset_real_features=False)
    metric.set_dtype(torch.float64)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


@one_thread()
def kid(
    real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int, seed: int = 0
) -> dict[str, float | int]:
    """Kernel Inception Distance (unbiased polynomial-kernel MMD²) over random subsets.

    The subset size is capped at the smaller set (test splits can hold a few dozen images); the
    size used is returned. Subsets are drawn from a fixed seed, so the value is reproducible.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check(real, fake)
    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=PassThrough(real.shape[1]), subsets=subsets, subset_size=size
        )
    metric.set_dtype(torch.float64)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"kid_mean": float(mean), "kid_std": float(std), "kid_subsets": subsets, "kid_subset_size": size}
