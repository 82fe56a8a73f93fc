"""PatchGastricADC22 (Tsuneki & Kanavati 2022): ``captions.csv`` + the patch images.

``captions.csv`` has one row per slide: ``id`` (the slide id), ``subtype``, ``text`` (the caption).
Patches are ``<slide id>_<suffix>.jpg`` anywhere under ``--raw`` (``patches/`` in the official
archive); the slide id is the file stem before the first ``_``. Prompt = the slide's caption
(whitespace collapsed, boilerplate such as "Group 5, Adenocarcinoma." kept).

Protocol (paper Appendix C.2): the chosen subtypes (``datasets.patchgastric.subtypes``, exact
strings of the ``subtype`` column; default the paper's five), ``pairs_per_subtype`` image–text pairs
each (1,000), 70/10/20. So that no slide is in two splits, each subtype's *slides* are split first
(seeded, balancing patch counts: :func:`selora.splits.assign_group_splits`), then the split's exact
share of pairs (700/100/200) is drawn from its slides' patches in a seeded order; a patch that
cannot be decoded is skipped (and listed) and the next one in that order is taken. Split sizes are
therefore exact, and the draw of one subtype does not depend on which other subtypes are chosen.

Labels: ``{"subtype": ..., "slide": ...}``.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selora.data.common import (
    IMAGE_EXTENSIONS,
    Candidate,
    Pool,
    PrepareOptions,
    SkipLog,
    clean_text,
    find_path,
    has_undecodable,
    read_csv_rows,
    require_dir,
)
from selora.data.registry import DatasetSpec, register_dataset
from selora.errors import ConfigError, DatasetFormatError
from selora.sections import check_section, param
from selora.splits import assign_group_splits, split_sizes

NAME = "patchgastric"
PAPER_SUBTYPES = [
    "Moderately differentiated tubular adenocarcinoma",
    "Well differentiated tubular adenocarcinoma",
    "Moderately to poorly differentiated adenocarcinoma",
    "Poorly differentiated adenocarcinoma, solid type",
    "Poorly differentiated adenocarcinoma, non-solid type",
]


@dataclass(frozen=True)
class PatchGastricSource:
    """params ``datasets.patchgastric``."""

    raw: str | None = param("Folder with captions.csv and patches/.", default=None)
    subtypes: list[str] = param(minItems=1, default=PAPER_SUBTYPES)
    pairs_per_subtype: int = param(minimum=1, default=1000)


def check_options(opts: PrepareOptions) -> None:
    """Options this data set needs: its subtypes and pair count (its own sample size), checked by
    their declaration (command-line flags do not pass through the params schema)."""
    check_section(PatchGastricSource(raw=str(opts.raw), subtypes=list(opts.subtypes),
                                     pairs_per_subtype=opts.pairs_per_subtype), f"datasets.{NAME}")
    if opts.max_records is not None:
        raise ConfigError("max_records: PatchGastricADC22 draws its own count per subtype; set "
                          f"datasets.{NAME}.pairs_per_subtype instead")


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def read_captions(path: Path, log: SkipLog) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """Slide id → (subtype, caption), and the ids of rows skipped as bad (their patches are not orphans)."""
    slides: dict[str, tuple[str, str]] = {}
    bad: set[str] = set()
    for line, row in read_csv_rows(path, ["id", "subtype", "text"]):
        where = f"{path.name}:{line}"
        slide = row["id"].strip()
        if has_undecodable(slide + row["subtype"] + row["text"]):
            log.skip(slide or where, "text is not valid UTF-8", where)
            bad.add(slide)
            continue
        subtype, text = clean_text(row["subtype"]), clean_text(row["text"])
        if not slide:
            log.skip(where, "empty slide id", where)
        elif slide in slides or slide in bad:
            log.skip(slide, "duplicate id", f"{where} (first row kept)")
        elif not text:
            log.skip(slide, "empty text", where)
            bad.add(slide)
        elif not subtype:
            log.skip(slide, "empty subtype", where)
            bad.add(slide)
        else:
            slides[slide] = (subtype, text)
    return slides, bad - set(slides)


def collect(opts: PrepareOptions, log: SkipLog) -> tuple[list[Candidate], str]:
    raw = require_dir(opts.raw, "PatchGastricADC22 (captions.csv and the patches archive)")
    captions = find_path(raw, ["captions.csv"], want_dir=False)
    if captions is None:
        raise DatasetFormatError(f"{raw}: captions.csv not found; unpack PatchGastricADC22 there")
    slides, bad = read_captions(captions, log)
    per_subtype = Counter(s for s, _ in slides.values())
    unknown = [s for s in opts.subtypes if s not in per_subtype]
    if unknown:
        known = "; ".join(f"{s!r} ({n} slides)" for s, n in sorted(per_subtype.items()))
        raise ConfigError(f"datasets.patchgastric.subtypes: {unknown} not in the subtype column of "
                          f"{captions}; its subtypes are: {known}")
    chosen = set(opts.subtypes)
    labels = {sid: {"subtype": st, "slide": sid} for sid, (st, _) in slides.items() if st in chosen}
    out: list[Candidate] = []
    with_patches: set[str] = set()
    for folder, dirs, files in os.walk(raw):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            stem = name.rsplit(".", 1)[0]
            slide = stem.split("_", 1)[0]
            path = os.path.join(folder, name)
            if "_" not in stem:
                log.skip(name, "not a patch file name (<slide id>_<n>)", path)
            elif slide in bad:
                log.exclude("patch of a skipped slide")
            elif slide not in slides:
                log.skip(name, "slide id not in captions.csv", path)
            else:
                with_patches.add(slide)
                if slide in labels:
                    out.append(Candidate(source_id=stem, image=path, text=slides[slide][1],
                                         labels=labels[slide], group=slide))
                else:
                    log.exclude("subtype not chosen")
    if not_found := len(slides) - len(with_patches & set(slides)):
        log.note(f"{not_found} slide(s) of captions.csv have no patch image under {raw}")
    return out, "official"


def plan(candidates: list[Candidate], opts: PrepareOptions, log: SkipLog) -> list[Pool]:
    """Per subtype: split its slides, then draw each split's exact share of pairs from them."""
    by_subtype: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_subtype[c.labels["subtype"]].append(c)
    quotas = split_sizes(opts.pairs_per_subtype, opts.splits)
    pools = []
    for subtype in opts.subtypes:
        cands = sorted(by_subtype[subtype], key=lambda c: c.source_id)
        n_slides = len({c.group for c in cands})
        if len(cands) < opts.pairs_per_subtype or n_slides < len(quotas):
            raise DatasetFormatError(
                f"PatchGastricADC22 subtype {subtype!r} has {len(cands)} patches on {n_slides} slide(s): "
                f"too few for {opts.pairs_per_subtype} pairs over {len(quotas)} slide-disjoint splits "
                "(lower datasets.patchgastric.pairs_per_subtype or choose other subtypes)"
            )
        seed = opts.seed * 2**48 + _stable_int(subtype)
        assigned = assign_group_splits([c.group for c in cands], opts.splits, seed)
        layout = []
        for index, (split, quota) in enumerate(quotas.items()):
            pool = [c for c, s in zip(cands, assigned, strict=True) if s == split]
            slides = len({c.group for c in pool})
            layout.append(f"{split} {quota} of {len(pool)} patches on {slides} slides")
            if quota == 0:
                continue
            if len(pool) < quota:
                raise DatasetFormatError(
                    f"PatchGastricADC22 subtype {subtype!r}: the {split} slides hold {len(pool)} patches, "
                    f"fewer than the {quota} pairs needed (slides too unequal for a slide-disjoint split; "
                    "lower datasets.patchgastric.pairs_per_subtype or try another seed)"
                )
            order = np.random.default_rng([opts.seed, _stable_int(subtype), index]).permutation(len(pool))
            pools.append(Pool(name=f"{subtype} / {split}", items=map(pool.__getitem__, order.tolist()),
                              size=len(pool), split=split, quota=quota))
        log.note(f"{subtype}: " + "; ".join(layout))
    return pools


register_dataset(DatasetSpec(NAME, PatchGastricSource, collect, label="PatchGastricADC22", paper_size=384,
                             plan=plan, check=check_options, options=("subtypes", "pairs_per_subtype"),
                             paper_tables={384: "Table 6"}))
