"""The quality table's "Seed spread" block: each method's standard deviation over training seeds
relative to its mean, with the interval that so few seeds leave on it.

Why: the quality table's ``mean ± std`` reads as a precise spread, but a standard deviation from
three seeds is itself uncertain by a factor of about 0.5 to 6 (95 %): a method whose three seeds
agree closely may spread far more over six (benchmarks/README, "Caption dropout in fine-tuning").
The interval is the textbook one for a normal sample's σ, from the χ² distribution of
(n − 1)·s²/σ² with n − 1 degrees of freedom, divided by the seeds' mean (taken as known: the
interval is for the spread, not for the mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from selora.config import Params
from selora.report.header import fid_labels
from selora.report.labels import method_label


@dataclass(frozen=True)
class Spread:
    n: int
    mean: float
    std: float
    lo: float  # bounds of std / mean at the confidence level
    hi: float

    @property
    def ratio(self) -> float:
        return self.std / abs(self.mean)


def chi2_factors(n: int, confidence: float) -> tuple[float, float]:
    """The factors (lo, hi) by which the ``confidence`` interval of σ lies around the sample std of
    ``n`` normal values: sqrt((n − 1) / χ²) at the upper and lower tail quantiles."""
    from scipy.stats import chi2

    tail = (1 - confidence) / 2
    return (math.sqrt((n - 1) / chi2.ppf(1 - tail, n - 1)), math.sqrt((n - 1) / chi2.ppf(tail, n - 1)))


def seed_spread(values: Sequence[float], confidence: float) -> Spread | None:
    """std / mean of ``values`` (sample std, ddof 1) and its ``confidence`` interval; None when
    fewer than two values or a mean of zero leave no ratio."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(arr)
    if n < 2 or arr.mean() == 0:
        return None
    mean, std = float(arr.mean()), float(arr.std(ddof=1))
    lo, hi = chi2_factors(n, confidence)
    return Spread(n, mean, std, lo * std / abs(mean), hi * std / abs(mean))


def spread_block(params: Params, runs: pd.DataFrame, setup: str, space: dict[str, Any]) -> list[str]:
    """Markdown lines: per method of the grid, the FID's std / mean over its seeds with the interval
    (the no-adapter row has one run, hence no spread). FID only: KID's per-seed values sit near 0
    and may be negative (it is unbiased), where a ratio to the mean means nothing."""
    exp = params.experiment
    conf = exp.statistics.confidence
    label = fid_labels(space)["fid"]
    rows = []
    for m in exp.methods:
        values = runs.loc[runs.method == m, "fid"].tolist() if "fid" in runs else []
        s = seed_spread(values, conf)
        text = "—" if s is None else f"{s.ratio:.2f} [{s.lo:.2f}, {s.hi:.2f}]"
        rows.append({
            "Method": method_label(m),
            f"{label}: std / mean [{100 * conf:g}% CI]": text,
            "seeds": str(s.n if s is not None else sum(v == v for v in values)),  # v == v: not NaN
        })
    n = len(exp.seeds)
    width = ""
    if n > 1:
        lo, hi = chi2_factors(n, conf)
        width = (f" With {n} seeds the interval runs from {lo:.2f}× to {hi:.2f}× the measured spread, "
                 "so seeds that happen to agree do not yet show a stable method.")
    return [
        f"## Seed spread ({setup})",
        "",
        "- std / mean: the training seeds' sample standard deviation of the FID relative to its mean "
        f"(the quality table's ± over its value); [{100 * conf:g}% CI]: the χ² interval of a normal "
        f"sample's standard deviation, over the same mean.{width}",
        "",
        pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True),
    ]
