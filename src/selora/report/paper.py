"""The paper's published numbers beside ours.

``published_results.csv`` (in this package) transcribes every number of the paper with the table
or section it comes from. A row is matched to our runs by data set, image size, method (and λ for
Table 3). It is *comparable* only when the protocol matches: same data set and size, Inception
features for FIDs, Stable Diffusion rather than the miniature. The embedded default's synthetic
CXR set stands in for IU X-Ray: its numbers are shown, marked as not comparable in value, and the
ranking of the methods is compared instead: per table and metric, Kendall's τ between the paper's
and our method means (scipy), and for FID how often the bootstrap over test images
(:mod:`~selora.report.significance`) makes the paper's best method ours and reproduces its order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import pandas as pd
import scipy.stats

from selora.config import Params
from selora.report.aggregate import cell, mean_std
from selora.report.collect import Collected
from selora.report.header import feature_space_of
from selora.report.labels import GENERATED_NOTE, hms, paper_counterpart
from selora.runlayout import DEFAULT_VARIANT, variant_name


def dataset_by_label() -> dict[str, str]:
    """The paper's data-set names (published_results.csv) → ours, as the data sets register them."""
    from selora.data.registry import dataset_specs

    return {d.label: d.name for d in dataset_specs()}


def method_by_label() -> dict[str, str]:
    """The paper's method names → ours, as the methods register them."""
    from selora.adapters.base import method_specs

    return {m.label: m.name for m in method_specs()}


@dataclass(frozen=True)
class Metric:
    key: str  # column of Collected.runs
    better: str
    to_paper_unit: float = 1.0  # ours × this = the paper's unit
    fid: bool = False


METRICS = {
    "FID": Metric("fid", "lower", fid=True),
    "FID 64": Metric("fid_low", "lower", fid=True),
    "FID 192": Metric("fid_mid", "lower", fid=True),
    "CLIP score": Metric("clip_score", "higher"),
    "average training GPU memory": Metric("mem_mean_mb", "lower", 1 / 1024),
    "training time": Metric("train_time_s", "lower"),
    "trainable parameters, text encoder": Metric("trainable_pct_text_encoder", "lower"),
    "trainable parameters, U-Net": Metric("trainable_pct_unet", "lower"),
}


def published() -> pd.DataFrame:
    """The transcribed numbers as text (keeps the paper's digits), one row per number."""
    with resources.files("selora.report").joinpath("published_results.csv").open(encoding="utf-8") as f:
        return pd.read_csv(f, dtype=str, keep_default_na=False)


def _method(text: str, params: Params) -> tuple[str, str]:
    """("SeLoRA lambda=1.3") → ("selora", "threshold-1.3"); plain names → default variant."""
    name, _, lam = text.partition(" lambda=")
    method = method_by_label()[name]
    if not lam:
        return method, DEFAULT_VARIANT
    value = float(lam)
    return method, DEFAULT_VARIANT if value == params.methods[method].threshold else variant_name(
        "threshold", value
    )


def _our_setup(params: Params, dataset: str, size: int) -> tuple[str | None, str | None]:
    """(setup, why it is not comparable or None) for a paper data set and size: the exact match,
    else the setup standing in for that paper table (another size, or synthetic data)."""
    setups = list(dict.fromkeys([*params.experiment.setups, *params.experiment.ablation.setups]))
    stand_in = None
    for s in setups:
        cp = paper_counterpart(params, s)
        if cp is None or cp.dataset != dataset or cp.size not in (None, size):  # None: synthetic, any size
            continue
        if cp.exact:
            return s, None
        if stand_in is None:
            s_cfg = params.setup(s)
            why = (f"no — {s_cfg.size} px, not {size}" if s_cfg.dataset == dataset
                   else f"no — stand-in data ({s})")
            stand_in = (s, why)
    return stand_in or (None, None)


def _fmt(metric: str, x: float) -> str:
    if metric == "training time":
        return hms(x)
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.2f}"


def comparison(params: Params, col: Collected) -> pd.DataFrame:
    """One row per published number with ours beside it (mean, std, n) and whether it compares."""
    from selora.assets.marker import placeholder_inputs

    placeholders = placeholder_inputs(params)
    datasets = dataset_by_label()
    rows = []
    for r in published().itertuples(index=False):
        metric = METRICS[r.metric]
        dataset = datasets[r.dataset]
        setup, not_exact = _our_setup(params, dataset, int(r.resolution))
        method, variant = _method(r.method, params)
        seeds = (
            params.experiment.ablation.seeds
            if variant != DEFAULT_VARIANT or r.source == "Table 3"
            else params.experiment.seeds
        )
        mean = std = math.nan
        n = 0
        reason = "no run of this data set in this experiment"
        if setup is not None:
            sel = col.runs[
                (col.runs.setup == setup)
                & (col.runs.method == method)
                & (col.runs.variant == variant)
                & col.runs.seed.isin(seeds)
            ]
            vals = sel[metric.key].tolist() if metric.key in sel else []
            mean, std, n = mean_std(vals)
            mean, std = mean * metric.to_paper_unit, std * metric.to_paper_unit
            space = feature_space_of(col, setup, params).get("name")
            if not_exact:
                reason = not_exact
            elif placeholders:
                reason = "no — placeholder inputs (random weights)"
            elif metric.fid and space != "inception":
                reason = f"no — {space or 'unknown'} feature space, not Inception"
            elif params.base_model.name == "tiny":
                reason = "no — miniature base model, not SD 1.5"
            elif r.metric in ("average training GPU memory", "training time"):
                reason = "hardware-dependent"
            else:
                reason = "yes"
        paper = r.value if not r.std else f"{r.value} ± {r.std}"
        rows.append(
            {
                "Source": r.source,
                "Data set": r.dataset,
                "px": r.resolution,
                "Method": r.method,
                "Metric": r.metric + (f" ({r.unit})" if r.unit else ""),
                "Paper": hms(float(r.value)) if r.metric == "training time" else paper,
                "Ours": cell(mean, std, n, len(seeds), lambda x, m=r.metric: _fmt(m, x)) if setup else "—",
                "Our setup": setup or "—",
                "Comparable": reason,
                "_paper": float(r.value),
                "_ours": mean,
                "_better": metric.better,
                "_key": metric.key,
                "_setup": setup,
                "_method": method,
                "_variant": variant,
                "_seeds": tuple(seeds),
            }
        )
    return pd.DataFrame(rows)


