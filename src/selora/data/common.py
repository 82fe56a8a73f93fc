"""Shared pieces of the raw-data parsers: candidate records, the skip log, text and file helpers.

A parser turns an official distribution into :class:`Candidate` records (metadata only, no
pixels) and tells the :class:`SkipLog` about everything it leaves out. Two kinds of leaving out:

- *skipped*: records (a report, a reading, a slide) left out for bad input or because they have
  no usable image (a missing or unreadable image, invalid XML, empty text, non-UTF-8 text, a
  duplicate id, no frontal view, ...). One entry per record, keyed by its id (a file name or CSV
  line only where no id can be read), with the ids of its images; all are listed in the data report.
- *excluded*: **images** the protocol does not use, counted by reason (lateral views, subtypes not
  chosen, patches not sampled, further images of a kept record); they are too many to list.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selora.errors import DatasetFormatError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(slots=True)
class Candidate:
    """One image–text pair as found in the raw data, before its image is decoded."""

    source_id: str
    image: str  # absolute path of the raw image
    text: str
    labels: dict[str, Any]
    group: str | None = None  # records that must share a split (a PatchGastricADC22 slide)
    extra: dict[str, Any] = field(default_factory=dict)  # more manifest columns
    # The same record with its other usable images, tried in order when this image is unreadable.
    fallbacks: list[Candidate] = field(default_factory=list)


@dataclass
class SkipLog:
    """Everything a parser or the image stage leaves out, with the reason."""

    skipped: list[dict[str, Any]] = field(default_factory=list)
    excluded: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def skip(self, source: str, reason: str, detail: str = "", images: list[str] | None = None) -> None:
        """Record one left-out record; ``reason`` is a short category, ``detail`` the specifics,
        ``images`` the ids of the record's images (for data sets where a record has several)."""
        entry: dict[str, Any] = {"source": source, "reason": reason, "detail": detail}
        if images is not None:
            entry["images"] = list(images)
        self.skipped.append(entry)

    def exclude(self, reason: str, n: int = 1) -> None:
        """Count ``n`` images the protocol does not use (the unit is always images)."""
        if n:
            self.excluded[reason] += n

    def note(self, text: str) -> None:
        self.notes.append(text)

    def warn(self, text: str) -> None:
        """A note the user must see: in the data report and printed by the CLI."""
        self.notes.append(text)
        self.warnings.append(text)

    def skip_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s["reason"] for s in self.skipped).items()))


def clean_text(text: str | None) -> str:
    """Collapse whitespace (reports wrap lines); everything else, ``XXXX`` tokens included, is kept."""
    return re.sub(r"\s+", " ", text or "").strip()


def has_undecodable(text: str) -> bool:
    """True for text read with ``errors="surrogateescape"`` that held bytes invalid in UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def read_csv_rows(path: Path, required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a UTF-8 CSV; fails early, naming the file, if columns are missing.

    Undecodable bytes do not abort the file: they stay in the row as surrogates so the caller can
    skip just that row (:func:`has_undecodable`).
    """
    required = list(required)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        f = opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise DatasetFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetFormatError(
                f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'}); "
                "is this the file of the official distribution?"
            )
        reader.fieldnames = header
        try:
            for row in reader:
                yield reader.line_num, {k: (v if v is not None else "") for k, v in row.items() if k}
        except (csv.Error, OSError, EOFError) as exc:
            raise DatasetFormatError(f"{path}:{reader.line_num}: unreadable CSV: {exc}") from exc


def require_dir(raw: Path, what: str) -> Path:
    """The user's raw-data folder, or an error that says what to download and unpack there."""
    if not raw.is_dir():
        raise DatasetFormatError(f"raw data folder {raw} does not exist: download and unpack {what} there")
    return raw


