"""A run's generated samples and the real test images they are compared with, validated.

Every check fails with a :class:`SampleError` that names the run folder and what is wrong (missing
manifest, listed-but-missing or undecodable images, unlisted images, fewer than two images, prompts
that do not belong to the test split), so nothing is ever scored on a silently shrunken set.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from selora.errors import DatasetFormatError

MANIFEST_FIELDS = ("file_name", "prompt", "source_id", "real_image", "seed", "k")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SHOW = 5  # names listed in an error before "and N more"


class SampleError(DatasetFormatError):
    """Samples or real images that cannot be scored; the message names the files."""


@dataclass(frozen=True)
class Sample:
    path: Path
    prompt: str
    source_id: str
    real_image: str
    seed: int
    k: int


def _names(items: Sequence[Any]) -> str:
    head = ", ".join(str(i) for i in items[:_SHOW])
    return head + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def _norm(text: str) -> str:
    return " ".join(str(text).split())


def read_samples(run_dir: str | Path) -> list[Sample]:
    """The manifest rows of ``<run_dir>/samples``, each with an existing image file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SampleError(f"run folder {run_dir} does not exist")
    samples = run_dir / "samples"
    manifest = samples / "manifest.jsonl"
    if not manifest.is_file():
        raise SampleError(f"{manifest} does not exist: run `selora sample` for this run first")
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SampleError(f"{manifest}:{lineno}: not valid JSON ({exc.msg})") from exc
        missing = [f for f in MANIFEST_FIELDS if f not in row]
        if missing:
            raise SampleError(f"{manifest}:{lineno}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    names = [r["file_name"] for r in rows]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise SampleError(f"{manifest}: file_name listed more than once: {_names(dupes)}")
    images = samples / "images"
    absent = [n for n in names if not (images / n).is_file()]
    if absent:
        raise SampleError(
            f"{manifest}: {len(absent)} listed image(s) missing from {images}: {_names(absent)}"
        )
    on_disk = (
        sorted(p.name for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images.is_dir()
        else []
    )
    unlisted = sorted(set(on_disk) - set(names))
    if unlisted:
        raise SampleError(
            f"{images}: {len(unlisted)} image(s) not in {manifest.name} (mismatched manifest): "
            f"{_names(unlisted)}"
        )
    if len(rows) < 2:
        raise SampleError(f"{manifest}: {len(rows)} sample(s); FID/KID need at least 2 generated images")
    out = []
    for r in rows:
        try:
            seed, k = int(r["seed"]), int(r["k"])
        except (TypeError, ValueError) as exc:
            raise SampleError(f"{manifest}: {r['file_name']}: seed and k must be integers") from exc
        out.append(
            Sample(
                images / r["file_name"], str(r["prompt"]), str(r["source_id"]), str(r["real_image"]), seed, k
            )
        )
    return out


def match_test_rows(
    samples: Sequence[Sample], test_rows: Sequence[dict[str, Any]], where: str
) -> list[dict[str, Any]]:
    """The real test row each sample was generated from (by ``source_id``), checked against the
    sample's prompt and real image, so a manifest from another data set or split is refused."""
    by_id = {str(r["source_id"]): r for r in test_rows}
    unknown = sorted({s.source_id for s in samples if s.source_id not in by_id})
    if unknown:
        raise SampleError(f"{where}: {len(unknown)} source_id(s) not in the test split: {_names(unknown)}")
    wrong_prompt = [s.path.name for s in samples if _norm(s.prompt) != _norm(by_id[s.source_id]["text"])]
    if wrong_prompt:
        raise SampleError(
            f"{where}: {len(wrong_prompt)} sample(s) whose prompt differs from their test record's text "
            f"(mismatched prompt manifest): {_names(wrong_prompt)}"
        )
    wrong_real = [
        s.path.name for s in samples if Path(s.real_image).name != Path(by_id[s.source_id]["file_name"]).name
    ]
    if wrong_real:
        raise SampleError(
            f"{where}: {len(wrong_real)} sample(s) whose real_image is not their test record's image: "
            f"{_names(wrong_real)}"
        )
    return [by_id[s.source_id] for s in samples]


def colour_cast(images: torch.Tensor, low: float = 0.0, high: float = 255.0) -> float:
    """Mean |R − B| of images [N, C, H, W] with values in [low, high], on a [0, 1] scale: 0 for a
    grayscale image (and for one channel). Radiographs are gray, so a tint in a run's samples is a
    domain gap no feature-space distance shows as plainly (the embedded default aims at ≤ 0.02)."""
    if images.shape[1] < 3 or not images.numel():
        return 0.0
    total = 0.0
    for i in range(0, len(images), 256):  # in chunks: a paper-scale test split in float32 is GBs
        x = images[i:i + 256, [0, 2]].float().clamp(low, high)  # [n, 2, H, W]: R and B
        total += float((x[:, 0] - x[:, 1]).abs().sum(dtype=torch.float64))
    return total / (images[:, 0].numel() * (high - low))


def load_images(paths: Sequence[str | Path], mode: str = "RGB", size: int | None = None) -> torch.Tensor:
    """uint8 [N, C, H, W] (C = 3 for "RGB", grayscale repeated; 1 for "L"), optionally resized to
    ``size``×``size``. Undecodable files and mixed sizes are errors that list the files."""
    arrays, corrupt = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
                img = img.convert(mode)
                if size is not None and img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(img, dtype=np.uint8))
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            corrupt.append(Path(path).name)
    if corrupt:
        folder = Path(paths[0]).parent
        raise SampleError(f"{folder}: {len(corrupt)} image(s) cannot be decoded: {_names(corrupt)}")
    if len(arrays) < 2:
        raise SampleError(f"{len(arrays)} image(s) given; at least 2 are needed")
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise SampleError(f"{Path(paths[0]).parent}: images of different sizes {shapes}; expected one size")
    batch = np.stack(arrays)  # [N, H, W] or [N, H, W, C]
    if batch.ndim == 3:
        batch = batch[..., None]
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()  # [N, C, H, W]
