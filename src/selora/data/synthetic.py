"""The synthetic CXR set (``selora make-synthetic``) through the same preparation as the real sets.

``--raw`` is the folder ``make-synthetic`` wrote (an imagefolder: ``<split>/metadata.jsonl``). Its
own splits are ignored: the records are pooled (in ``source_id`` order), re-split with the setup's
fractions and seed, and resized to the setup's size. Text and findings labels are carried as they
are — the metrics phase reads the labels back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from selora.data import iuxray
from selora.data.common import Candidate, PrepareOptions, SkipLog, clean_text, natural_key, require_dir
from selora.data.registry import DatasetSpec, register_dataset
from selora.errors import DatasetFormatError
from selora.findings import FINDINGS
from selora.imagefolder import MANIFEST, SPLITS
from selora.sections import param

NAME = "synthetic-cxr"


@dataclass(frozen=True)
class SyntheticCxrSource:
    """params ``datasets.synthetic-cxr``: where ``selora make-synthetic`` writes the set."""

    raw: str = param(default=f"data/raw/{NAME}")


def collect(opts: PrepareOptions, log: SkipLog) -> tuple[list[Candidate], str]:
    raw = require_dir(opts.raw, "the synthetic CXR set (run `selora make-synthetic`)")
    manifests = [raw / s / MANIFEST for s in SPLITS if (raw / s / MANIFEST).is_file()]
    if not manifests:
        raise DatasetFormatError(
            f"{raw}: no <split>/{MANIFEST}; is this the output of `selora make-synthetic`?")
    out = []
    for manifest in manifests:
        try:
            lines = manifest.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DatasetFormatError(f"{manifest}: not UTF-8 (byte {exc.start})") from exc
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{manifest}:{lineno}"
            try:
                row = json.loads(line)
                name, source_id = row["file_name"], str(row["source_id"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                log.skip(where, "invalid manifest row", f"{where}: {exc}")
                continue
            text = clean_text(row.get("text"))
            if not text:
                log.skip(source_id, "empty text", where)
                continue
            image = manifest.parent / name
            if not image.is_file():
                log.skip(source_id, "image file missing", f"{image} (listed in {where})")
                continue
            out.append(Candidate(source_id=source_id, image=str(image), text=text,
                                 labels=dict(row.get("labels") or {})))
    out.sort(key=lambda c: natural_key(c.source_id))
    log.note(f"Re-split from {raw} (its own splits are ignored); texts and labels carried unchanged.")
    return out, "imagefolder"


# The embedded default: its phantoms stand in for IU X-Ray's frontal radiographs at the paper's 224 px.
register_dataset(DatasetSpec(NAME, SyntheticCxrSource, collect, label="synthetic CXR", paper_size=32,
                             stands_in_for=(iuxray.NAME, 224), findings=FINDINGS))