def find_path(raw: Path, names: Iterable[str], *, want_dir: bool, max_depth: int = 3,
              what: str = "") -> Path | None:
    """The shallowest file or folder under ``raw`` named one of ``names`` (breadth-first).

    Two different matches at the same depth are ambiguous and an error: the tool should not guess
    which copy the user meant.
    """
    names = set(names)
    level = [raw]
    for _ in range(max_depth + 1):
        found: list[Path] = []
        below: list[Path] = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                is_dir = e.is_dir()
                if e.name in names and is_dir == want_dir:
                    found.append(Path(e.path))
                if is_dir and not e.name.startswith("."):
                    below.append(Path(e.path))
        if len(found) > 1:
            listed = ", ".join(str(p) for p in found)
            raise DatasetFormatError(f"{raw}: several {what or '/'.join(sorted(names))} found ({listed}); "
                                     "point --raw at the one to use")
        if found:
            return found[0]
        level = below
    return None


def index_images(raw: Path, log: SkipLog | None = None,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> dict[str, str]:
    """File name → path of every image under ``raw`` (sorted walk, so the result is stable).

    When two files share a name, the first in path order wins and the others are noted.
    """
    index: dict[str, str] = {}
    duplicates = 0
    for folder, dirs, files in os.walk(raw):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(extensions):
                if name in index:
                    duplicates += 1
                    continue
                index[name] = os.path.join(folder, name)
    if duplicates and log is not None:
        log.note(f"{duplicates} image file name(s) occur in more than one folder under {raw}; "
                 "the first in path order was used")
    return index


def dedupe(candidates: list[Candidate], log: SkipLog, what: str = "id") -> list[Candidate]:
    """Keep the first record of each ``source_id``; later ones are skipped (and listed)."""
    seen: dict[str, Candidate] = {}
    out = []
    for c in candidates:
        if c.source_id in seen:
            ids = [x.extra["image_id"] for x in (c, *c.fallbacks) if "image_id" in x.extra]
            log.skip(c.source_id, f"duplicate {what}", f"{c.image} (first kept: {seen[c.source_id].image})",
                     images=ids or None)
            continue
        seen[c.source_id] = c
        out.append(c)
    return out


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that decides a prepared data set (and its input fingerprint)."""

    dataset: str
    raw: Path
    out: Path
    size: int
    seed: int
    splits: dict[str, float]
    # A data set's own options (DatasetSpec.options): only the data sets that read one record it.
    views: Path | None = None  # IU X-Ray, NLM layout: image id → view position table
    subtypes: tuple[str, ...] = ()  # PatchGastricADC22
    pairs_per_subtype: int = 1000  # PatchGastricADC22
    max_records: int | None = None  # a seeded subset of the parsed records (setups.<name>.max_records)
    tokenizer: str | None = None  # folder/hub id of the text encoder's tokenizer (prompt lengths)
    workers: int = 1
    force: bool = False
    tokenizer_note: str = ""  # why no tokenizer is configured (shown in the report)

    def config(self) -> dict[str, Any]:
        """The options that change the output (workers and force do not)."""
        out: dict[str, Any] = {
            "dataset": self.dataset, "raw": str(self.raw), "size": self.size, "seed": self.seed,
            "splits": dict(self.splits), "tokenizer": self.tokenizer,
        }
        from selora.data.registry import dataset_spec, option_values

        out.update(option_values(dataset_spec(self.dataset), self))  # the options its parser reads
        if self.max_records is not None:  # absent when unset: fingerprints of uncapped sets unchanged
            out["max_records"] = self.max_records
        return out


@dataclass
class Pool:
    """Candidates to decode in order; ``quota`` stops after that many usable images (sampling),
    ``split`` fixes their split (otherwise splits are drawn after decoding). A ``ceiling`` quota
    (the record cap) may go unmet; otherwise fewer usable images than the quota is an error."""

    name: str
    items: Iterable[Candidate]
    size: int
    split: str | None = None
    quota: int | None = None
    ceiling: bool = False


def natural_key(text: str) -> tuple:
    """Sort ``CXR2`` before ``CXR10`` (report numbers are not zero-padded)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))
