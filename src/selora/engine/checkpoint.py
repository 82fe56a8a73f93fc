"""Full, resumable training state in one file, written atomically and verified before it is trusted.

``train/checkpoint/state.pt`` holds a :class:`selora.engine.state.TrainState`, whose fields list
what that is (adapter, optimiser, RNG states, data position, logs, the run's identity, ...).
It is ``torch.save`` output followed by a footer with the SHA-256 of those bytes, written last:
a truncated file or flipped bytes fail the check instead of loading silently. It is written to a
temporary file, fsynced and renamed, so a job killed at any instant leaves a complete checkpoint;
the one it replaces is kept as ``state.prev.pt``, so a corrupt newest checkpoint costs only the
steps since the previous one. Files that fail the check are moved to ``train/quarantine/`` (never
deleted) and reported once. It loads with ``torch.load(weights_only=True)``: only tensors and plain
containers inside.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from selora.errors import SeloraError
from selora.io import atomic_path, fsync, quarantine

FILENAME = "state.pt"
PREVIOUS = "state.prev.pt"
_MAGIC = b"\nselora-sha256:"
_FOOTER_LEN = len(_MAGIC) + 64 + 1  # magic, hex digest, newline


class CorruptCheckpoint(SeloraError):
    """A checkpoint file that is truncated, altered or not written by this version of selora."""


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """torch's global (and CUDA's) RNG states with those of ``generators``, by name."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = {k: g.get_state() for k, g in generators.items()}
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Undo :func:`rng_state`: the global states, and each named generator's."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def save(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write ``folder/state.pt`` (checksummed, fsynced, atomic); the previous one becomes
    ``state.prev.pt``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    footer = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    dest = Path(folder) / FILENAME
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.write(footer)
            f.flush()
            os.fsync(f.fileno())
        if dest.exists():
            os.replace(dest, dest.with_name(PREVIOUS))  # killed right here: state.prev.pt is loaded
    fsync(dest.parent)
    return dest


def read(path: str | Path) -> dict[str, Any]:
    """One checkpoint file, verified; :class:`CorruptCheckpoint` says why it cannot be trusted."""
    path = Path(path)
    raw = path.read_bytes()
    payload, footer = raw[:-_FOOTER_LEN], raw[-_FOOTER_LEN:]
    if len(raw) < _FOOTER_LEN or not footer.startswith(_MAGIC) or not footer.endswith(b"\n"):
        raise CorruptCheckpoint(f"{path} has no checksum footer (truncated, or written by an older selora)")
    if hashlib.sha256(payload).hexdigest().encode() != footer[len(_MAGIC):-1]:
        raise CorruptCheckpoint(f"{path} does not match its checksum (corrupt bytes)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # the bytes are intact, so it is a foreign or incompatible file
        raise CorruptCheckpoint(f"{path} passes its checksum but does not load: {exc}") from exc


def load(folder: str | Path, quarantine_dir: str | Path) -> dict[str, Any] | None:
    """The newest checkpoint in ``folder`` that passes its check, or None. Each file that fails
    is reported once and moved into ``quarantine_dir``, so a retry makes progress."""
    folder = Path(folder)
    for name in (FILENAME, PREVIOUS):
        path = folder / name
        if not path.is_file():
            continue
        try:
            return read(path)
        except CorruptCheckpoint as exc:
            quarantine(path, quarantine_dir, str(exc).removeprefix(f"{path} "))
    return None
