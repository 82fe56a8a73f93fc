"""Full, resumable training state in one file, written atomically.

``train/checkpoint/state.pt`` holds the adapter (incl. current ranks), optimiser, LR scheduler,
grad scaler, every RNG state, the data position (epoch, batch within epoch, global step), the best
validation loss so far and the logs so far. It is written to a temporary file and renamed, so a
job killed at any instant leaves either the previous checkpoint or the new one, never half of one.
It loads with ``torch.load(weights_only=True)``: only tensors and plain containers inside.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from selora.io import atomic_path

FILENAME = "state.pt"


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = {k: g.get_state() for k, g in generators.items()}
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def save(folder: str | Path, state: dict[str, Any]) -> Path:
    dest = Path(folder) / FILENAME
    with atomic_path(dest) as tmp:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    return dest


def load(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / FILENAME
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
