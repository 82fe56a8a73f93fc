"""Uncertainty of the quality tables: bootstrap intervals over test images, paired tests over seeds.

Two sources of noise make one FID differ from another, and each gets its own tool:

- **the test images** (a test split of a few dozen to a few hundred images): :func:`bootstrap`
  resamples the *test prompts* with replacement — the same draw for every run, so that a real image
  and the images generated from its prompt stay together and the comparison is paired — and
  recomputes FID and KID of every run on each resample (:func:`bootstrap_findings`: the finding
  balanced accuracy, on the same draws). :func:`interval` turns the resampled
  differences into a percentile interval; an interval that covers 0 is "not significant".
- **the training seed** (3 seeds in the paper): :func:`paired_test` is scipy's paired t-test over
  the seeds two methods share. With 3 seeds it has 2 degrees of freedom, so it can only flag a gap
  that is large against the seed-to-seed spread; a large p-value says "3 seeds cannot tell", never
  "the methods are equal" (a Wilcoxon signed-rank test cannot go below p = 0.25 with 3 pairs).

FID here is the Fréchet distance in float64 (tr √(Σ₁Σ₂) through the eigenvalues of the symmetric
√Σ₁ Σ₂ √Σ₁, on one torch thread: 200 resamples × 15 runs take seconds at d = 128). With fewer test
images than feature dimensions (Inception's 2048 against tens to hundreds of test images) it goes
through the n × m cross-Gram matrix instead, exactly (:func:`_gram_frechet`): the d × d eigen-problems
took ~4 s each here at d = 2048, i.e. hours for a paper-scale bootstrap. KID is the unbiased
polynomial-kernel MMD² over the whole resample (KID's kernel, without its subsets). Both agree with
:mod:`selora.metrics.frechet` (torchmetrics) on the same sets; ``tests/test_stats.py`` checks it.
Duplicated rows in a resample make its covariance slightly smaller, so resampled FIDs scatter around
a slightly shifted centre; differences between runs on the same resample are what the tables use.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch

from selora.metrics import one_thread  # small eigen-problems: 50x faster on one thread


@dataclass(frozen=True)
class RunFeatures:
    """One run's generated-image features [M, d] and, per row, the index of its test prompt (the row
    of the real-feature matrix whose prompt generated it)."""

    features: np.ndarray
    real_index: np.ndarray



def _t(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(cov)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def _frechet(mu1: torch.Tensor, cov1: torch.Tensor, sqrt1: torch.Tensor, fake: torch.Tensor) -> float:
    mu2, cov2 = fake.mean(0), torch.cov(fake.T)
    inner = torch.linalg.eigvalsh(sqrt1 @ cov2 @ sqrt1)  # tr √(Σ₁Σ₂) = Σ √λ(√Σ₁ Σ₂ √Σ₁)
    tr_covmean = inner.clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + cov1.trace() + cov2.trace() - 2 * tr_covmean)


def _gram_frechet(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The same distance through the n × m cross-Gram matrix, for n < d: with Σᵢ = XᵢᵀXᵢ (rows
    centred, scaled by 1/√(nᵢ − 1)), the non-zero eigenvalues of Σ₁Σ₂ are those of (X₁X₂ᵀ)(X₁X₂ᵀ)ᵀ,
    so tr √(Σ₁Σ₂) is the sum of the singular values of X₁X₂ᵀ, and tr Σᵢ = ‖Xᵢ‖²."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    x1 = (real - mu1) / math.sqrt(len(real) - 1)
    x2 = (fake - mu2) / math.sqrt(len(fake) - 1)
    nuclear = torch.linalg.svdvals(x1 @ x2.T).sum()
    return float(((mu1 - mu2) ** 2).sum() + (x1 ** 2).sum() + (x2 ** 2).sum() - 2 * nuclear)


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to ``real`` [N, d] and ``fake`` [M, d] (float64)."""
    with one_thread():
        r, f = _t(real), _t(fake)
        if len(r) < r.shape[1]:
            return _gram_frechet(r, f)
        cov1 = torch.cov(r.T)
        return _frechet(r.mean(0), cov1, _psd_sqrt(cov1), f)


def _kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(x, y) = (x·y / d + 1)³."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2(k_rr: torch.Tensor, k_ff: torch.Tensor, k_rf: torch.Tensor) -> float:
    """Unbiased MMD² from the three kernel matrices (diagonals of the within-set ones excluded)."""
    m, n = k_rr.shape[0], k_ff.shape[0]
    within_r = (k_rr.sum() - k_rr.trace()) / (m * (m - 1))
    within_f = (k_ff.sum() - k_ff.trace()) / (n * (n - 1))
    return float(within_r + within_f - 2 * k_rf.mean())


def kid_full(real: np.ndarray, fake: np.ndarray) -> float:
    """KID as one unbiased MMD² over the whole sets (KID with a single subset holding everything)."""
    with one_thread():
        r, f = _t(real), _t(fake)
        return _mmd2(_kernel(r, r), _kernel(f, f), _kernel(r, f))


