"""The paper's tables (and the reviewers' extra ones) as markdown, regenerated from the runs.

Every table starts with the configuration it came from (setup, data set, size, seeds, steps, base
model, feature space) and ends with the runs it lacks (:mod:`~selora.report.header`). Cells are
mean ± sample std over seeds with ``n=k/N`` when seeds are missing; the best mean per column is in
bold. Quality tables add the untouched base model ("no adapter") as a row, each method's exported
parameter count, each method's seed spread with its interval (:mod:`~selora.report.spread`), and a
comparison of every method with SeLoRA (:mod:`~selora.report.comparison`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from selora.config import Params
from selora.report.aggregate import cell, mean_std
from selora.report.collect import Collected
from selora.report.comparison import comparison_block
from selora.report.header import config_block, feature_space_of, fid_labels, has_values, missing_block
from selora.report.labels import GENERATED_NOTE, PART_LABEL, hms, method_label, paper_counterpart
from selora.report.spread import spread_block
from selora.runlayout import DEFAULT_VARIANT, NO_ADAPTER, variant_name

if TYPE_CHECKING:
    from selora.report.significance import SetupBootstrap


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    better: str | None  # "lower" | "higher" | None (no bold)
    fmt: Callable[[float], str]
    scale: float = 1.0


def _f(digits: int) -> Callable[[float], str]:
    return lambda x: f"{x:.{digits}f}"


def _count(x: float) -> str:
    return f"{x:,.0f}"


# ----------------------------------------------------------------------------- generic table
def table(
    runs: pd.DataFrame,
    rows: Sequence[tuple[str, dict[str, Any]]],
    columns: Sequence[Column],
    expected: int | Sequence[int],
    first: str,
) -> pd.DataFrame:
    """One output row per (label, selector); each column aggregated over the selected runs.
    ``expected``: the number of seeds a complete cell has, for all rows or per row."""
    per_row = [expected] * len(rows) if isinstance(expected, int) else list(expected)
    stats: dict[str, list[tuple[float, float, int]]] = {c.key: [] for c in columns}
    for _, sel in rows:
        mask = pd.Series(True, index=runs.index)
        for k, v in sel.items():
            mask &= runs[k] == v
        for c in columns:
            vals = [x * c.scale for x in runs.loc[mask, c.key].tolist()] if c.key in runs else []
            stats[c.key].append(
                mean_std([None if x is None or (isinstance(x, float) and math.isnan(x)) else x for x in vals])
            )
    out = {first: [label for label, _ in rows]}
    for c in columns:
        # Only complete cells compete for bold: a mean over fewer seeds is not declared best.
        means = [m for (m, _, n), e in zip(stats[c.key], per_row, strict=True) if n == e]
        best = (min(means) if c.better == "lower" else max(means)) if len(means) > 1 and c.better else None
        texts = []
        for (m, s, n), e in zip(stats[c.key], per_row, strict=True):
            t = cell(m, s, n, e, c.fmt)
            texts.append(f"**{t}**" if best is not None and n == e and m == best else t)
        out[c.label] = texts
    return pd.DataFrame(out)


def quality_columns(
    space: dict[str, Any], with_clip: bool, with_findings: bool, with_domain: bool = False
) -> list[Column]:
    lab = fid_labels(space)
    cols = [Column("fid", lab["fid"] + " ↓", "lower", _f(3))]
    if with_clip:
        cols.append(Column("clip_score", "CLIP score ↑", "higher", _f(2)))
    cols += [
        Column("fid_low", lab["fid_low"] + " ↓", "lower", _f(3)),
        Column("fid_mid", lab["fid_mid"] + " ↓", "lower", _f(3)),
        Column("kid_mean", "KID ↓", "lower", lambda x: f"{x:.4g}"),
    ]
    if with_domain:
        cols.append(Column("domain_share", "in-domain % ↑", "higher", _f(1), 100.0))
    cols.append(Column("colour_cast", "colour cast", None, _f(3)))
    if with_findings:
        cols += [
            Column("finding_accuracy", "Finding acc. % ↑", "higher", _f(1), 100.0),
            Column("finding_balanced_accuracy", "Finding bal. acc. % ↑", "higher", _f(1), 100.0),
        ]
    return cols


def _optional(params: Params, setup: str, runs: pd.DataFrame) -> tuple[bool, bool, bool]:
    """Show CLIP score / finding accuracy / in-domain % columns: when any run has them, or, before
    any run is evaluated, when params say they will be computed."""
    evaluated = "has_metrics" in runs and runs["has_metrics"].any()
    clip = has_values(runs, "clip_score") or (not evaluated and bool(params.evaluate.clip_model))
    from selora.data.registry import dataset_spec

    labels = dataset_spec(params.setup(setup).dataset).findings is not None
    probe = labels and bool(params.evaluate.natural_reference)
    domain = has_values(runs, "domain_share") or (not evaluated and probe)
    return clip, has_values(runs, "finding_accuracy") or (not evaluated and labels), domain


def grid_runs(params: Params, col: Collected, setups: list[str], no_adapter: bool = False) -> pd.DataFrame:
    """The main grid's runs (default variant, the experiment's methods and seeds) of ``setups``:
    ablation variants and runs left over from an earlier, larger grid stay out of the main tables.
    ``no_adapter``: also the base model's run (quality tables only; it has no training to compare)."""
    exp = params.experiment
    r = col.runs
    main = r.method.isin(exp.methods) & r.seed.isin(exp.seeds)
    if no_adapter and exp.no_adapter:
        main |= r.method == NO_ADAPTER
    return r[(r.variant == DEFAULT_VARIANT) & main & r.setup.isin(setups)]


