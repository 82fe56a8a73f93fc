"""The paper's figures from the run logs (matplotlib, Agg backend).

- ``ranks_<setup>_<method>_<variant>.png``: final rank heatmaps, text encoder and U-Net (Figures 3–6);
  only for methods whose final ranks differ between layers (SeLoRA, AdaLoRA)
- ``rank_growth_<setup>.png``: mean rank per part over training steps, per method / SeLoRA variant
- ``memory_<setup>.png``: memory over training steps (Figures 11–12)
- ``loss_<setup>.png``: training loss (running mean) and validation loss
- ``qualitative_<setup>.png``: the real test image beside each method's (and the base model's)
  sample for the same prompts (Figures 2, 7–10)

Curves and heatmaps average over the seeds present; titles say how many.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from selora.config import Params
from selora.report.collect import Collected
from selora.report.labels import PART_LABEL, method_label
from selora.report.rankmap import final_ranks, rank_matrix
from selora.runlayout import DEFAULT_VARIANT, NO_ADAPTER

DPI = 120
GRID_PROMPTS = 4


def _save(fig: plt.Figure, path: Path) -> Path:
    from selora.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def _heat(ax: plt.Axes, mat: pd.DataFrame, title: str) -> None:
    data = mat.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto")
    ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=90 if mat.shape[1] > 8 else 0, fontsize=7)
    ax.set_yticks(range(mat.shape[0]), mat.index, fontsize=7)
    ax.set_xlabel("layer (input → output)")
    ax.set_title(title, fontsize=9)
    finite = data[np.isfinite(data)]
    mid = (finite.max() + finite.min()) / 2 if finite.size else 0
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            txt = f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.1f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=6, color="white" if v < mid else "black")
    plt.colorbar(im, ax=ax, fraction=0.03, pad=0.02)


def rank_heatmap(final: pd.DataFrame, title: str, path: Path) -> Path | None:
    """One panel per part (text encoder, U-Net attention layers, other U-Net linears)."""
    panels = []
    for part in sorted(final["part"].unique(), key=lambda p: (p != "text_encoder", p)):
        for group in ("attention", "other"):
            mat = rank_matrix(final, part, group)
            if not mat.empty:
                label = PART_LABEL.get(part, part) + (
                    "" if group == "attention" else " (other linear layers)"
                )
                panels.append((mat, label))
    if not panels:
        return None
    heights = [max(1.2, 0.28 * m.shape[0] + 0.8) for m, _ in panels]
    width = max(6.0, 0.35 * max(m.shape[1] for m, _ in panels) + 2.5)
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(width, sum(heights) + 0.6),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (mat, label) in zip(axes[:, 0], panels, strict=True):
        _heat(ax, mat, label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _mean_curve(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    return df.groupby(x, as_index=False)[y].mean().sort_values(x)


def _lines(col: Collected, setup: str, include_ablation: bool) -> list[tuple[str, str]]:
    runs = col.runs[col.runs.setup == setup]
    pairs = list(dict.fromkeys(zip(runs.method, runs.variant, strict=True)))
    return [(m, v) for m, v in pairs if include_ablation or v == DEFAULT_VARIANT]


def rank_growth(ranks: pd.DataFrame) -> pd.DataFrame:
    """Mean rank per adapted layer at every logged step (columns seed, step, rank), each module
    carrying its last logged rank forward, so sparse logging (only changes) reads right too."""
    out = []
    for seed, grp in ranks.groupby("seed"):
        wide = grp.pivot_table(index="step", columns="module", values="rank", aggfunc="last").sort_index()
        mean = wide.ffill().mean(axis=1)
        out.append(pd.DataFrame({"seed": seed, "step": mean.index, "rank": mean.to_numpy()}))
    return pd.concat(out, ignore_index=True)


def curve_figure(
    col: Collected,
    setup: str,
    log: str,
    y: str,
    ylabel: str,
    title: str,
    path: Path,
    parts: bool = False,
    include_ablation: bool = False,
) -> Path | None:
    """One line per method (and SeLoRA variant), mean over seeds; one panel per part if ``parts``."""
    df = col.logs.get(log)
    if df is None or df[df.setup == setup].empty:
        return None
    df = df[df.setup == setup]
    groups = sorted(df["part"].unique(), key=lambda p: (p != "text_encoder", p)) if parts else [None]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.6), squeeze=False)
    for ax, part in zip(axes[0], groups, strict=True):
        for method, variant in _lines(col, setup, include_ablation):
            sel = df[(df.method == method) & (df.variant == variant)]
            if part is not None:
                sel = sel[sel.part == part]
                sel = rank_growth(sel) if not sel.empty else sel
            if sel.empty:
                continue
            cur = _mean_curve(sel, "step", y)
            ax.plot(
                cur["step"],
                cur[y],
                label=f"{method_label(method, variant)} (n={sel['seed'].nunique()})",
                drawstyle="steps-post" if parts else "default",
            )
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_title(PART_LABEL.get(part, part) if part else title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title} — {setup}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def loss_figure(col: Collected, setup: str, path: Path) -> Path | None:
    steps, val = col.logs.get("steps"), col.logs.get("validation")
    if steps is None or steps[steps.setup == setup].empty:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10.5, 3.6))
    for method, variant in _lines(col, setup, False):
        sel = steps[(steps.setup == setup) & (steps.method == method) & (steps.variant == variant)]
        if not sel.empty:
            cur = _mean_curve(sel, "step", "loss")
            window = max(1, len(cur) // 25)
            a.plot(
                cur["step"],
                cur["loss"].rolling(window, min_periods=1).mean(),
                label=f"{method_label(method, variant)} (n={sel['seed'].nunique()})",
            )
        if val is not None:
            v = val[(val.setup == setup) & (val.method == method) & (val.variant == variant)]
            if not v.empty:
                cur = _mean_curve(v, "step", "val_loss")
                b.plot(cur["step"], cur["val_loss"], marker="o", ms=3, label=method_label(method, variant))
    for ax, t in ((a, "training loss (running mean)"), (b, "validation loss (fixed draws)")):
        ax.set_xlabel("training step")
        ax.set_title(t, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Loss curves — {setup}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _manifest(folder: Path) -> list[dict]:
    from selora.io import read_jsonl

    path = folder / "samples" / "manifest.jsonl"
    return read_jsonl(path) if path.is_file() else []


def qualitative_grid(params: Params, col: Collected, setup: str, path: Path) -> Path | None:
    """Rows: the first prompts (by source_id) every method sampled; columns: real, then methods (and
    the untouched base model). Uses each method's lowest evaluated seed and the first image per
    prompt (k = 0)."""
    methods = [*params.experiment.methods, *([NO_ADAPTER] if params.experiment.no_adapter else [])]
    chosen: dict[str, dict[str, dict]] = {}
    for m in methods:
        runs = col.runs[
            (col.runs.setup == setup) & (col.runs.method == m) & (col.runs.variant == DEFAULT_VARIANT)
        ].sort_values("seed")
        for folder in runs["path"]:
            rows = [r for r in _manifest(Path(folder)) if int(r.get("k", 0)) == 0]
            if rows:
                chosen[m] = {str(r["source_id"]): {**r, "_dir": folder} for r in rows}
                break
    if not chosen:
        return None
    common = sorted(set.intersection(*(set(v) for v in chosen.values())))[:GRID_PROMPTS]
    if not common:
        return None
    cols = ["real", *[m for m in methods if m in chosen]]
    fig, axes = plt.subplots(
        len(common), len(cols), figsize=(1.6 * len(cols) + 2.6, 1.7 * len(common)), squeeze=False
    )
    for i, sid in enumerate(common):
        first = next(iter(chosen.values()))[sid]
        for j, c in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == "real":
                src = Path(first["real_image"])
            else:
                r = chosen[c][sid]
                src = Path(r["_dir"]) / "samples" / "images" / r["file_name"]
            if src.is_file():
                with Image.open(src) as im:
                    ax.imshow(np.asarray(im.convert("RGB")))
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=7)
            if i == 0:
                ax.set_title("Real" if c == "real" else method_label(c), fontsize=9)
        prompt = textwrap.shorten(first["prompt"], 150, placeholder=" …")
        axes[i, 0].set_ylabel(
            "\n".join(textwrap.wrap(prompt, 34)), fontsize=6, rotation=0, ha="right", va="center", labelpad=6
        )
    fig.suptitle(f"Real vs generated, same prompts — {setup}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def all_figures(params: Params, col: Collected, out: Path) -> list[Path]:
    written: list[Path] = []
    ranks = col.logs.get("ranks")
    setups = list(dict.fromkeys([*params.experiment.setups, *params.experiment.ablation.setups]))
    for setup in setups:
        if ranks is not None:
            sub = ranks[ranks.setup == setup]
            for (method, variant), grp in sub.groupby(["method", "variant"], sort=False):
                final = pd.concat(final_ranks(g) for _, g in grp.groupby("seed"))
                if final["rank"].nunique() == 1:
                    continue  # a uniform rank (LoRA, DyLoRA) has nothing to map; the tables give it
                n = grp["seed"].nunique()
                title = (
                    f"Final rank of {method_label(method, variant)} on {setup} "
                    f"({'mean over ' + str(n) + ' seeds' if n > 1 else '1 seed'})"
                )
                p = rank_heatmap(final, title, out / f"ranks_{setup}_{method}_{variant}.png")
                written += [p] if p else []
        for p in (
            curve_figure(
                col,
                setup,
                "ranks",
                "rank",
                "mean rank per adapted layer",
                "Rank growth",
                out / f"rank_growth_{setup}.png",
                parts=True,
                include_ablation=True,
            ),
            curve_figure(
                col,
                setup,
                "memory",
                "peak_mb",
                "peak memory (MiB)",
                "Training memory",
                out / f"memory_{setup}.png",
            ),
            loss_figure(col, setup, out / f"loss_{setup}.png"),
            qualitative_grid(params, col, setup, out / f"qualitative_{setup}.png"),
        ):
            written += [p] if p else []
    return written
