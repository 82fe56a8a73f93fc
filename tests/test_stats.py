"""Bootstrap intervals over test images and paired tests over seeds, on hand-made features whose
answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from selora.metrics import frechet
from selora.metrics.stats import (
    RunFeatures,
    bootstrap,
    bootstrap_draws,
    bootstrap_findings,
    covers_zero,
    frechet_distance,
    interval,
    kid_full,
    paired_test,
)


def _features(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / d**0.5
    return rng.normal(size=(n, d)) @ mix  # correlated [n, d]


def test_numpy_side_fid_and_kid_equal_the_torchmetrics_ones():
    real, fake = _features(120, 16, 0), _features(100, 16, 1) * 1.3 + 0.2
    assert frechet_distance(real, fake) == pytest.approx(
        frechet.fid(torch.tensor(real), torch.tensor(fake)), rel=1e-8
    )
    # KID with one subset holding every row is exactly the full-set unbiased MMD².
    tm = frechet.kid(torch.tensor(real), torch.tensor(fake), subsets=1, subset_size=100)
    assert tm["kid_subset_size"] == 100
    assert kid_full(real[:100], fake) == pytest.approx(
        frechet.kid(torch.tensor(real[:100]), torch.tensor(fake), subsets=1, subset_size=100)["kid_mean"],
        rel=1e-8,
    )
    # A pure mean shift c keeps both covariances: FID = ‖c‖² exactly.
    assert frechet_distance(real, real + 0.5) == pytest.approx(16 * 0.25, rel=1e-8)


def test_fewer_images_than_dimensions_take_the_cross_gram_route_to_the_same_fid():
    """n < d (a few test images in Inception's 2048 dims): the n × m singular values give exactly the
    eigen-form distance, and so does every bootstrap resample."""
    from selora.metrics import stats

    real, fake = _features(12, 40, 0), _features(15, 40, 1) * 1.3 + 0.2
    eigen = stats._frechet(*(lambda r, c: (r.mean(0), c, stats._psd_sqrt(c)))(
        torch.tensor(real), torch.cov(torch.tensor(real).T)), torch.tensor(fake))
    # (the eigen form is the less exact one here: √ of rounding-level eigenvalues of a rank-11 Σ₁)
    assert frechet_distance(real, fake) == pytest.approx(eigen, rel=1e-7)
    assert frechet_distance(real, fake) == pytest.approx(
        frechet.fid(torch.tensor(real), torch.tensor(fake)), rel=1e-6)
    idx = np.arange(12)
    boot = bootstrap(real, {"a": RunFeatures(fake[:12], idx)}, 5, seed=3)["a"]["fid"]
    draws = np.random.default_rng(3).integers(0, 12, size=(5, 12))
    assert boot == pytest.approx([frechet_distance(real[d], fake[:12][d]) for d in draws], rel=1e-9)


def _bootstrap(real, gens: dict, resamples: int = 200, seed: int = 0):
    idx = np.arange(len(real))
    return bootstrap(real, {k: RunFeatures(v, idx) for k, v in gens.items()}, resamples, seed)


def test_identical_runs_give_a_difference_interval_that_covers_zero():
    real = _features(64, 8, 0)
    gen = real + np.random.default_rng(5).normal(scale=0.3, size=real.shape)
    out = _bootstrap(real, {"a": gen, "b": gen.copy()})
    for metric in ("fid", "kid"):
        diff = out["a"][metric] - out["b"][metric]
        assert np.allclose(diff, 0)  # paired: the same resample for both runs
        lo, hi = interval(diff)
        assert covers_zero(lo, hi)
    # The FID interval of one run brackets its full-set FID (the resamples scatter around it).
    lo, hi = interval(out["a"]["fid"])
    assert lo < frechet_distance(real, gen) * 1.5 and hi > frechet_distance(real, gen) * 0.5 and lo < hi


def test_a_shifted_run_is_significantly_worse_and_a_resampled_twin_is_not():
    real = _features(64, 8, 1)
    noise = np.random.default_rng(7)
    good = real + noise.normal(scale=0.3, size=real.shape)
    twin = real + noise.normal(scale=0.3, size=real.shape)  # another draw of the same generator
    shifted = good + 0.4  # FID grows by ≈ 8 · 0.16 = 1.28
    out = _bootstrap(real, {"good": good, "twin": twin, "shifted": shifted})
    for metric in ("fid", "kid"):
        lo, hi = interval(out["shifted"][metric] - out["good"][metric])
        assert lo > 0 and not covers_zero(lo, hi), metric
    lo, hi = interval(out["twin"]["fid"] - out["good"]["fid"])
    assert covers_zero(lo, hi)
    assert np.mean(out["shifted"]["fid"] - out["good"]["fid"]) == pytest.approx(8 * 0.16, rel=0.2)


def test_bootstrap_is_reproducible_and_keeps_generated_rows_with_their_prompt():
    real = _features(20, 4, 2)
    gen = np.repeat(real, 2, axis=0) + 0.1  # two images per prompt, in prompt order
    runs = {"x": RunFeatures(gen, np.repeat(np.arange(20), 2))}
    a, b = bootstrap(real, runs, 30, seed=3), bootstrap(real, runs, 30, seed=3)
    assert np.array_equal(a["x"]["fid"], b["x"]["fid"])
    assert not np.array_equal(a["x"]["fid"], bootstrap(real, runs, 30, seed=4)["x"]["fid"])
    # Each resample takes a prompt's real image and both its generated images: the generated set is
    # the real one duplicated and shifted, so the FID stays at the shift's ‖c‖² = 4 · 0.01 (up to the
    # covariance's n vs. 2n normalisation).
    assert np.allclose(a["x"]["fid"], 0.04, atol=0.03)
    with pytest.raises(ValueError, match="real_index"):
        bootstrap(real, {"bad": RunFeatures(gen, np.full(40, 25))}, 5)


def test_finding_bootstrap_resamples_the_prompts_of_the_fid_bootstrap():
    """The findings are resampled on the same draws as FID/KID, each image with its prompt: a run
    that misreads only prompt 0's two images is perfect exactly on the resamples without prompt 0."""
    n = 20
    idx = np.repeat(np.arange(n), 2)  # two images per prompt
    target = torch.tensor([[i % 2, (i // 2) % 2] for i in idx])  # [40, 2]: both classes of each finding
    wrong = target.clone()
    wrong[:2] = 1 - wrong[:2]  # prompt 0's images read wrong
    runs = {"right": (idx, target.clone(), target), "wrong0": (idx, wrong, target),
            "constant": (idx, torch.zeros_like(target), target)}
    out = bootstrap_findings(n, runs, 50, seed=3)
    draws = bootstrap_draws(n, 50, 3)
    has0 = np.array([0 in d for d in draws])
    assert has0.any() and not has0.all()
    assert np.all(out["right"] == 1.0)
    assert np.all(out["wrong0"][~has0] == 1.0) and np.all(out["wrong0"][has0] < 1.0)
    # Always answering class 0: recall 1 and 0 for every finding whose two classes were drawn.
    assert np.allclose(out["constant"], 0.5)
    with pytest.raises(ValueError, match="real_index"):
        bootstrap_findings(n, {"bad": (np.full(40, 25), target, target)}, 5)


def test_paired_test_over_seeds_is_scipys_and_says_when_it_cannot_test():
    a, b = [10.0, 12.0, 11.0], [8.0, 9.5, 9.0]
    res = paired_test(a, b)
    ref = scipy.stats.ttest_rel(a, b)
    assert (res.n, res.t, res.p) == (3, pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    assert res.mean_diff == pytest.approx(6.5 / 3) and res.p < 0.05
    noisy = paired_test([10.0, 12.0, 11.0], [12.0, 9.0, 11.5])
    assert noisy.p > 0.5  # 3 seeds cannot tell these apart
    one = paired_test([3.0], [1.0])
    assert one.n == 1 and one.mean_diff == 2.0 and math.isnan(one.p)
    flat = paired_test([3.0, 4.0], [1.0, 2.0])  # identical differences: no spread, no test
    assert flat.std_diff == 0 and math.isnan(flat.p)
    with pytest.raises(ValueError, match="same seeds"):
        paired_test([1.0, 2.0], [1.0])


def test_interval_ignores_nan_and_uses_the_confidence_level():
    samples = np.concatenate([np.arange(1, 101, dtype=float), [np.nan]])
    lo90, hi90 = interval(samples, 0.90)
    lo, hi = interval(samples, 0.95)
    assert lo < lo90 < hi90 < hi and (lo90, hi90) == pytest.approx(np.percentile(np.arange(1, 101), [5, 95]))
    assert all(math.isnan(x) for x in interval([np.nan]))
    assert covers_zero(-1, 1) and covers_zero(0, 2) and not covers_zero(0.1, 2)
