"""``prepare``: raw distribution → prepared imagefolder + data report, with one rule per data set.

Steps: the data set's parser lists candidate records (metadata only) and logs what it leaves out;
duplicates are dropped (first kept, listed); images are decoded, resized and encoded as PNG by
worker processes, streamed in order into a staging folder (an unreadable image is a listed skip);
then splits are drawn — over the usable records, so split sizes are exact — and the staged files
are moved into ``<split>/``. Everything happens inside the atomic output folder: a killed run
leaves nothing, a rerun with the same inputs is a no-op (the report's ``input_fingerprint``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from selora.data.common import Candidate, Pool, PrepareOptions, SkipLog, dedupe
from selora.data.images import OrderedPool, process_first_usable
from selora.data.registry import dataset_spec
from selora.data.report import count_tokens, length_stats, load_tokenizer, summarise, to_markdown
from selora.errors import ConfigError, DatasetFormatError
from selora.imagefolder import MANIFEST, SPLITS, image_folder, split_hash
from selora.io import Provenance, write_json, write_text
from selora.splits import assign_splits, split_sizes

REPORT_JSON, REPORT_MD = "data_report.json", "data_report.md"
FORMAT_VERSION = 2  # bump when the output for the same inputs changes
CAP_STREAM = 0xCA9  # the record cap's random stream, apart from the splits' (same seed)


def default_splits(dataset: str, size: int) -> dict[str, float]:
    """The paper's split for a data set and size (each data set's registration says it)."""
    return dataset_spec(dataset).default_splits(size)


def paper_size(dataset: str) -> int:
    """The paper's image size for a data set (Section 3.5, Appendix C), as registered."""
    return dataset_spec(dataset).paper_size


