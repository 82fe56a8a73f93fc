"""Is a method's difference to SeLoRA real? Bootstrap over test images and paired tests over seeds.

:func:`bootstrap_setup` loads every evaluated run's generated features (``features.safetensors``,
written by ``selora evaluate``) and the setup's real test features, and resamples the test prompts
(:func:`selora.metrics.stats.bootstrap`, the same draws for every run). :func:`compare` then gives,
for one method against SeLoRA (the paper's claim), per metric:

- the difference of the per-seed values from ``metrics.json``, averaged over the seeds both have,
  with scipy's paired t-test over those seeds;
- the percentile interval of the same seed-averaged difference over the bootstrap resamples; the
  difference is *significant* when that interval excludes 0.

Metrics: FID and KID (from the features) and the finding balanced accuracy (from the findings the
reference network read in each generated image, ``finding_pred`` / ``finding_target``), all on the
same resamples.

The no-adapter run has no training seed: its single value is paired with every SeLoRA seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from selora.config import Params
from selora.metrics.stats import (
    PairedTest,
    RunFeatures,
    bootstrap,
    bootstrap_findings,
    covers_zero,
    interval,
    paired_test,
)
from selora.report.collect import Collected
from selora.runlayout import DEFAULT_VARIANT, NO_ADAPTER, RunId

# bootstrap metric → metrics.json key; finding_bal: higher is better
METRIC_KEYS = {"fid": "fid", "kid": "kid_mean", "finding_bal": "finding_balanced_accuracy"}


@dataclass
class SetupBootstrap:
    """FID/KID per run and resample of one setup; ``note`` says why there is none."""

    setup: str
    resamples: int
    confidence: float
    samples: dict[RunId, dict[str, np.ndarray]] = field(default_factory=dict)
    note: str | None = None


def bootstrap_setup(params: Params, col: Collected, results: Path, setup: str) -> SetupBootstrap:
    """Bootstrap every evaluated main-grid and no-adapter run of ``setup`` (default variant)."""
    from safetensors.torch import load_file

    from selora.metrics.evaluate import load_run_features, load_run_findings
    from selora.metrics.fit_reference import REAL_FEATURES

    st = params.experiment.statistics
    out = SetupBootstrap(setup, st.bootstrap_resamples, st.confidence)
    if st.bootstrap_resamples == 0:
        out.note = "bootstrap off (experiment.statistics.bootstrap_resamples = 0)"
        return out
    runs = col.runs
    sel = runs[(runs.setup == setup) & (runs.variant == DEFAULT_VARIANT) & runs.has_metrics
               & runs.method.isin([*params.experiment.methods, NO_ADAPTER])]
    real_path = results / "reference" / setup / REAL_FEATURES
    if not real_path.is_file():
        out.note = f"no real test features at {real_path}"
        return out
    feats, findings, lacking = {}, {}, []
    for r in sel.itertuples():
        path = Path(r.path) / "features.safetensors"
        if not path.is_file():
            lacking.append(f"{r.method}/seed{r.seed}")
            continue
        f, idx = load_run_features(path)
        key = RunId(r.setup, r.method, r.variant, int(r.seed))
        feats[key] = RunFeatures(f.numpy(), idx.numpy())
        read = load_run_findings(path)
        if read is not None:
            findings[key] = (idx.numpy(), *read)
    if lacking:
        out.note = (f"no features.safetensors for {', '.join(lacking)} (evaluated before it was kept): "
                    "rerun `selora evaluate` for them")
        return out
    if not feats:
        out.note = "no evaluated runs"
        return out
    real = load_file(real_path)["fid"].numpy()
    out.samples = bootstrap(real, feats, st.bootstrap_resamples, seed=st.seed)
    # The findings on the same resamples (runs whose findings were scored; the others get no interval).
    for key, values in bootstrap_findings(len(real), findings, st.bootstrap_resamples, st.seed).items():
        out.samples[key]["finding_bal"] = values
    return out


@dataclass(frozen=True)
class Comparison:
    """One method against SeLoRA on one metric."""

    metric: str
    seeds: list[int]
    paired: PairedTest
    boot_mean: float = math.nan
    lo: float = math.nan
    hi: float = math.nan

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.lo)

    @property
    def significant(self) -> bool | None:
        return None if not self.has_interval else not covers_zero(self.lo, self.hi)


def _values(runs: pd.DataFrame, method: str, key: str) -> dict[int, float]:
    sel = runs[(runs.method == method) & runs.has_metrics]
    return {int(s): float(v) for s, v in zip(sel.seed, sel[key], strict=True) if v is not None and v == v}


def compare(runs: pd.DataFrame, boot: SetupBootstrap | None, setup: str, method: str,
            metric: str, seeds: Sequence[int]) -> Comparison:
    """``method`` − SeLoRA on ``metric`` ("fid" | "kid" | "finding_bal") over the shared ``seeds`` of
    ``setup``."""
    from selora.adapters.base import proposed_method

    key, baseline = METRIC_KEYS[metric], proposed_method()
    runs = runs[(runs.setup == setup) & (runs.variant == DEFAULT_VARIANT)]
    base = _values(runs, baseline, key)
    other = _values(runs, method, key)
    if method == NO_ADAPTER:  # one run, paired with every SeLoRA seed
        value = next(iter(other.values()), None)
        other = {s: value for s in base} if value is not None else {}
        run_of = {s: RunId(setup, NO_ADAPTER, DEFAULT_VARIANT, 0) for s in base}
    else:
        run_of = {s: RunId(setup, method, DEFAULT_VARIANT, s) for s in other}
    shared = [s for s in seeds if s in base and s in other]
    paired = paired_test([other[s] for s in shared], [base[s] for s in shared])
    if boot is None or not boot.samples or not shared:
        return Comparison(metric, shared, paired)
    try:
        base_run = {s: RunId(setup, baseline, DEFAULT_VARIANT, s) for s in shared}
        diffs = np.mean([boot.samples[run_of[s]][metric] - boot.samples[base_run[s]][metric] for s in shared],
                        axis=0)
    except KeyError:
        return Comparison(metric, shared, paired)
    lo, hi = interval(diffs, boot.confidence)
    return Comparison(metric, shared, paired, float(np.nanmean(diffs)), lo, hi)


def ranking_confidence(boot: SetupBootstrap | None, setup: str, methods: Sequence[str],
                       seeds: Sequence[int], order: Sequence[str]) -> tuple[float, float] | None:
    """Over the bootstrap resamples of FID (mean over ``seeds`` per method): the share in which
    ``order[0]`` is the best method and the share in which the whole ``order`` holds (lower is
    better). None when some run has no bootstrap samples."""
    if boot is None or not boot.samples:
        return None
    try:
        per = np.stack([
            np.mean([boot.samples[RunId(setup, m, DEFAULT_VARIANT, s)]["fid"] for s in seeds], axis=0)
            for m in methods
        ])  # [methods, B]
    except KeyError:
        return None
    ranks = np.argsort(per, axis=0)  # best first, per resample
    pos = [list(methods).index(m) for m in order]
    best = float(np.mean(ranks[0] == pos[0]))
    whole = float(np.mean(np.all(ranks == np.asarray(pos)[:, None], axis=0)))
    return best, whole
