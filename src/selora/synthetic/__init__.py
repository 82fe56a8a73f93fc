"""The embedded synthetic data sets (``selora make-synthetic``).

Both are written in the prepared-dataset format (:mod:`selora.imagefolder`). Every image comes
from its own generator seeded by ``(seed, set, index)``, so the output depends only on the params,
not on order or batching.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from selora.config import NaturalConfig
from selora.imagefolder import image_folder
from selora.splits import assign_splits
from selora.synthetic.cxr import render_cxr, sample_findings, write_report
from selora.synthetic.natural import render_scene

_SET_IDS = {"natural": 1, "cxr": 2}


def _rng(seed: int, which: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SET_IDS[which], index])


def make_natural(cfg: NaturalConfig, out: str | Path, seed: int, progress: bool = True) -> dict[str, int]:
    """Write the captioned scenes the miniature is pre-trained on; returns counts per split."""
    splits = assign_splits(cfg.n_images, cfg.splits.as_dict(), seed)
    with image_folder(out) as writer:
        for i in tqdm(range(cfg.n_images), desc="natural scenes", disable=not progress):
            image, caption, labels = render_scene(_rng(seed, "natural", i), cfg.size)
            writer.add(image, split=splits[i], text=caption, source_id=f"natural-{i:06d}",
                       labels=labels, stem=f"{i:06d}")
        return writer.counts()


def make_cxr(cfg: NaturalConfig, out: str | Path, seed: int, progress: bool = True) -> dict[str, int]:
    """Write the synthetic chest-radiograph set with its findings labels; returns counts per split."""
    splits = assign_splits(cfg.n_images, cfg.splits.as_dict(), seed)
    with image_folder(out) as writer:
        for i in tqdm(range(cfg.n_images), desc="synthetic CXR", disable=not progress):
            rng = _rng(seed, "cxr", i)
            findings = sample_findings(rng)
            image = render_cxr(findings, rng, cfg.size)
            writer.add(image, split=splits[i], text=write_report(findings, rng),
                       source_id=f"scxr-{i:06d}", labels=findings, stem=f"{i:06d}")
        return writer.counts()