def quality_table(params: Params, col: Collected, setup: str, boot: SetupBootstrap | None = None) -> str:
    """Paper Tables 1/2 (224 px) and 5/6 (384 px): FID, CLIP, FID 64, FID 192 + KID, finding accuracy,
    exported parameters; the no-adapter row; every method against SeLoRA."""
    exp = params.experiment
    runs = grid_runs(params, col, [setup], no_adapter=True)
    s = params.setup(setup)
    counterpart = paper_counterpart(params, setup)
    title = counterpart.title(s.size) if counterpart else "no paper counterpart"
    space = feature_space_of(col, setup, params)
    cols = quality_columns(space, *_optional(params, setup, runs))
    cols.append(Column("exported_params", "exported params", None, _count))
    methods = [*exp.methods, *([NO_ADAPTER] if exp.no_adapter else [])]
    rows = [(method_label(m), {"method": m}) for m in methods]
    expected = [1 if m == NO_ADAPTER else len(exp.seeds) for m in methods]
    df = table(runs, rows, cols, expected, "Method")
    return "\n".join(
        [
            f"# Image quality on `{setup}` ({title})",
            "",
            *config_block(params, col, setup, exp.seeds, runs),
            *(["- **No adapter**: the untouched base model, sampled on the same test prompts with the "
               "same sampling seeds and evaluated like a run (one run: it has no training seed)."]
              if exp.no_adapter else []),
            "- **exported params**: parameters in the LoRA file each run exported and sampled with "
            "(its best eligible epoch; AdaLoRA only after its final budget allocation).",
            "",
            df.to_markdown(index=False),
            "",
            *spread_block(params, runs, setup, space),
            "",
            *comparison_block(params, runs, boot, setup, space),
            "",
            *missing_block(runs),
            "",
            GENERATED_NOTE,
            "",
        ]
    )


def _ablation_rows(params: Params, key: str) -> list[tuple[str, str]]:
    """(label, variant) per ablation value, in value order: the listed values plus the base value
    itself, whose runs are the main grid's runs of the proposed method (variant 'default')."""
    from selora.adapters.base import proposed_method

    base = getattr(params.methods[proposed_method()], key)
    values = sorted({*getattr(params.experiment.ablation, key), base})
    return [
        (f"{v:g}" if isinstance(v, float) else str(v), DEFAULT_VARIANT if v == base else variant_name(key, v))
        for v in values
    ]


def ablation_table(params: Params, col: Collected, key: str) -> str:
    """Paper Table 3 (λ) and the reviewers' t ablation: quality, final rank, parameters, time."""
    abl = params.experiment.ablation
    from selora.adapters.base import proposed_method

    symbol = {"threshold": "λ (threshold)", "test_interval": "t (test interval)"}[key]
    proposed = proposed_method()
    cfg = params.methods[proposed]
    base = getattr(cfg, key)
    parts = [
        f"# SeLoRA ablation over {symbol}"
        + (" (paper Table 3)" if key == "threshold" else " (asked for by the reviewers)"),
        "",
    ]
    if not abl.setups or not getattr(abl, key):
        return "\n".join([*parts, f"No {key} ablation configured (experiment.ablation).", ""])
    for setup in abl.setups:
        variants = _ablation_rows(params, key)
        runs = col.runs[
            (col.runs.setup == setup)
            & (col.runs.method == proposed)
            & col.runs.variant.isin([v for _, v in variants])
            & col.runs.seed.isin(abl.seeds)
        ]
        space = feature_space_of(col, setup, params)
        cols = quality_columns(space, *_optional(params, setup, runs))
        cols += [
            Column(f"mean_rank_{p}", f"mean final rank, {PART_LABEL.get(p, p)}", None, _f(2))
            for p in ("text_encoder", "unet")
        ]
        cols += [
            Column(f"trainable_pct_{p}", f"trainable % {PART_LABEL.get(p, p)}", None, _f(3))
            for p in ("text_encoder", "unet")
        ]
        cols.append(Column("train_time_s", "train time", None, hms))
        rows = [
            (f"{label}{' (default)' if v == DEFAULT_VARIANT else ''}", {"variant": v})
            for label, v in variants
        ]
        df = table(runs, rows, cols, len(abl.seeds), symbol)
        other = "t" if key == "threshold" else "λ"
        other_val = cfg.test_interval if key == "threshold" else cfg.threshold
        parts += [
            f"## `{setup}`",
            "",
            *config_block(params, col, setup, abl.seeds, runs),
            f"- Other SeLoRA settings as in params ({other} = {other_val:g}); default {key} = {base:g}.",
            "",
            df.to_markdown(index=False),
            "",
            *missing_block(runs),
            "",
        ]
    return "\n".join([*parts, GENERATED_NOTE, ""])


