"""A run's identity and its resumable training state: what ``train/checkpoint/state.pt`` holds is
:class:`TrainState`'s fields, listed there and nowhere else.

A checkpoint is resumed only when it was written for the same inputs (params, prepared data, base
model and seeds: :func:`selora.runlayout.run_identity`) and its best epoch's adapter still passes
its checksums; otherwise it is discarded (stale) or moved to ``train/quarantine`` (corrupt) and
training starts over. The file itself (checksum footer, atomic replace, previous copy) is
:mod:`selora.engine.checkpoint`'s.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from selora.adapters.base import Adapter
from selora.config import Params
from selora.engine import checkpoint
from selora.engine.logs import RunLogs
from selora.io import quarantine, verify_checksums
from selora.runlayout import RunId, config_hash, prepared_dir, run_config, run_dir, run_identity

CLOCKS = ("steps_s", "checkpoint_s", "validation_s")  # where the time goes (summary.json)


@dataclass(frozen=True)
class Target:
    """Which run this is and where it goes: ``out`` is ``<run>/train``; ``identity`` is everything
    that makes a result (params, data, base model, seeds), ``config`` the params part of it."""

    out: Path
    data_dir: Path
    config: dict[str, Any]
    config_hash: str
    identity: dict[str, Any]
    identity_hash: str

    @classmethod
    def of(cls, params: Params, run: RunId, data_dir: str | Path | None,
           out_dir: str | Path | None) -> Target:
        data = Path(data_dir) if data_dir else prepared_dir(params, run.setup)
        config = run_config(params, run)
        identity = run_identity(params, run, data)
        return cls(out=(Path(out_dir) if out_dir else run_dir(params, run)) / "train", data_dir=data,
                   config=config, config_hash=config_hash(config), identity=identity,
                   identity_hash=config_hash(identity))

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"


@dataclass
class TrainState:
    """Everything a resumed run needs to continue as if it had never stopped; the fields are the
    checkpoint's keys. Objects are saved as their state dicts, the data generator together with
    torch's global RNG (:func:`checkpoint.rng_state`), the logs as their rows."""

    # Whose progress this is: resume_point compares it before anything is restored.
    config_hash: str
    identity_hash: str
    identity: dict[str, Any]
    # What trains. The adapter is restored before the rest is built (restore_adapter).
    adapter: Adapter
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    rng: torch.Generator  # latent sampling, noise and timesteps of the training steps
    # Where the run is and what it has seen.
    step: int = 0  # finished steps
    epoch: int = 0
    batch: int = 0  # finished batches of this epoch
    best_val_loss: float = math.inf
    best_epoch: int | None = None
    timing: list[dict[str, float]] = field(default_factory=list)  # wall seconds per epoch
    clock: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CLOCKS, 0.0))
    logs: RunLogs = field(default_factory=RunLogs)

    @classmethod
    def start(cls, target: Target, adapter: Adapter, optimizer: torch.optim.Optimizer,
              lr_scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
              rng: torch.Generator) -> TrainState:
        """Step 0 of ``target``'s run."""
        return cls(target.config_hash, target.identity_hash, target.identity, adapter, optimizer,
                   lr_scheduler, scaler, rng)

    @staticmethod
    def restore_adapter(adapter: Adapter, saved: dict[str, Any]) -> None:
        """First of all: resumed SeLoRA layers have grown, and the optimiser must be built on the
        restored parameters (so :meth:`restore` leaves the adapter alone)."""
        adapter.load_state_dict(saved["adapter"])

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from ``saved``, a checkpoint of this run (:func:`resume_point`)."""
        for f in fields(self):
            if f.name not in _NOT_RESTORED:
                setattr(self, f.name, _restored(getattr(self, f.name), saved[f.name]))

    def save(self, folder: Path) -> None:
        """Write the checkpoint (atomic, checksummed); the time it takes counts in ``clock``."""
        t = time.perf_counter()
        checkpoint.save(folder, {f.name: _saved(getattr(self, f.name)) for f in fields(self)})
        self.clock["checkpoint_s"] += time.perf_counter() - t


# The identity is this run's by then (resume_point), the adapter restored before the optimiser.
_NOT_RESTORED = ("config_hash", "identity_hash", "identity", "adapter")


def _saved(value: Any) -> Any:
    if isinstance(value, torch.Generator):
        return checkpoint.rng_state({"data": value})
    if isinstance(value, RunLogs):
        return value.state()
    if hasattr(value, "state_dict"):
        return value.state_dict()
    return value


def _restored(current: Any, saved: Any) -> Any:
    if isinstance(current, torch.Generator):
        checkpoint.restore_rng(saved, {"data": current})
        return current
    if isinstance(current, RunLogs):
        return RunLogs.from_state(saved)
    if hasattr(current, "load_state_dict"):
        current.load_state_dict(saved)
        return current
    if isinstance(current, (list, dict)):
        return type(current)(saved)
    return saved


def resume_point(target: Target) -> dict[str, Any] | None:
    """The checkpoint to resume from: the newest that passes its check, written for this run's
    inputs, whose best epoch's adapter is intact; None (start over) otherwise."""
    ckpt_dir, quarantine_dir = target.checkpoint_dir, target.out / "quarantine"
    saved = checkpoint.load(ckpt_dir, quarantine_dir)
    if saved is not None and saved.get("identity_hash") != target.identity_hash:
        # The params, the prepared data, the base model or a seed changed since that checkpoint
        # (e.g. the workflow reruns this job because its input data changed): its progress does
        # not belong to this run.
        changed = [k for k, v in target.identity.items() if saved.get("identity", {}).get(k) != v]
        print(f"discarding {ckpt_dir}: it was written for other inputs ({', '.join(changed) or 'unknown'} "
              "changed)", file=sys.stderr)
        shutil.rmtree(ckpt_dir)
        saved = None
    if saved is not None and saved["best_epoch"] is not None:
        problem = verify_checksums(ckpt_dir / "best")
        if problem:  # the best epoch's adapter cannot be rebuilt from a later checkpoint
            for name in ("best", checkpoint.FILENAME, checkpoint.PREVIOUS):
                if (ckpt_dir / name).exists():
                    quarantine(ckpt_dir / name, quarantine_dir, f"{problem}; training restarts")
            saved = None
    if saved is None and (ckpt_dir / "best").exists():
        shutil.rmtree(ckpt_dir / "best")  # belongs to no checkpoint; the first epoch exports anew
    return saved
