"""`make rehearse` timed: the paper grid offline on the CPU, from nothing, with a per-phase table.

Runs what `make rehearse` runs, in this checkout, after removing the rehearsal's results (and, with
``--fresh-assets``, its ingredients, keeping the wheel cache): ``selora rehearsal-assets``, then
``snakemake --cores N --configfile params-paper.yaml .test/config-rehearsal.yaml``, then both again
(which must do nothing). Per phase (Snakemake rule) it sums the jobs' wall times from Snakemake's
benchmark files (``results-rehearsal/logs/benchmarks``: whole processes, imports and model loading
included) and reports the load average, since other work on the machine slows every job.

    python benchmarks/rehearsal.py --out results/benchmarks/rehearsal.json [--cores 2] [--fresh-assets]
    python benchmarks/rehearsal.py --table-only [--results DIR]   # tabulate a finished run only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS, ASSETS = ROOT / "results-rehearsal", ROOT / "rehearsal-assets"
SNAKEMAKE = ["snakemake", "--rerun-incomplete",
             "--configfile", "params-paper.yaml", ".test/config-rehearsal.yaml"]
# Pipeline order (the embedded default's `make repro` adds the first two; the rehearsal has neither).
PHASES = ("make_synthetic", "pretrain_base", "prepare", "train", "sample", "sample_no_adapter",
          "fit_reference", "evaluate", "evaluate_no_adapter", "report")


def timed(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return time.perf_counter() - t, res.stdout + res.stderr


def phase_table(results: Path) -> list[dict]:
    """Per rule: jobs and summed / mean / max process wall seconds (Snakemake's CPU and RSS columns
    are sampled, too coarsely for jobs of seconds, so they are left out)."""
    rows: dict[str, list[dict]] = {}
    for tsv in sorted((results / "logs" / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(results / "logs" / "benchmarks")
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if rule in ("sample", "evaluate") and "/none/" in f"/{rel.as_posix()}":
            rule += "_no_adapter"
        with tsv.open() as f:
            rows.setdefault(rule, []).extend(csv.DictReader(f, delimiter="\t"))
    out = []
    for rule in sorted(rows, key=lambda r: PHASES.index(r) if r in PHASES else len(PHASES)):
        wall = [float(r["s"]) for r in rows[rule]]
        out.append({"phase": rule, "jobs": len(wall), "wall_s_sum": round(sum(wall), 1),
                    "wall_s_mean": round(sum(wall) / len(wall), 1), "wall_s_max": round(max(wall), 1)})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| phase | jobs | Σ job wall s | mean s | max s |", "|---|---|---|---|---|"]
    lines += [f"| {r['phase']} | {r['jobs']} | {r['wall_s_sum']} | {r['wall_s_mean']} | {r['wall_s_max']} |"
              for r in table]
    total = sum(r["wall_s_sum"] for r in table)
    lines.append(f"| **all jobs** | {sum(r['jobs'] for r in table)} | {total:.1f} | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="JSON with the timings")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--fresh-assets", action="store_true", help="rebuild the ingredients too (~1 min)")
    ap.add_argument("--table-only", action="store_true", help="only tabulate the last run's benchmark files")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="with --table-only: the results folder to read (e.g. a fresh clone's)")
    args = ap.parse_args()
    out: dict = {"cores": args.cores}
    if not args.table_only:
        shutil.rmtree(RESULTS, ignore_errors=True)
        if args.fresh_assets:
            shutil.rmtree(ASSETS, ignore_errors=True)
        out["load_before"] = os.getloadavg()
        assets_s, _ = timed(["selora", "rehearsal-assets", "--out", "rehearsal-assets"])
        pipeline_s, _ = timed([*SNAKEMAKE, "--cores", str(args.cores)])
        out["load_after"] = os.getloadavg()
        again_assets_s, log_a = timed(["selora", "rehearsal-assets", "--out", "rehearsal-assets"])
        again_s, log_b = timed([*SNAKEMAKE, "--cores", str(args.cores)])
        out.update(assets_s=round(assets_s, 1), pipeline_s=round(pipeline_s, 1),
                   total_s=round(assets_s + pipeline_s, 1), second_run_s=round(again_assets_s + again_s, 1),
                   second_run_did_nothing="0 of 6 built" in log_a and "Nothing to be done" in log_b)
    out["phases"] = phase_table(args.results if args.table_only else RESULTS)
    print(markdown(out["phases"]))
    if not args.table_only:
        print(f"\nassets {out['assets_s']} s + pipeline {out['pipeline_s']} s = {out['total_s']} s "
              f"({out['total_s'] / 60:.1f} min) on {args.cores} cores; load average before "
              f"{out['load_before'][0]:.2f}, after {out['load_after'][0]:.2f} (1 min); second run "
              f"{out['second_run_s']} s, did nothing: {out['second_run_did_nothing']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
