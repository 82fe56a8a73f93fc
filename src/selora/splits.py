"""Deterministic train/validation/test assignment shared by every data set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Exact split sizes for ``n`` records: rounded, with the remainder going to the last split.

    >>> split_sizes(100, {"train": 0.8, "validation": 0.16, "test": 0.04})
    {'train': 80, 'validation': 16, 'test': 4}
    """
    names = [k for k, v in fractions.items() if v > 0]
    sizes = {k: round(n * fractions[k]) for k in names[:-1]}
    taken = sum(sizes.values())
    if taken > n:
        raise ValueError(f"split fractions {dict(fractions)} over-allocate {n} records")
    sizes[names[-1]] = n - taken
    return sizes


def assign_splits(n: int, fractions: Mapping[str, float], seed: int) -> list[str]:
    """Split name per record index: a seeded permutation cut at the exact sizes."""
    sizes = split_sizes(n, fractions)
    order = np.random.default_rng(seed).permutation(n)
    out = [""] * n
    start = 0
    for name, size in sizes.items():
        for idx in order[start:start + size]:
            out[int(idx)] = name
        start += size
    return out


def assign_group_splits(groups: Sequence[str], fractions: Mapping[str, float], seed: int) -> list[str]:
    """Split name per record so that no group (e.g. a slide) is in two splits.

    Groups are shuffled with the seed and dealt greedily to the split whose record count is
    furthest below its target, so sizes stay close to the fractions.
    """
    names = [k for k, v in fractions.items() if v > 0]
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    keys = sorted(counts)
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(len(keys))]
    total = len(groups)
    target = {k: fractions[k] * total for k in names}
    filled = dict.fromkeys(names, 0)
    group_split: dict[str, str] = {}
    for g in order:
        name = max(names, key=lambda k: (target[k] - filled[k]) / max(target[k], 1e-9))
        group_split[g] = name
        filled[name] += counts[g]
    return [group_split[g] for g in groups]
