"""Read every expected run of the experiment grid from its fixed folder (see :mod:`selora.runlayout`).

One row per expected run, whether it exists or not: a report over a partial grid must say what is
missing rather than average fewer seeds than configured. Training quantities (parameter counts,
memory, time, final ranks) come from the training logs; image metrics from ``metrics.json``; the
exported parameter count from the best adapter's LoRA file (what sampling actually loaded). The
untouched base model's run (method ``none``, see :func:`selora.runlayout.no_adapter_runs`) is
collected too: it has no training, so it counts as trained, with 0 exported parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from selora.config import Params
from selora.errors import DatasetFormatError
from selora.runlayout import NO_ADAPTER, RunId, grid, no_adapter_runs, run_dir

ID_COLUMNS = ["setup", "method", "variant", "seed"]
METRIC_KEYS = (
    "prompts_covered",
    "test_prompts",
    "kid_subsets",
    "kid_subset_size",
    "fid",
    "fid_mid",
    "fid_low",
    "kid_mean",
    "kid_std",
    "clip_score",
    "clip_score_real",
    "finding_accuracy",
    "finding_balanced_accuracy",
    "finding_exact_match",
    "domain_share",
    "colour_cast",
    "colour_cast_real",
    "n_generated",
    "features_file",
)
LOGS = {
    "steps": ("step", "epoch", "loss", "lr"),
    "validation": ("epoch", "step", "val_loss", "is_best"),
    "memory": ("step", "device", "peak_mb"),
    "ranks": ("step", "part", "module", "rank", "fi_ratio"),
    "parameters": (
        "part",
        "base_parameters",
        "trainable_parameters",
        "effective_parameters",
        "trainable_percent",
        "effective_percent",
        "adapted_layers",
    ),
}
TEXT_COLUMNS = {"device", "part", "module", "is_best"}


@dataclass
class Collected:
    """``runs``: one row per expected run; ``logs[name]``: that log of every run, with id columns."""

    runs: pd.DataFrame
    logs: dict[str, pd.DataFrame] = field(default_factory=dict)
    metrics: dict[RunId, dict[str, Any]] = field(default_factory=dict)
    base_report: dict[str, Any] | None = None  # the miniature's pretrain_report.json (base_model: tiny)

    def missing(self, need: str = "metrics") -> pd.DataFrame:
        """Runs without ``metrics.json`` (need="metrics") or without training logs (need="train")."""
        col = "has_metrics" if need == "metrics" else "has_train"
        return self.runs.loc[~self.runs[col], [*ID_COLUMNS, "status"]]


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: not a readable CSV ({exc})") from exc
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise DatasetFormatError(f"{path}: missing column(s) {', '.join(absent)} (see selora.runlayout)")
    for col in columns:
        if col in TEXT_COLUMNS or col == "fi_ratio":  # fi_ratio is empty for methods without FI tests
            continue
        try:
            df[col] = pd.to_numeric(df[col])
        except (ValueError, TypeError) as exc:
            raise DatasetFormatError(f"{path}: column {col} is not numeric ({exc})") from exc
    return df


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: not valid JSON ({exc})") from exc


def _train_scalars(logs: dict[str, pd.DataFrame], summary: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    steps = logs.get("steps")
    if steps is not None and len(steps):
        out["steps"] = int(steps["step"].max()) + 1
        out["final_loss"] = float(steps["loss"].iloc[-20:].mean())
    out["train_time_s"] = summary.get("train_time_s")  # wall clock stays out of the (bit-identical) logs
    val = logs.get("validation")
    if val is not None and len(val):
        trained = val[val["epoch"] >= 0]  # epoch -1 is the untouched base model
        out["best_val_loss"] = float(trained["val_loss"].min()) if len(trained) else None
    if summary.get("best_val_loss") is not None:  # the exported epoch's (AdaLoRA: among eligible ones)
        out["best_val_loss"] = float(summary["best_val_loss"])
    mem = logs.get("memory")
    if mem is not None and len(mem):
        out["mem_mean_mb"] = float(mem["peak_mb"].mean())
        out["mem_peak_mb"] = float(mem["peak_mb"].max())
        out["mem_device"] = ",".join(sorted(mem["device"].astype(str).unique()))
    par = logs.get("parameters")
    if par is not None:
        for row in par.itertuples():
            out[f"trainable_pct_{row.part}"] = float(row.trainable_percent)
            out[f"effective_pct_{row.part}"] = float(row.effective_percent)
            out[f"trainable_{row.part}"] = int(row.trainable_parameters)
    ranks = logs.get("ranks")
    if ranks is not None and len(ranks):
        from selora.report.rankmap import final_ranks

        final = final_ranks(ranks)
        for part, grp in final.groupby("part"):
            out[f"mean_rank_{part}"] = float(grp["rank"].mean())
    return out


def exported_parameters(adapter_dir: Path) -> dict[str, int]:
    """Parameters in an exported standard LoRA file, per part and in total (from the safetensors
    header: the tensors' shapes, nothing loaded)."""
    from safetensors import safe_open

    from selora.adapters.export import WEIGHT_NAME

    out: dict[str, int] = {"exported_params": 0}
    with safe_open(str(adapter_dir / WEIGHT_NAME), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            n = int(np.prod(f.get_slice(key).get_shape()))
            part = key.split(".", 1)[0]
            out[f"exported_params_{part}"] = out.get(f"exported_params_{part}", 0) + n
            out["exported_params"] += n
    return out


def collect(params: Params, results: str | Path | None = None) -> Collected:
    """Every run of ``runlayout.grid(params)`` under ``results`` (default ``paths.results``)."""
    if results is not None:
        from dataclasses import replace

        params = replace(params, paths=replace(params.paths, results=str(results)))
    rows, logs, metrics = [], {k: [] for k in LOGS}, {}
    for run in [*grid(params), *no_adapter_runs(params)]:
        folder = run_dir(params, run)
        train = folder / "train"
        row: dict[str, Any] = {
            "setup": run.setup,
            "method": run.method,
            "variant": run.variant,
            "seed": run.seed,
            "path": str(folder),
        }
        run_logs: dict[str, pd.DataFrame] = {}
        for name, cols in LOGS.items():
            path = train / "logs" / f"{name}.csv"
            if path.is_file():
                df = _read_csv(path, cols)
                run_logs[name] = df
                logs[name].append(df.assign(**{c: row[c] for c in ID_COLUMNS}))
        summary_path = train / "summary.json"
        summary = _read_json(summary_path) if summary_path.is_file() else {}
        row["has_train"] = summary_path.is_file() or run.method == NO_ADAPTER  # nothing to train
        row.update(_train_scalars(run_logs, summary) if run_logs or summary else {})
        best = train / "adapter" / "best"
        if run.method == NO_ADAPTER:
            row["exported_params"] = 0
        elif (best / "pytorch_lora_weights.safetensors").is_file():
            row.update(exported_parameters(best))
        mpath = folder / "metrics.json"
        row["has_metrics"] = mpath.is_file()
        if row["has_metrics"]:
            m = _read_json(mpath)
            metrics[run] = m
            row.update({k: m.get(k) for k in METRIC_KEYS})
            row["feature_space"] = (m.get("feature_space") or {}).get("name")
        row["status"] = (
            "complete"
            if row["has_metrics"] and row["has_train"]
            else "no metrics.json (not evaluated)"
            if row["has_train"]
            else "no train/summary.json"
            if row["has_metrics"]
            else "not run"
            if not folder.exists()
            else "incomplete (no summary.json, no metrics.json)"
        )
        rows.append(row)
    runs = pd.DataFrame(rows)
    frames = {k: pd.concat(v, ignore_index=True) for k, v in logs.items() if v}
    return Collected(runs, frames, metrics, _base_report(params))


def _base_report(params: Params) -> dict[str, Any] | None:
    """The embedded miniature's pre-training report, where the base model is the miniature and it
    has been pre-trained: what its caption probe reads is every table's starting point."""
    from selora.basemodel import PRETRAIN_REPORT, tiny_path

    path = tiny_path(params) / PRETRAIN_REPORT
    return _read_json(path) if params.base_model.name == "tiny" and path.is_file() else None
