"""A fourth data set registered from outside the package (tests/test_registry.py loads it through
SELORA_PLUGINS): a folder of PNGs with ``captions.csv`` (file, text, shade)."""

from __future__ import annotations

import csv
from dataclasses import dataclass

from selora.data.common import Candidate, PrepareOptions, SkipLog, require_dir
from selora.data.registry import DatasetSpec, register_dataset
from selora.sections import param

NAME = "toy-shades"


@dataclass(frozen=True)
class ToySource:
    """params ``datasets.toy-shades``."""

    raw: str | None = param("Folder with captions.csv and the PNGs it names.", default=None)


def collect(opts: PrepareOptions, log: SkipLog) -> tuple[list[Candidate], str]:
    raw = require_dir(opts.raw, "the toy shades set")
    with (raw / "captions.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = [Candidate(source_id=r["file"], image=str(raw / r["file"]), text=r["text"],
                     labels={"shade": r["shade"]}) for r in rows]
    return out, "captions.csv"


register_dataset(DatasetSpec(NAME, ToySource, collect, label="Toy shades", paper_size=32))