def parse_splits(text: str) -> dict[str, float]:
    """``train=0.8,validation=0.16,test=0.04`` → fractions (checked by :func:`check_options`)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--splits: {part!r} is not NAME=FRACTION (e.g. train=0.8,test=0.2)") from None
    return out


def check_options(opts: PrepareOptions) -> None:
    spec = dataset_spec(opts.dataset)  # unknown: ConfigError naming the registered ones
    if opts.size < 8 or opts.size % 8:
        raise ConfigError(f"size {opts.size}: must be a positive multiple of 8 (the VAE downsamples by 8)")
    unknown = [k for k in opts.splits if k not in SPLITS]
    if unknown:
        raise ConfigError(f"splits: unknown split(s) {unknown}; use {', '.join(SPLITS)}")
    if any(v < 0 or v > 1 for v in opts.splits.values()) or abs(sum(opts.splits.values()) - 1) > 1e-6:
        raise ConfigError(f"splits {opts.splits}: fractions must lie in [0, 1] and sum to 1")
    if opts.splits.get("train", 0) <= 0 or opts.splits.get("test", 0) <= 0:
        raise ConfigError(f"splits {opts.splits}: train and test need a fraction above 0")
    if opts.max_records is not None and opts.max_records < 1:
        raise ConfigError(f"max_records {opts.max_records}: give at least 1, or none for every record")
    if spec.check is not None:
        spec.check(opts)


def prepare(opts: PrepareOptions, progress: bool = False) -> tuple[dict[str, Any], bool]:
    """Prepare one data set; returns ``(data report, written)`` (False: already up to date)."""
    check_options(opts)
    splits = {k: v for k, v in opts.splits.items() if v > 0}
    opts = dataclasses.replace(opts, splits={s: splits[s] for s in SPLITS if s in splits})
    spec = dataset_spec(opts.dataset)
    log = SkipLog()
    candidates, layout = spec.collect(opts, log)
    candidates = dedupe(candidates, log)
    fingerprint = input_fingerprint(opts, layout, candidates, log)
    if not opts.force and (existing := _existing_report(opts.out, fingerprint)) is not None:
        return existing, False
    if spec.plan is not None:
        pools = spec.plan(candidates, opts, log)
    elif opts.max_records is not None and opts.max_records < len(candidates):
        pools = [capped_pool(candidates, opts.max_records, opts.seed)]
    else:
        pools = [Pool("all records", candidates, len(candidates))]
    prov = Provenance("selora prepare", opts.config())
    with image_folder(opts.out) as writer:
        staging = writer.root / ".staging"
        staging.mkdir()
        skipped_before = len(log.skipped)
        accepted = _decode(pools, opts, staging, log, progress)
        split_of = _assign(accepted, opts, log)
        tokenizer, tok_note = load_tokenizer(opts.tokenizer)
        if tokenizer is None and opts.tokenizer_note:
            tok_note = opts.tokenizer_note
        if tokenizer is None:
            log.warnings.append(f"no token counts: {tok_note}")
        n_tokens = count_tokens(tokenizer, [c.text for c, _, _ in accepted]) if tokenizer else None
        cap = _cap_summary(pools[0], len(accepted), len(log.skipped) - skipped_before) \
            if pools[0].ceiling else None
        for i, (cand, _, staged) in enumerate(accepted):
            extra = dict(cand.extra)
            if n_tokens is not None:
                extra["n_tokens"] = n_tokens[i]
            writer.add_png(staged, split=split_of[i], text=cand.text, source_id=cand.source_id,
                           labels=cand.labels, **extra)
        staging.rmdir()
        rows = [r for s in SPLITS for r in writer.rows[s]]
        limit = tokenizer.model_max_length if tokenizer else None  # checked by load_tokenizer
        report = {
            "config": opts.config(),
            "layout": layout,
            "split_hash": split_hash(rows),
            **summarise(rows, limit, n_tokens is not None),
            **({"record_cap": {**cap, **_parsed_lengths(candidates, tokenizer, limit)}} if cap else {}),
            "tokenizer": {"source": tok_note if tokenizer else None, "max_length": limit,
                          "note": "" if tokenizer else tok_note},
            "notes": log.notes,
            "warnings": log.warnings,
            "excluded": dict(sorted(log.excluded.items())),
            "skip_counts": log.skip_counts(),
            "skipped": log.skipped,
            "input_fingerprint": fingerprint,
            "format_version": FORMAT_VERSION,
            "provenance": prov.as_dict(),
        }
        write_json(writer.root / REPORT_JSON, report)
        write_text(writer.root / REPORT_MD, to_markdown(report))
    return report, True


def _decode(pools: list[Pool], opts: PrepareOptions, staging: Path, log: SkipLog,
            progress: bool) -> list[tuple[Candidate, str | None, Path]]:
    """Decode + pre-process every pool's images in order (a quota stops a pool early)."""
    accepted: list[tuple[Candidate, str | None, Path]] = []
    total = sum(p.quota if p.quota is not None else p.size for p in pools)
    seq = itertools.count()

    def job(c: Candidate) -> tuple[tuple[str, ...], int, str]:
        return (c.image, *(f.image for f in c.fallbacks)), opts.size, str(staging / f"{next(seq):08d}.png")

    with OrderedPool(opts.workers) as workers, tqdm(total=total, unit="img", disable=not progress,
                                                     desc=f"prepare {opts.dataset}") as bar:
        for pool in pools:
            taken = tried = 0
            for cand, (args, (index, errors)) in workers.map(process_first_usable, pool.items, job):
                tried += 1
                options = [cand, *cand.fallbacks]
                if index is None:
                    _skip_unusable(cand, options, errors, log)
                    continue
                for error in errors:
                    log.exclude(f"{_image_problem(error)}; the record's next image was used")
                log.exclude("further usable image of the same record (one per record)",
                            len(options) - index - 1)
                accepted.append((options[index], pool.split, Path(args[2])))
                taken += 1
                bar.update()
                if pool.quota is not None and taken == pool.quota:
                    break
            if pool.quota is not None and not pool.ceiling:
                if taken < pool.quota:
                    raise DatasetFormatError(f"{pool.name}: only {taken} usable images among {pool.size} "
                                             f"candidates, {pool.quota} needed (see the skipped images)")
                log.exclude("not sampled", pool.size - tried)
    # Images decoded ahead of a quota that was already met are not used (the pool is closed now).
    used = {p.name for _, _, p in accepted}
    for path in staging.iterdir():
        if path.name not in used:
            path.unlink()
    return accepted


