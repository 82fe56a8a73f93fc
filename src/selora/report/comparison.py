"""The quality table's "Against SeLoRA" block: every other method (and no adapter) against the
proposed method, with a bootstrap interval over test images and a paired t-test over seeds
(the numbers come from :mod:`~selora.report.significance`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from selora.config import Params
from selora.report.header import fid_labels
from selora.report.labels import method_label, method_labels
from selora.runlayout import NO_ADAPTER

if TYPE_CHECKING:
    from selora.report.significance import SetupBootstrap


def _signed(x: float, metric: str) -> str:
    if metric == "finding_bal":
        return f"{100 * x:+.1f}"  # percentage points, as the quality table's percentages
    return f"{x:+.3f}" if metric == "fid" else f"{x:+.3g}"


def comparison_block(params: Params, runs: pd.DataFrame, boot: SetupBootstrap | None, setup: str,
                     space: dict[str, Any]) -> list[str]:
    """Every other method (and no adapter) against SeLoRA: FID/KID (and, where the findings were
    scored, finding balanced accuracy) difference, its bootstrap interval over test images, whether
    it is significant, and the paired t-test over seeds."""
    from selora.adapters.base import proposed_method
    from selora.report.significance import compare

    exp, baseline = params.experiment, proposed_method()
    if baseline not in exp.methods:
        return [f"No comparison with {method_labels()[baseline]}: {baseline} is not in experiment.methods."]
    others = [m for m in exp.methods if m != baseline] + ([NO_ADAPTER] if exp.no_adapter else [])
    if not others:
        return []
    conf = f"{100 * exp.statistics.confidence:g}%"
    n_seeds = len(exp.seeds)
    labels = {"fid": fid_labels(space)["fid"], "kid": "KID"}
    has_findings = "finding_balanced_accuracy" in runs and runs.finding_balanced_accuracy.notna().any()
    if has_findings:
        labels["finding_bal"] = "finding bal. acc. %"
    out = []
    for m in others:
        row = {"Method − SeLoRA": method_label(m)}
        for metric, label in labels.items():
            c = compare(runs, boot, setup, m, metric, exp.seeds)
            p = c.paired
            diff = "—" if p.n == 0 else _signed(p.mean_diff, metric)
            if c.has_interval:
                diff += f" [{_signed(c.lo, metric)}, {_signed(c.hi, metric)}]"
            row[f"Δ {label} [{conf} CI]"] = diff
            row[f"{label}: bootstrap"] = ("significant" if c.significant else "not significant"
                                          if c.has_interval else "—")
            row[f"{label}: paired t over seeds"] = (
                f"p = {p.p:.3f} (n={p.n})" if not math.isnan(p.p)
                else f"— (n={p.n}{', no spread' if p.n > 1 else ''})")
        out.append(row)
    why = []
    if boot is None or not boot.samples:
        why = [f"- No bootstrap interval: {boot.note if boot is not None else 'not computed'}."]
    elif has_findings and not any("finding_bal" in s for s in boot.samples.values()):
        why = ["- No bootstrap interval for the finding accuracy: no run kept the findings read per "
               "image (evaluated before they were kept): rerun `selora evaluate` for them."]
    return [
        f"## Against SeLoRA ({setup})",
        "",
        "- Δ = method − SeLoRA on the per-seed values above, averaged over the seeds both have (lower "
        "FID/KID is better, so Δ > 0 means SeLoRA is better"
        + ("; finding balanced accuracy is higher-better and in percentage points, so there Δ < 0 "
           "means SeLoRA is better" if has_findings else "")
        + "); the no-adapter run is paired with every SeLoRA seed.",
        f"- [{conf} CI]: percentile interval of the same seed-averaged Δ over "
        f"{exp.statistics.bootstrap_resamples} bootstrap resamples of the test prompts (real image and "
        "its generated images together, the same resamples for every run; KID there is the unbiased "
        "MMD² over the whole resample"
        + ("; the finding accuracy is recomputed from what the reference network read in the "
           "resampled images" if has_findings else "")
        + "). **not significant** = the interval covers 0.",
        "- Paired t-test over seeds (scipy `ttest_rel`): "
        + (f"with {n_seeds} seeds it has {n_seeds - 1} degree(s) of freedom and only flags gaps that are "
           "large against the seed-to-seed spread; a large p means the seeds cannot tell the methods "
           "apart, not that they are equal. "
           if n_seeds > 1 else f"not possible with {n_seeds} seed (it needs 2 or more). ")
        + "The bootstrap covers test-image noise, not training-seed noise; a claim needs both.",
        *why,
        "",
        pd.DataFrame(out).to_markdown(index=False, disable_numparse=True),  # keep "+2.000" signed
    ]
