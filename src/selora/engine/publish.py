"""The end of a run: the best and last adapters (standard LoRA files with a model card), the logs,
the parameter table and ``summary.json``; and the check that lets a finished run be reused.

Each adapter folder ends with ``SHA256SUMS`` over its files and the summary is written last, so a
reader (or the next ``selora train``) can tell a complete run from one killed while publishing.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from selora.adapters.base import Adapter
from selora.config import Params
from selora.engine import checkpoint
from selora.engine.logs import write_csv
from selora.engine.state import Target, TrainState
from selora.io import Provenance, atomic_dir, quarantine, verify_checksums, write_checksums, write_json
from selora.runlayout import RunId

if TYPE_CHECKING:
    from selora.engine.loop import Data

PARAMETER_COLUMNS = ("part", "base_parameters", "trainable_parameters", "effective_parameters",
                     "trainable_percent", "effective_percent", "adapted_layers")


def export_adapter(adapter: Adapter, dest: Path, **info: Any) -> None:
    """The standard LoRA file plus ``adapter.json`` (epoch, step, validation loss it came from),
    and last ``SHA256SUMS`` over both, so a reader can tell a complete export from a damaged one."""
    with atomic_dir(dest) as tmp:
        adapter.export(tmp)
        write_json(Path(tmp) / "adapter.json", info)
        write_checksums(tmp)


def finished_summary(out: Path, identity_hash: str) -> dict[str, Any] | None:
    """The summary of a finished run with this identity whose adapters pass their checksums."""
    path = out / "summary.json"
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        quarantine(path, out / "quarantine", f"unreadable ({exc}); the run is published again")
        return None
    if not isinstance(done, dict) or done.get("identity_hash") != identity_hash:
        return None
    for name in ("best", "last"):
        problem = verify_checksums(out / "adapter" / name)
        if problem:
            print(f"publishing {out} again: {problem}", file=sys.stderr)
            return None
    return done


def card_adapters(params: Params, run: RunId, adapter_dir: Path, **metrics: Any) -> None:
    """A model card (README.md) beside the best and last adapters: what a hub needs to list them."""
    from selora.adapters.export import write_model_card

    setup = params.raw["setups"][run.setup]
    base = params.base_model.name
    base = f"{params.paths.models}/tiny-sd" if base == "tiny" else base  # the embedded miniature
    on_hub = params.base_model.name != "tiny" and not Path(base).exists()
    train_cfg = {k: v for k, v in params.raw["train"].items() if k not in ("threads", "checkpoint_every")}
    for which in ("best", "last"):
        write_model_card(adapter_dir / which, base_model=base, method=run.method,
                         hyperparameters=params.raw["methods"][run.method], dataset=setup["dataset"],
                         setup={"setup": run.setup, **setup}, training={"seed": run.seed, **train_cfg},
                         metrics=metrics if which == "best" else None, base_on_hub=on_hub)


def publish(params: Params, run: RunId, target: Target, state: TrainState, data: Data) -> None:
    """``adapter/best`` (copied from the checkpoint, checked), ``adapter/last``, cards and logs."""
    out, best = target.out, target.checkpoint_dir / "best"
    problem = verify_checksums(best)
    if problem:
        quarantine(best, out / "quarantine", problem)
        raise checkpoint.CorruptCheckpoint(f"the best adapter of {run.relpath} cannot be published: "
                                           f"{problem}; run again to retrain it")
    with atomic_dir(out / "adapter" / "best") as tmp:
        shutil.copytree(best, tmp, dirs_exist_ok=True)
        problem = verify_checksums(tmp)
        if problem:
            raise checkpoint.CorruptCheckpoint(f"copying the best adapter failed: {problem}")
    export_adapter(state.adapter, out / "adapter" / "last", epoch=data.epochs - 1, step=state.step)
    card_adapters(params, run, out / "adapter", best_epoch=state.best_epoch,
                  best_val_loss=state.best_val_loss if data.draws is not None else None)
    state.logs.write(out / "logs")
    write_csv(out / "logs" / "parameters.csv", state.adapter.parameter_table(), PARAMETER_COLUMNS)


def summarise(target: Target, state: TrainState, data: Data, device: torch.device, prov: Provenance,
              t0: float) -> dict[str, Any]:
    """``summary.json``: the run, its identity, length, timings, memory, ranks and provenance."""
    memory = [r["peak_mb"] for r in state.logs.rows["memory"]]
    clock = state.clock
    return {
        "run": target.config["run"],
        "config_hash": target.config_hash,
        "run_config": target.config,
        "identity_hash": target.identity_hash,
        "identity": target.identity,
        "steps": state.step,
        "epochs": data.epochs,
        "steps_per_epoch": data.steps_per_epoch,
        "n_train": len(data.train),
        "n_validation": len(data.val) if data.val is not None else 0,
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss if data.draws is not None else None,
        "train_time_s": round(sum(t["wall_s"] for t in state.timing), 3),
        "epoch_times": state.timing,
        **{f"{k.removesuffix('_s')}_time_s": round(v, 3) for k, v in clock.items()},
        "steps_per_second": round(state.step / clock["steps_s"], 3) if clock["steps_s"] else None,
        "checkpoint_overhead": round(clock["checkpoint_s"] / max(clock["steps_s"], 1e-9), 4),
        "memory_device": device.type,
        "memory_mean_mb": round(sum(memory) / len(memory), 1) if memory else None,
        "memory_max_mb": max(memory) if memory else None,
        "final_ranks": state.adapter.rank_map(),
        "parameters": state.adapter.parameter_table(),
        "provenance": prov.as_dict(process_wall_time_s=round(time.perf_counter() - t0, 3)),
    }
