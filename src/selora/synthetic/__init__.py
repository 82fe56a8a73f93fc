"""The embedded synthetic data sets (``selora make-synthetic``).

Both are written in the prepared-dataset format (:mod:`selora.imagefolder`). Every image comes
from its own generator seeded by ``(seed, set, index)``, so the output depends only on the params,
not on order or batching.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from selora.config import CxrConfig, NaturalConfig
from selora.findings import finding_priors
from selora.imagefolder import image_folder, write_objects
from selora.splits import assign_splits
from selora.synthetic.cxr import RADIOGRAPH_CAPTIONS, render_cxr, sample_findings, write_report
from selora.synthetic.natural import SCENE_LABELS, render_scene

_SET_IDS = {"natural": 1, "cxr": 2, "radiograph": 4}  # 3: the caption probe's scenes


def _rng(seed: int, which: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SET_IDS[which], index])


def is_radiograph(index: int, share: float) -> bool:
    """Whether item ``index`` of the natural set is a radiograph: spread evenly, ``share`` of all."""
    return int((index + 1) * share) > int(index * share)


def make_natural(cfg: NaturalConfig, out: str | Path, seed: int, progress: bool = True) -> dict[str, int]:
    """Write the captioned scenes (and the generic radiographs, ``cfg.radiographs`` of them) the
    miniature is pre-trained on, and beside each split's manifest the phrases and boxes of every
    image's objects (none for a radiograph; :func:`selora.imagefolder.write_objects`); returns counts
    per split."""
    splits = assign_splits(cfg.n_images, cfg.splits.as_dict(), seed)
    objects_of: dict[str, list[dict]] = {}
    with image_folder(out) as writer:
        for i in tqdm(range(cfg.n_images), desc="natural scenes", disable=not progress):
            if is_radiograph(i, cfg.radiographs):
                rng = _rng(seed, "radiograph", i)
                image = render_cxr(sample_findings(rng), rng, cfg.size)
                caption = RADIOGRAPH_CAPTIONS[rng.integers(len(RADIOGRAPH_CAPTIONS))]
                # The same label keys as a scene's (one schema for Hugging Face's imagefolder).
                labels = {"kind": "radiograph", **dict.fromkeys(SCENE_LABELS, "none")}
                source, objects = f"radiograph-{i:06d}", []
            else:
                image, caption, labels, objects = render_scene(_rng(seed, "natural", i), cfg.size)
                labels = {"kind": "scene", **labels}
                source = f"natural-{i:06d}"
            name = writer.add(image, split=splits[i], text=caption, source_id=source, labels=labels,
                              stem=f"{i:06d}")
            objects_of[f"{splits[i]}/{name}"] = objects
        write_objects(writer.root, objects_of)
        return writer.counts()


def make_cxr(cfg: CxrConfig, out: str | Path, seed: int, progress: bool = True) -> dict[str, int]:
    """Write the synthetic chest-radiograph set with its findings labels (all five, the ones that
    do not vary as normal); returns counts per split."""
    splits = assign_splits(cfg.n_images, cfg.splits.as_dict(), seed)
    priors = finding_priors(cfg.findings)
    with image_folder(out) as writer:
        for i in tqdm(range(cfg.n_images), desc="synthetic CXR", disable=not progress):
            rng = _rng(seed, "cxr", i)
            findings = sample_findings(rng, priors)
            image = render_cxr(findings, rng, cfg.size)
            writer.add(image, split=splits[i], text=write_report(findings, rng, cfg.report_style),
                       source_id=f"scxr-{i:06d}", labels=findings, stem=f"{i:06d}")
        return writer.counts()