def capped_pool(candidates: list[Candidate], cap: int, seed: int) -> Pool:
    """The record cap: candidates in a seeded random order, decoded until ``cap`` are usable — a
    subset that looks like the whole (not the first ids), the same for the same seed."""
    order = np.random.default_rng([seed, CAP_STREAM]).permutation(len(candidates)).tolist()
    return Pool(f"a seeded subset of {cap} of {len(candidates)} records", map(candidates.__getitem__, order),
                len(candidates), quota=cap, ceiling=True)


def _cap_summary(pool: Pool, used: int, skipped: int) -> dict[str, Any]:
    """Records, one unit: parsed = used + skipped while decoding + left out by the cap (the records
    the decoding stage never reached: it stops once the cap's quota is usable)."""
    return {"max_records": pool.quota, "parsed_records": pool.size, "used": used,
            "skipped_while_decoding": skipped, "left_out": pool.size - used - skipped}


def _parsed_lengths(candidates: list[Candidate], tokenizer: Any, limit: int | None) -> dict[str, Any]:
    """Prompt lengths of every parsed record, so a capped set still reports the data set's own."""
    out = {"prompt_words": length_stats([len(c.text.split()) for c in candidates], None)}
    if tokenizer is not None:
        out["prompt_tokens"] = length_stats(count_tokens(tokenizer, [c.text for c in candidates]), limit)
    return out


def _image_problem(error: str) -> str:
    return error if error == "image file missing" else "unreadable image"


def _skip_unusable(cand: Candidate, options: list[Candidate], errors: list[str], log: SkipLog) -> None:
    """One skip entry for a record none of whose images could be used."""
    reasons = {_image_problem(e) for e in errors}
    reason = reasons.pop() if len(reasons) == 1 else "unreadable image"
    detail = "; ".join(f"{c.image}: {e}" for c, e in zip(options, errors, strict=True))
    ids = [c.extra["image_id"] for c in options if "image_id" in c.extra]
    log.skip(cand.source_id, reason, detail, images=ids or None)


def _assign(accepted: list[tuple[Candidate, str | None, Path]], opts: PrepareOptions,
            log: SkipLog) -> list[str]:
    """Split per accepted record: fixed by its pool, or drawn now over the usable records."""
    if not accepted:
        reasons = ", ".join(f"{k}: {v}" for k, v in log.skip_counts().items()) or "none skipped"
        raise DatasetFormatError(f"{opts.raw}: no usable image–text pairs ({reasons})")
    free = [i for i, (_, split, _) in enumerate(accepted) if split is None]
    out = [split or "" for _, split, _ in accepted]
    if free:
        sizes = split_sizes(len(free), opts.splits)
        empty = [s for s in opts.splits if sizes.get(s, 0) == 0]
        if empty:
            raise DatasetFormatError(f"{opts.raw}: {len(free)} usable records are too few for splits "
                                     f"{opts.splits}: {', '.join(empty)} would be empty")
        for i, split in zip(free, assign_splits(len(free), opts.splits, opts.seed), strict=True):
            out[i] = split
    return out


def input_fingerprint(opts: PrepareOptions, layout: str, candidates: list[Candidate], log: SkipLog) -> str:
    """Hash of everything the output depends on: options, parsed records, image sizes and times."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, opts.config(), layout, log.skipped, sorted(log.excluded.items()),
                         log.notes], sort_keys=True).encode())
    for c in candidates:
        try:
            st = os.stat(c.image)
            stamp = [st.st_size, st.st_mtime_ns]
        except OSError:
            stamp = None
        h.update(json.dumps([c.source_id, c.image, c.text, c.labels, c.group, c.extra, stamp],
                            sort_keys=True).encode())
    for path in filter(None, [opts.views, opts.tokenizer and Path(opts.tokenizer)]):
        if path.exists():
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def _existing_report(out: Path, fingerprint: str) -> dict[str, Any] | None:
    path = out / REPORT_JSON
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if report.get("input_fingerprint") != fingerprint:
        return None
    if not all((out / s / MANIFEST).is_file() for s in report.get("counts", {})):
        return None
    return report
