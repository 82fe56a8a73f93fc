"""The prepared-dataset format: a Hugging Face ``imagefolder`` directory.

Layout (``datasets.load_dataset("imagefolder", data_dir=root)`` returns one split per folder, and
diffusers' own training scripts read it as is)::

    root/
      train/metadata.jsonl        {"file_name", "text", "split", "source_id", "labels", ...}
      train/000000.png
      validation/metadata.jsonl   (absent when the protocol has no validation split)
      test/metadata.jsonl
      data_report.json / .md      counts, prompt lengths, every skipped record and why
      <split>/objects.jsonl       only where images have boxes (the natural set): see write_objects

Images are RGB PNGs, written once so training never decodes raw data again. The whole folder is
built in a temporary sibling and renamed into place, so an interrupted run leaves no half set.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from selora.errors import DatasetFormatError
from selora.io import atomic_dir, read_jsonl, write_jsonl

SPLITS = ("train", "validation", "test")
MANIFEST = "metadata.jsonl"


@dataclass
class ImageFolderWriter:
    """Streams images into a temporary folder; ``rows`` keeps only the small manifest rows."""

    root: Path
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {s: [] for s in SPLITS})

    def add(
        self,
        image: Image.Image,
        *,
        split: str,
        text: str,
        source_id: str,
        labels: dict[str, Any] | None = None,
        stem: str | None = None,
        **extra: Any,
    ) -> str:
        target = self._target(split, stem)
        image.convert("RGB").save(target, format="PNG", optimize=False)
        return self._record(target, split, text, source_id, labels, extra)

    def add_png(
        self,
        png: bytes | Path,
        *,
        split: str,
        text: str,
        source_id: str,
        labels: dict[str, Any] | None = None,
        stem: str | None = None,
        **extra: Any,
    ) -> str:
        """Like :meth:`add` for an RGB image already encoded as PNG (worker processes encode in
        parallel): ``bytes`` are written as is, a ``Path`` (a staged file) is moved into place."""
        target = self._target(split, stem)
        if isinstance(png, Path):
            os.replace(png, target)
        else:
            target.write_bytes(png)
        return self._record(target, split, text, source_id, labels, extra)

    def _target(self, split: str, stem: str | None) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        folder = self.root / split
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{stem or f'{len(self.rows[split]):06d}'}.png"

    def _record(self, target: Path, split: str, text: str, source_id: str,
                labels: dict[str, Any] | None, extra: dict[str, Any]) -> str:
        file_name = target.name
        self.rows[split].append(
            {
                "file_name": file_name,
                "text": text,
                "split": split,
                "source_id": source_id,
                "labels": labels or {},
                **extra,
            }
        )
        return file_name

    def counts(self) -> dict[str, int]:
        return {s: len(r) for s, r in self.rows.items() if r}

    def finish(self) -> None:
        for split, rows in self.rows.items():
            if rows:
                write_jsonl(self.root / split / MANIFEST, rows)


@contextmanager
def image_folder(dest: str | Path) -> Iterator[ImageFolderWriter]:
    """Build a prepared-dataset folder atomically: it appears at ``dest`` only when complete."""
    with atomic_dir(dest) as tmp:
        writer = ImageFolderWriter(Path(tmp))
        yield writer
        writer.finish()


def read_manifest(root: str | Path, splits: tuple[str, ...] = SPLITS) -> list[dict[str, Any]]:
    """All manifest rows of a prepared folder, each with ``path``; checks every file exists."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"prepared data folder {root} does not exist")
    rows: list[dict[str, Any]] = []
    found = False
    for split in splits:
        manifest = root / split / MANIFEST
        if not manifest.is_file():
            continue
        found = True
        for row in read_jsonl(manifest):
            if row.get("split") != split:
                raise DatasetFormatError(
                    f"{manifest}: row {row.get('file_name')} says split {row.get('split')!r}"
                )
            path = root / split / row["file_name"]
            if not path.is_file():
                raise DatasetFormatError(f"{manifest}: {row['file_name']} is listed but missing")
            rows.append({**row, "path": str(path)})
    if not found:
        raise DatasetFormatError(f"{root}: no {MANIFEST} in any of {', '.join(splits)}/")
    return rows


def split_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    c = Counter(r["split"] for r in rows)
    return {s: c[s] for s in SPLITS if c[s]}


def split_hash(rows: list[dict[str, Any]]) -> str:
    """A short hash of which source record went to which split (order-independent)."""
    pairs = sorted(f"{r['split']}\t{r['source_id']}\t{r['file_name']}" for r in rows)
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:16]


def file_digest(root: str | Path) -> str:
    """Hash of every file's relative path and bytes under ``root`` (determinism checks)."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def load_json(path: str | Path) -> Any:
    with Path(path).open(encoding="utf-8") as f:
        return json.load(f)


OBJECTS = "objects.jsonl"


def write_objects(root: str | Path, objects: Mapping[str, list[dict[str, Any]]]) -> None:
    """Write ``{"<split>/<file_name>": [{"phrase", "box"}, ...]}`` as one ``objects.jsonl`` per split.

    Each image's objects with their caption phrase and box (x0, y0, x1, y1 in [0, 1] image
    coordinates), as grounding data sets annotate: beside the manifest, as COCO's annotation files
    are, not in it: inside ``metadata.jsonl`` a split holding only images without boxes would get
    another column type than the others, and Hugging Face's imagefolder refuses that (it ignores
    this file)."""
    by_split: dict[str, list[dict[str, Any]]] = {}
    for key, objs in objects.items():
        split, file_name = key.split("/", 1)
        by_split.setdefault(split, []).append({"file_name": file_name, "objects": objs})
    for split, rows in by_split.items():
        write_jsonl(Path(root) / split / OBJECTS, rows)


def with_objects(root: str | Path, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifest rows (:func:`selora.imagefolder.read_manifest`) with their ``objects`` from the
    split's ``objects.jsonl``; a row that file does not list (or a split without one) gets none."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for split in {r["split"] for r in rows}:
        path = Path(root) / split / OBJECTS
        if path.is_file():
            found.update(((split, r["file_name"]), r["objects"]) for r in read_jsonl(path))
    return [{**r, "objects": found.get((r["split"], r["file_name"]), [])} for r in rows]
