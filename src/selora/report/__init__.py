"""``selora report``: every table and figure of the paper, regenerated from the run folders.

:func:`build_report` reads all runs of the grid (:mod:`~selora.report.collect`), aggregates over
seeds (:mod:`~selora.report.aggregate`) and writes, each folder replaced as a whole so nothing
stale survives a rerun::

    <results>/tables/
        index.md                     what is where, the paper table each file reproduces, missing runs
        quality_<setup>.md           paper Tables 1/2 (224 px) and 5/6 (384 px) + KID, finding accuracy,
                                     exported parameters, the no-adapter row, methods against SeLoRA
                                     (bootstrap intervals over test images, paired t-tests over seeds)
        ablation_threshold.md        paper Table 3 (λ)
        ablation_test_interval.md    the t ablation the reviewers asked for
        memory.md, time.md           paper Tables 7 and 8
        parameters.md                trainable parameters, % of text encoder / U-Net (paper Section 4)
        paper_vs_ours.md             the published numbers beside ours, with the method rankings
        summary.csv                  one row per expected run (machine-readable)
        aggregate.csv                mean / std / n per setup × method × variant
        provenance.json
        *.html                       every .md table rendered to HTML, for `snakemake --report`
    <results>/figures/*.png          see :mod:`~selora.report.figures`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from selora.config import Params
from selora.errors import SeloraError
from selora.io import Provenance, atomic_dir, write_json, write_text
from selora.report.aggregate import aggregate
from selora.report.collect import ID_COLUMNS, Collected, collect


class IncompleteRunsError(SeloraError):
    """``--strict`` and some configured runs have no metrics."""


def _summary_frames(col: Collected) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = col.runs.copy()
    numeric = [
        c
        for c in runs.columns
        if c not in (*ID_COLUMNS, "path", "status")
        and pd.api.types.is_numeric_dtype(runs[c])
        and not pd.api.types.is_bool_dtype(runs[c])
    ]
    agg = aggregate(runs, ["setup", "method", "variant"], numeric)
    return runs, agg


def _index(params: Params, col: Collected, tables: list[str], figures: list[Path]) -> str:
    from selora.report.labels import GENERATED_NOTE, paper_counterpart

    lines = ["# Results index", "", "## Tables", ""]
    for name in tables:
        lines.append(f"- [`{name}`]({name})")
    lines += ["", "## Paper tables ↔ files", ""]
    for setup in params.experiment.setups:
        s = params.setup(setup)
        cp = paper_counterpart(params, setup)
        what = (cp.table if cp.exact else f"stand-in for {cp.table}") if cp else "no paper counterpart"
        lines.append(f"- `quality_{setup}.md`: {what} ({s.dataset}, {s.size} px)")
    counterparts = [paper_counterpart(params, s) for s in params.experiment.setups]
    if not any(params.setup(s).size == 384 for s in params.experiment.setups) and not any(
            cp and cp.table in ("Table 5", "Table 6") for cp in counterparts):
        lines.append("- Tables 5/6 (384 px): no setup of size 384 in `experiment.setups` in this experiment.")
    lines += [
        "- `ablation_threshold.md`: Table 3; `ablation_test_interval.md`: t ablation (reviewers)",
        "- `memory.md`: Table 7; `time.md`: Table 8; `parameters.md`: Section 4",
        "",
        "## Figures",
        "",
    ]
    lines += [f"- [`{n}`](../figures/{n})" for n in sorted(p.name for p in figures)] or ["- none yet"]
    miss = col.runs.loc[~col.runs.has_metrics]
    lines += ["", f"## Runs: {len(col.runs) - len(miss)} of {len(col.runs)} evaluated", ""]
    lines += [
        f"- missing `{r.setup}/{r.method}/{r.variant}/seed{r.seed}`: {r.status}" for r in miss.itertuples()
    ]
    return "\n".join([*lines, "", GENERATED_NOTE, ""])


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; line-height: 1.4; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; }
th { background: #eee; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def to_html(markdown: str, title: str) -> str:
    """A table document as a standalone HTML page (markdown-it, CommonMark + tables), so that
    Snakemake's report shows it inline rather than as a download."""
    from html import escape

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def placeholder_banner(lines: list[str]) -> str:
    """The warning every table starts with when an input is a generated placeholder (its folder
    carries selora.assets.marker's file): the numbers below it measure nothing."""
    if not lines:
        return ""
    return "\n".join([
        "> **⚠ REHEARSAL — THESE NUMBERS ARE MEANINGLESS.** Inputs are generated placeholders "
        "(`selora rehearsal-assets`), not the paper's models and data:",
        *(f"> - {line}" for line in lines),
        "> They show that every rule, subcommand and table runs on the paper's structure; they say "
        "nothing about the methods.",
        "", "",
    ])


def build_report(
    params: Params, results: str | Path | None = None, strict: bool = False, figures: bool = True
) -> dict[str, Any]:
    """Write ``<results>/tables`` and (unless ``figures=False``) ``<results>/figures``; returns what
    was written and how many runs are missing."""
    from selora.report import paper, tables

    prov = Provenance("selora report", params.raw)
    results = Path(results or params.paths.results)
    col = collect(params, results)
    miss = col.runs.loc[~col.runs.has_metrics]
    if strict and len(miss):
        names = ", ".join(f"{r.setup}/{r.method}/{r.variant}/seed{r.seed}" for r in miss.itertuples())
        raise IncompleteRunsError(
            f"--strict: {len(miss)} of {len(col.runs)} runs have no metrics.json: {names}"
        )
    from selora.report.significance import bootstrap_setup

    boots = {s: bootstrap_setup(params, col, results, s) for s in params.experiment.setups}
    docs = {f"quality_{s}.md": tables.quality_table(params, col, s, boots[s])
            for s in params.experiment.setups}
    docs["ablation_threshold.md"] = tables.ablation_table(params, col, "threshold")
    docs["ablation_test_interval.md"] = tables.ablation_table(params, col, "test_interval")
    docs["memory.md"] = tables.efficiency_table(params, col, "memory")
    docs["time.md"] = tables.efficiency_table(params, col, "time")
    docs["parameters.md"] = tables.parameters_table(params, col)
    docs["paper_vs_ours.md"] = paper.paper_vs_ours(params, col, boots)
    written = sorted((results / "figures").glob("*.png"))  # kept as they are without figures=True
    if figures:
        from selora.report.figures import all_figures

        with atomic_dir(results / "figures") as fig_tmp:
            written = [results / "figures" / p.name for p in all_figures(params, col, fig_tmp)]
    runs, agg = _summary_frames(col)
    from selora.assets.marker import placeholder_inputs

    placeholders = placeholder_inputs(params)
    banner = placeholder_banner(placeholders)
    with atomic_dir(results / "tables") as tmp:
        docs["index.md"] = _index(params, col, list(docs), written)
        for name, text in docs.items():
            text = banner + text
            write_text(tmp / name, text)
            write_text(tmp / name.replace(".md", ".html"), to_html(text, name.removesuffix(".md")))
        runs.to_csv(tmp / "summary.csv", index=False)
        agg.to_csv(tmp / "aggregate.csv", index=False)
        write_json(tmp / "provenance.json",
                   prov.as_dict(results=str(results), placeholder_inputs=placeholders))
    return {
        "tables": [str(results / "tables" / n) for n in docs if n != "index.md"],
        "figures": [str(p) for p in written],
        "runs": len(col.runs),
        "missing": len(miss),
        "placeholder_inputs": placeholders,
    }
