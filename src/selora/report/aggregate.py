"""Mean ± standard deviation over seeds, with the number of seeds that went into every cell.

The standard deviation is the sample one (ddof = 1), undefined for a single seed. A cell built
from fewer seeds than configured says so (``n=2/3``), so a partial grid can never pass for a full
one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample std, n) over the values that are present (None/NaN are absent)."""
    arr = np.asarray([v for v in values if v is not None and not _isnan(v)], dtype=float)
    n = len(arr)
    if n == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if n > 1 else math.nan, n


def _isnan(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)


def aggregate(runs: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """One row per group of ``by``: ``<col>_mean``, ``<col>_std``, ``<col>_n`` for each column."""
    out = []
    for key, grp in runs.groupby(list(by), sort=False, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for col in columns:
            vals = grp[col].tolist() if col in grp else []
            row[f"{col}_mean"], row[f"{col}_std"], row[f"{col}_n"] = mean_std(vals)
        out.append(row)
    return pd.DataFrame(out)


def fmt_number(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def cell(mean: float, std: float, n: int, expected: int, fmt: Callable[[float], str] = fmt_number) -> str:
    """``12.345 ± 0.678``; ``12.345 ± 0.678 ⚠ n=2/3`` when seeds are missing; ``— (0/3)`` if none."""
    if n == 0:
        return f"— (0/{expected})"
    text = fmt(mean) if n == 1 or math.isnan(std) else f"{fmt(mean)} ± {fmt(std)}"
    if n < expected:
        text += f" ⚠ n={n}/{expected}"
    return text