def _agreement(grp: pd.DataFrame, boots: dict | None) -> tuple[str, str, str]:
    """Kendall's τ (p) of paper vs. our means; bootstrap shares of resamples in which the paper's best
    method is our best, and in which the paper's whole order holds (FID of default-variant runs)."""
    from selora.report.significance import ranking_confidence

    tau = scipy.stats.kendalltau(grp["_paper"], grp["_ours"])
    tau_text = "—" if math.isnan(tau.statistic) else f"{tau.statistic:+.2f} (p = {tau.pvalue:.2f})"
    setup = grp["_setup"].iloc[0]
    fid_default = grp["_key"].iloc[0] == "fid" and (grp["_variant"] == DEFAULT_VARIANT).all()
    if not fid_default or not boots or setup not in boots:
        return tau_text, "—", "—"
    paper_order = grp.sort_values("_paper")["_method"].tolist()
    conf = ranking_confidence(boots[setup], setup, grp["_method"].tolist(), list(grp["_seeds"].iloc[0]),
                              paper_order)
    if conf is None:
        return tau_text, "—", "—"
    return tau_text, f"{conf[0]:.0%}", f"{conf[1]:.0%}"


def ranking(cmp: pd.DataFrame, boots: dict | None = None) -> pd.DataFrame:
    """Per paper table and metric: the methods ordered best → worst, in the paper and in ours, and
    how far they agree (Kendall's τ; for FID the bootstrap shares, see :func:`_agreement`)."""
    out = []
    for (source, data, px, metric), grp in cmp.groupby(["Source", "Data set", "px", "Metric"], sort=False):
        if len(grp) < 2:
            continue
        asc = grp["_better"].iloc[0] == "lower"
        paper = grp.sort_values("_paper", ascending=asc)["Method"].tolist()
        ours_g = grp.dropna(subset=["_ours"])
        ours = (
            ours_g.sort_values("_ours", ascending=asc)["Method"].tolist() if len(ours_g) == len(grp) else []
        )
        out.append(
            {
                "Source": source,
                "Data set": data,
                "px": px,
                "Metric": metric,
                "Paper (best → worst)": " < ".join(paper) if asc else " > ".join(paper),
                "Ours (best → worst)": (" < ".join(ours) if asc else " > ".join(ours))
                if ours
                else "incomplete",
                "Same best method": ("yes" if ours[0] == paper[0] else "no") if ours else "—",
                **dict(zip(
                    ("Kendall τ paper vs ours (p)", "Bootstrap: paper's best is ours",
                     "Bootstrap: paper's order holds"),
                    _agreement(grp, boots) if ours else ("—", "—", "—"),
                    strict=True,
                )),
            }
        )
    return pd.DataFrame(out)


def paper_vs_ours(params: Params, col: Collected, boots: dict | None = None) -> str:
    """The comparison table and the method rankings; ``boots``: setup → SetupBootstrap."""
    cmp = comparison(params, col)
    rank = ranking(cmp, boots)
    shown = cmp.drop(columns=[c for c in cmp.columns if c.startswith("_")])
    return "\n".join(
        [
            "# The paper's numbers beside this run's",
            "",
            "- Paper numbers: `src/selora/report/published_results.csv`, transcribed from the paper "
            "(the Source column names the table or section).",
            "- Ours: mean ± sample std over seeds of this experiment "
            f"(base model `{params.base_model.name}`, "
            f"setups {', '.join(params.experiment.setups)}); `⚠ n=k/N` flags missing seeds.",
            "- *Comparable* says whether the protocol matches; when it does not, compare the method "
            "rankings below rather than the values.",
            "",
            shown.to_markdown(index=False),
            "",
            "## Method rankings",
            "",
            "- Kendall τ: rank correlation of the paper's and our method means (+1 = same order, −1 = "
            "reversed; scipy `kendalltau`; with 4 methods even τ = 1 has p ≈ 0.08, so p says little).",
            "- Bootstrap (FID only, where every run kept its features): over "
            f"{params.experiment.statistics.bootstrap_resamples} resamples of the test prompts, the share "
            "in which the paper's best method is also ours, and in which the paper's whole order holds "
            "(method means over the seeds). High shares = our agreement or disagreement with the paper is "
            "stable against which test images were drawn; seed-to-seed noise is in the quality tables.",
            "",
            rank.to_markdown(index=False) if len(rank) else "No table with two or more methods.",
            "",
            GENERATED_NOTE,
            "",
        ]
    )
