"""The workflow: Snakemake DAG (default, paper scale, SLURM profile), lint, bad params, DVC stages
with the same outputs, and a real end-to-end run of a reduced embedded grid."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selora.config import load_params
from selora.runlayout import grid

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}


def snakemake(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def workdir(tmp: Path, *files: str) -> Path:
    for name in ("params.yaml", *files):
        shutil.copy(ROOT / name, tmp / name)
    return tmp


def job_counts(out: str) -> dict[str, int]:
    block = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def snakemake_outputs(out: str) -> set[str]:
    files = set()
    for line in out.splitlines():
        if line.strip().startswith("output:"):
            files |= {f.strip() for f in line.split(":", 1)[1].split(",")}
    return files


def test_snakemake_lint_is_clean(tmp_path):
    res = snakemake("--lint", cwd=workdir(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "good condition" in res.stdout + res.stderr


def test_dry_run_of_the_default_grid(tmp_path):
    res = snakemake("-n", "--forceall", cwd=workdir(tmp_path))
    assert res.returncode == 0, res.stderr
    n = len(grid(load_params(ROOT / "params.yaml")))
    counts = job_counts(res.stdout)
    assert counts["train"] == counts["sample"] == counts["evaluate"] == n == 16
    assert counts["report"] == counts["pretrain_base"] == counts["make_synthetic"] == 1
    assert counts["sample_no_adapter"] == counts["evaluate_no_adapter"] == 1  # the base model, once per setup


@pytest.mark.parametrize("profile", [False, True], ids=["local", "slurm-profile"])
def test_dry_run_of_the_paper_grid(tmp_path, profile):
    wd = workdir(tmp_path, "params-paper.yaml")
    for d in ("iu-xray", "montgomery", "patchgastric"):  # where the README says to unpack them
        (wd / "data" / "raw" / d).mkdir(parents=True)
    extra = ["--profile", str(ROOT / "slurm")] if profile else []
    res = snakemake("-n", "-p", "--configfile", "params-paper.yaml", *extra, cwd=wd)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    counts = job_counts(res.stdout)
    assert counts["train"] == 60 and counts["prepare"] == 4 and "pretrain_base" not in counts
    # selora gets the params files in Snakemake's precedence order: the paper file wins.
    assert re.search(r"selora train --params params\.yaml --params \S*params-paper\.yaml ", res.stdout)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"experiment": {"methods": ["lora", "bogus"]}}, "experiment"),
        ({"methods": {"selora": {"threshold": "abc"}}}, "threshold"),
        ({"setups": {"iu-xray-224": {"dataset": "iu-xray", "size": 224, "batch_size": 8, "epochs": 10,
                                     "splits": {"train": 0.8, "validation": 0.16, "test": 0.04}}},
          "experiment": {"setups": ["iu-xray-224"], "ablation": {"setups": ["iu-xray-224"]}}},
         "datasets.iu-xray.raw"),
    ],
    ids=["unknown-method", "non-numeric-lambda", "dataset-without-raw"],
)
def test_bad_params_fail_before_any_job_naming_the_key(tmp_path, patch, needle):
    wd = workdir(tmp_path)
    (wd / "bad.yaml").write_text(yaml.safe_dump(patch))
    res = snakemake("-n", "--configfile", "bad.yaml", cwd=wd)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert needle in out and "Job stats" not in out


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=300)


def dvc_outputs(cwd: Path) -> set[str]:
    code = ("from dvc.repo import Repo; import json; r = Repo('.'); "
            "print(json.dumps(sorted(str(o.def_path) for s in r.index.stages for o in s.outs)))")
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return set(json.loads(res.stdout))


def test_dvc_stages_and_snakemake_dag_produce_the_same_outputs(tmp_path):
    wd = workdir(tmp_path, "dvc.yaml")
    assert dvc("init", "--no-scm", "-q", cwd=wd).returncode == 0
    stages = dvc("stage", "list", cwd=wd)
    assert stages.returncode == 0, stages.stderr
    assert dvc("dag", cwd=wd).returncode == 0
    smk = snakemake("-n", "--forceall", cwd=wd)
    assert smk.returncode == 0, smk.stderr
    assert dvc_outputs(wd) == snakemake_outputs(smk.stdout)


REDUCED = {  # the embedded grid, shrunk: one seed, one extra λ and t, a few steps
    "synthetic": {"cxr": {"n_images": 120, "size": 32}},
    "setups": {"synthetic-cxr-32": {"dataset": "synthetic-cxr", "size": 32, "batch_size": 8, "epochs": 2,
                                    "splits": {"train": 0.7, "validation": 0.1, "test": 0.2}}},
    "methods": {"selora": {"test_interval": 4}, "adalora": {"delta_t": 2}},
    "train": {"checkpoint_every": 5, "memory_every": 5},
    "sample": {"steps": 3},
    "evaluate": {"reference_steps": 300, "min_finding_accuracy": 0.5, "kid_subset_size": 10},
    "experiment": {"seeds": [0], "ablation": {"seeds": [0], "threshold": [1.3], "test_interval": [8]}},
}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, synthetic_dirs, tiny_base):
    """`snakemake --cores 2` on the reduced grid, reusing the session's synthetic data and
    pre-trained miniature (copied in as already-built outputs, older data first)."""
    wd = workdir(tmp_path_factory.mktemp("e2e"), "dvc.yaml")
    full = load_params(ROOT / "params.yaml").raw
    (wd / "params.yaml").write_text(yaml.safe_dump(_merge(full, REDUCED), sort_keys=False))
    shutil.copytree(synthetic_dirs["natural"], wd / "data" / "synthetic" / "natural")
    shutil.copytree(synthetic_dirs["cxr"], wd / "data" / "raw" / "synthetic-cxr")
    shutil.copytree(tiny_base["path"], wd / "models" / "tiny-sd")
    # Adopt the copies as built (in DAG order), the way a user adopts outputs made elsewhere.
    touched = snakemake("--touch", "--cores", "1", "models/tiny-sd", cwd=wd)
    assert touched.returncode == 0, touched.stderr
    res = snakemake("--cores", "2", cwd=wd, timeout=900)
    return wd, res


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def test_reduced_grid_runs_end_to_end_into_every_table_and_figure(e2e):
    wd, res = e2e
    assert res.returncode == 0, res.stderr[-4000:]
    tables = {p.name for p in (wd / "results" / "tables").glob("*.md")}
    assert {"quality_synthetic-cxr-32.md", "ablation_threshold.md", "ablation_test_interval.md",
            "memory.md", "time.md", "parameters.md", "paper_vs_ours.md", "index.md"} <= tables
    figures = {p.name for p in (wd / "results" / "figures").glob("*.png")}
    for prefix in ("ranks_synthetic-cxr-32_selora", "rank_growth_", "memory_", "loss_", "qualitative_"):
        assert any(f.startswith(prefix) for f in figures), (prefix, figures)
    quality = (wd / "results" / "tables" / "quality_synthetic-cxr-32.md").read_text()
    assert all(m in quality for m in ("LoRA", "AdaLoRA", "DyLoRA", "SeLoRA"))
    assert "All configured runs are present." in quality
    # The untouched base model is a row, every row shows its exported parameters, and every method
    # is compared with SeLoRA with a bootstrap interval (all runs kept their features).
    main, against = quality.split("## Against SeLoRA")
    base = next(line for line in main.splitlines() if line.startswith("| No adapter (base model)"))
    assert base.strip(" |").split("|")[-1].strip() == "0" and "exported params" in main
    assert "No bootstrap interval" not in against
    assert sum(line.count("significant") for line in against.splitlines() if line.startswith("| ")) == 8
    again = snakemake("--cores", "2", cwd=wd)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_adalora_exports_its_target_budget_not_an_earlier_epoch(e2e):
    """Reduced grid: 11 steps per epoch, 22 in all, AdaLoRA's final allocation at step 13, so epoch 0
    may not be exported however low its validation loss; the exported ranks sum to 4 per layer."""
    wd, res = e2e
    assert res.returncode == 0
    run = wd / "results" / "runs" / "synthetic-cxr-32" / "adalora" / "default" / "seed0" / "train"
    info = json.loads((run / "adapter" / "best" / "adapter.json").read_text())
    ranks = json.loads((run / "adapter" / "best" / "ranks.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    tfinal = round(0.4 * summary["steps"])
    assert info["step"] > summary["steps"] - tfinal and info["epoch"] == summary["best_epoch"]
    n = sum(len(layers) for layers in ranks.values())
    assert sum(r for layers in ranks.values() for r in layers.values()) == 4 * n  # target_rank · layers


def test_snakemake_report_holds_the_tables_and_figures_with_captions(e2e):
    """`snakemake --report` writes one self-contained HTML page with every table (inline HTML) and
    figure, each with its caption."""
    import base64

    wd, res = e2e
    assert res.returncode == 0
    rep = snakemake("--report", "results/report.html", cwd=wd)
    assert rep.returncode == 0, rep.stderr[-3000:]
    page = (wd / "results" / "report.html").read_text(encoding="utf-8")
    for name in ("quality_synthetic-cxr-32.html", "paper_vs_ours.html", "parameters.html",
                 "qualitative_synthetic-cxr-32.png", "loss_synthetic-cxr-32.png"):
        assert f"filename={name}" in page, name
    # Captions rendered per file (from workflow/report/*.rst, picked by the file name).
    for text in ("the reference every adapter must beat", "Kendall", "Wall-clock training time",
                 "The real test image beside each method"):
        assert text in page, text
    quality = re.search(r"filename=quality_synthetic-cxr-32\.html;base64,([A-Za-z0-9+/=]+)", page)
    table = base64.b64decode(quality[1]).decode()
    assert "No adapter (base model)" in table and "Against SeLoRA" in table and "<table>" in table


def test_dvc_adopts_the_snakemake_outputs_and_is_up_to_date(e2e):
    """DVC's stages cover exactly what Snakemake built: after `dvc commit` every stage is clean,
    so `dvc repro` would do nothing (and `dvc push` can version the results)."""
    wd, res = e2e
    assert res.returncode == 0
    assert dvc("init", "--no-scm", "-q", cwd=wd).returncode == 0
    commit = dvc("commit", "--force", cwd=wd)
    assert commit.returncode == 0, commit.stderr
    status = dvc("status", "--quiet", cwd=wd)
    assert status.returncode == 0, dvc("status", cwd=wd).stdout


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"sample": {"steps": 5}},
         {"sample": 6, "evaluate": 6, "sample_no_adapter": 1, "evaluate_no_adapter": 1, "report": 1}),
        # The threshold-1.3 run sets λ itself, so only the runs that use the base λ retrain.
        ({"methods": {"selora": {"threshold": 1.2}}}, {"train": 2, "sample": 2, "evaluate": 2, "report": 1}),
    ],
    ids=["sample.steps", "methods.selora.threshold"],
)
def test_changing_one_param_reruns_only_what_depends_on_it(e2e, change, expected):
    wd, res = e2e
    assert res.returncode == 0
    original = (wd / "params.yaml").read_text()
    try:  # edit params.yaml in place, as a user would
        (wd / "params.yaml").write_text(yaml.safe_dump(_merge(yaml.safe_load(original), change)))
        dry = snakemake("-n", cwd=wd)
    finally:
        (wd / "params.yaml").write_text(original)
    assert dry.returncode == 0, dry.stderr
    counts = job_counts(dry.stdout)
    counts.pop("all", None)
    counts.pop("total", None)
    assert counts == expected


@pytest.mark.slow
def test_dvc_repro_runs_the_reduced_grid(tmp_path, synthetic_dirs, tiny_base):
    """`dvc repro` itself (not only its stage list) runs the reduced grid into the tables."""
    wd = workdir(tmp_path, "dvc.yaml")
    full = load_params(ROOT / "params.yaml").raw
    (wd / "params.yaml").write_text(yaml.safe_dump(_merge(full, REDUCED), sort_keys=False))
    shutil.copytree(synthetic_dirs["natural"], wd / "data" / "synthetic" / "natural")
    shutil.copytree(synthetic_dirs["cxr"], wd / "data" / "raw" / "synthetic-cxr")
    shutil.copytree(tiny_base["path"], wd / "models" / "tiny-sd")
    assert dvc("init", "--no-scm", "-q", cwd=wd).returncode == 0
    adopt = dvc("commit", "--force", "make_synthetic", "pretrain_base", cwd=wd)
    assert adopt.returncode == 0, adopt.stderr
    repro = subprocess.run([str(BIN / "dvc"), "repro"], cwd=wd, env=ENV, capture_output=True, text=True,
                           timeout=1200)
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    assert "Running stage 'train@synthetic-cxr-32-selora-0'" in repro.stdout
    assert (wd / "results" / "tables" / "quality_synthetic-cxr-32.md").is_file()
    assert dvc("status", "--quiet", cwd=wd).returncode == 0
    again = dvc("repro", cwd=wd)
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout and "up to date" in again.stdout  # nothing reran