def efficiency_table(params: Params, col: Collected, kind: str) -> str:
    """Paper Table 7 (average training memory) or Table 8 (training time); methods × setups."""
    exp = params.experiment
    runs = grid_runs(params, col, exp.setups)
    if kind == "memory":
        title = "# Average training memory (paper Table 7)"
        spec = [
            ("mem_mean_mb", "mean of samples, GiB", lambda x: f"{x / 1024:.3f}"),
            ("mem_peak_mb", "peak, GiB", lambda x: f"{x / 1024:.3f}"),
        ]
        devices = sorted({d for d in runs.get("mem_device", pd.Series(dtype=str)).dropna()})
        note = (
            f"- Memory sampled every {params.train.memory_every} steps (`train.memory_every`) on: "
            f"{', '.join(devices) or 'no logs yet'} (peak CUDA allocation on GPUs, process RSS on CPU)."
        )
    else:
        title = "# Training time (paper Table 8)"
        spec = [("train_time_s", "h:mm:ss", hms)]
        note = "- Wall-clock training time from `train/summary.json` (`train_time_s`)."
    out = {"Method": [method_label(m) for m in exp.methods]}
    for setup in exp.setups:
        for key, label, fmt in spec:
            sub = runs[runs.setup == setup]
            out[f"{setup} ({label})"] = [
                cell(
                    *mean_std(sub.loc[sub.method == m, key].tolist() if key in sub else []),
                    len(exp.seeds),
                    fmt,
                )
                for m in exp.methods
            ]
    lines = [
        title,
        "",
        *[
            ln
            for setup in exp.setups
            for ln in (
                f"### `{setup}`",
                *config_block(params, col, setup, exp.seeds, runs[runs.setup == setup], "has_train"),
                "",
            )
        ],
        note,
        "",
        pd.DataFrame(out).to_markdown(index=False),
        "",
    ]
    from selora.adapters.base import proposed_method

    proposed = proposed_method()  # the paper's Eq. 6: its time against LoRA's
    if kind == "time" and "lora" in exp.methods and proposed in exp.methods and "train_time_s" in runs:
        t = params.methods[proposed].test_interval
        est = []
        for setup in exp.setups:
            lora = mean_std(
                runs.loc[(runs.setup == setup) & (runs.method == "lora"), "train_time_s"].tolist()
            )
            sel = mean_std(
                runs.loc[(runs.setup == setup) & (runs.method == proposed), "train_time_s"].tolist()
            )
            if lora[2] and sel[2]:
                est.append(
                    f"- `{setup}`: SeLoRA worst-case estimate (1 + 1/t)·LoRA = {hms((1 + 1 / t) * lora[0])}"
                    f" at t = {t} (paper Eq. 6); measured {hms(sel[0])}."
                )
        lines += est + ([""] if est else [])
    lines += [*missing_block(runs, "has_train"), "", GENERATED_NOTE, ""]
    return "\n".join(lines)


def parameters_table(params: Params, col: Collected) -> str:
    """Trainable parameters as % of the text encoder / U-Net (paper Section 4), per method."""
    exp = params.experiment
    runs = grid_runs(params, col, exp.setups)
    lines = [
        "# Trainable parameters per method (paper Section 4)",
        "",
        "- trainable % = adapter parameters the optimiser updates / parameters of the frozen part; "
        "effective % counts only the ranks in use at the end (AdaLoRA's pruned, DyLoRA's full rank).",
        "",
    ]
    for setup in exp.setups:
        sub = runs[runs.setup == setup]
        cols = []
        for p in ("text_encoder", "unet"):
            cols += [
                Column(f"trainable_pct_{p}", f"trainable % {PART_LABEL[p]}", None, _f(3)),
                Column(f"effective_pct_{p}", f"effective % {PART_LABEL[p]}", None, _f(3)),
                Column(f"mean_rank_{p}", f"mean final rank, {PART_LABEL[p]}", None, _f(2)),
            ]
        cols += [
            Column(f"trainable_{p}", f"trainable parameters, {PART_LABEL[p]}", None, _count)
            for p in ("text_encoder", "unet")
        ]
        df = table(
            sub, [(method_label(m), {"method": m}) for m in exp.methods], cols, len(exp.seeds), "Method"
        )
        lines += [
            f"## `{setup}`",
            "",
            *config_block(params, col, setup, exp.seeds, sub, "has_train"),
            "",
            df.to_markdown(index=False),
            "",
            *missing_block(sub, "has_train"),
            "",
        ]
    return "\n".join([*lines, GENERATED_NOTE, ""])
