"""A marker file in every generated asset folder: what it is, what it was built from, and that
numbers computed with it mean nothing.

``selora rehearsal-assets`` writes ``SELORA_ASSET.json`` into each folder it builds (random-weight
models, placeholder-image data sets). It does two jobs: a rebuild with the same spec is a no-op
(:func:`is_current`), and ``selora report`` finds every configured input that carries one
(:func:`placeholder_inputs`) and prints, at the top of every table, that the numbers are
meaningless. Real downloads carry no marker, so nothing changes for them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selora.io import write_json

if TYPE_CHECKING:
    from selora.config import Params

MARKER = "SELORA_ASSET.json"
FORMAT = 1


def spec_hash(spec: dict[str, Any]) -> str:
    from selora.runlayout import config_hash

    return config_hash({"format": FORMAT, **spec})


def write_marker(folder: Path, what: str, spec: dict[str, Any], **extra: Any) -> None:
    """Mark ``folder`` (while it is still being written) as a generated placeholder; ``extra``
    (e.g. counts, digests) is recorded but not part of the spec."""
    write_json(Path(folder) / MARKER, {
        "what": what,
        "meaningful": False,
        "why": "random weights or placeholder images, built by `selora rehearsal-assets`: any number "
               "computed with it is meaningless; it only proves the code path runs",
        "spec_hash": spec_hash(spec),
        "spec": spec,
        **extra,
    })


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_current(folder: Path, spec: dict[str, Any]) -> bool:
    """``folder`` exists and was built from ``spec`` (the marker is written last, inside the atomic
    folder, so a present marker means a complete folder)."""
    marker = read_marker(folder)
    return marker is not None and marker.get("spec_hash") == spec_hash(spec)


def _folder_of(path: str | None) -> Path | None:
    if not path:
        return None
    p = Path(path).expanduser()
    return p if p.is_dir() else p.parent if p.is_file() else None


def placeholder_inputs(params: Params) -> list[str]:
    """One line per configured input (base model, metric weights, raw data of the grid's data sets)
    whose folder carries a marker: the reason the results are meaningless."""
    sources = [("base model", params.base_model.name),
               ("Inception weights", params.evaluate.inception_weights),
               ("CLIP model", params.evaluate.clip_model)]
    setups = dict.fromkeys([*params.experiment.setups, *params.experiment.ablation.setups])
    for dataset in dict.fromkeys(params.setup(s).dataset for s in setups):
        sources.append((f"{dataset} raw data", params.datasets.get(dataset).raw))
    lines = []
    for role, path in sources:
        folder = _folder_of(path)
        marker = read_marker(folder) if folder is not None else None
        if marker is not None and not marker.get("meaningful", True):
            lines.append(f"{role} `{path}`: {marker.get('what', 'a generated placeholder')}")
    return lines