def bootstrap_draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] test-prompt indices drawn with replacement: the resamples every bootstrap of
    one report shares (FID/KID and the findings alike), so their differences stay paired."""
    if n < 3:
        raise ValueError(f"{n} real test images: the bootstrap needs at least 3")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _rows_per_prompt(key: Hashable, real_index: np.ndarray, rows: int, n: int) -> list[np.ndarray]:
    """For each of the ``n`` test prompts, the run's generated rows it made."""
    idx = np.asarray(real_index)
    if len(idx) != rows or idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"run {key}: real_index must give a test image (0..{n - 1}) for every row")
    return [np.flatnonzero(idx == i) for i in range(n)]


def bootstrap_findings(
    n: int,
    runs: Mapping[Hashable, tuple[np.ndarray, torch.Tensor, torch.Tensor]],
    resamples: int,
    seed: int = 0,
) -> dict[Hashable, np.ndarray]:
    """Finding balanced accuracy of every run on the same resamples of the ``n`` test prompts as
    :func:`bootstrap` (same ``seed``). ``runs``: key → (real_index [M], finding_pred [M, K],
    finding_target [M, K]). Returns key → [B] (NaN where a resample drew none of the run's rows)."""
    from selora.metrics.reference import balanced_accuracy

    draws = bootstrap_draws(n, resamples, seed)
    out = {}
    for key, (real_index, pred, target) in runs.items():
        rows = _rows_per_prompt(key, real_index, len(pred), n)
        values = np.full(resamples, np.nan)
        for b, draw in enumerate(draws):
            g = torch.as_tensor(np.concatenate([rows[i] for i in draw]))
            if len(g):
                values[b] = balanced_accuracy(pred[g], target[g])
        out[key] = values
    return out


def bootstrap(
    real: np.ndarray,
    runs: Mapping[Hashable, RunFeatures],
    resamples: int,
    seed: int = 0,
) -> dict[Hashable, dict[str, np.ndarray]]:
    """FID and KID of every run on ``resamples`` bootstrap resamples of the test prompts.

    Every run sees the same resamples (drawn once from ``numpy.random.default_rng(seed)``), so
    per-resample differences between runs are paired. Returns run → {"fid": [B], "kid": [B]}.
    """
    n = len(real)
    rows = {key: _rows_per_prompt(key, run.real_index, len(run.features), n) for key, run in runs.items()}
    draws = bootstrap_draws(n, resamples, seed)
    out = {key: {"fid": np.full(resamples, np.nan), "kid": np.full(resamples, np.nan)} for key in runs}
    gram = n < real.shape[1]  # fewer test images than dimensions: no d × d eigen-problems
    with one_thread():
        r_all = _t(real)
        k_rr = _kernel(r_all, r_all)
        kernels = {}
        for key, run in runs.items():
            f = _t(run.features)
            kernels[key] = (f, _kernel(f, f), _kernel(r_all, f))
        for b, draw in enumerate(draws):
            r = r_all[draw]
            if not gram:
                cov1 = torch.cov(r.T)
                mu1, sqrt1 = r.mean(0), _psd_sqrt(cov1)
            d = torch.as_tensor(draw)
            krr = k_rr[d][:, d]
            for key, (feats, k_ff, k_rf) in kernels.items():
                g = torch.as_tensor(np.concatenate([rows[key][i] for i in draw]))
                if len(g) < 2:
                    continue  # this resample drew no prompt the run sampled twice: left out (NaN)
                out[key]["fid"][b] = (_gram_frechet(r, feats[g]) if gram
                                      else _frechet(mu1, cov1, sqrt1, feats[g]))
                out[key]["kid"][b] = _mmd2(krr, k_ff[g][:, g], k_rf[d][:, g])
    return out


def interval(samples: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples`` at ``confidence`` (NaN resamples ignored)."""
    arr = np.asarray(samples, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(arr, [tail, 100 - tail])
    return float(lo), float(hi)


def covers_zero(lo: float, hi: float) -> bool:
    """True when the interval [lo, hi] contains 0 (the difference is not significant)."""
    return lo <= 0 <= hi


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test over seeds: mean and sample std of the per-seed differences a − b."""

    n: int
    mean_diff: float
    std_diff: float
    t: float
    p: float


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """scipy's paired t-test of ``a`` against ``b`` (same seeds, same order). p is NaN with fewer than
    2 pairs or when every difference is the same (zero spread: no test is possible)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired test needs the same seeds on both sides, got {x.shape} and {y.shape}")
    d = x - y
    n = int(d.size)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, math.nan)
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2 or std <= 1e-12 * max(1.0, abs(float(d.mean()))):  # no spread (up to rounding): no test
        return PairedTest(n, float(d.mean()), std, math.nan, math.nan)
    res = scipy.stats.ttest_rel(x, y)
    return PairedTest(n, float(d.mean()), std, float(res.statistic), float(res.pvalue))
