"""Every command the README shows in a code block is one that a test or CI runs verbatim.

README_COMMANDS lists each of them with where it runs; a command added to the README without an
entry here fails the test. The DVC and generator commands run here, verbatim, in a fresh
`git clone` of this checkout, as a new user would run them; the slow ones (`dvc repro`,
`dvc exp run`) run verbatim in the slow tests below.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT / "src")}

FAST = "test_readme.py::test_readme_commands_run_verbatim_on_a_fresh_clone"
README_COMMANDS = {
    "make test": "CI: .ci/run (then `make lint`: ruff and snakemake --lint)",
    "make repro": "not in a test: the full embedded pipeline (≈ 15 min on 2 cores) via Snakemake; "
                  "test_workflow.py runs the same Snakefile on a reduced grid, and `dvc repro` of the "
                  "full default runs in test_readme.py::test_dvc_repro_on_a_fresh_clone (slow)",
    "selora dvc-yaml": FAST,
    "selora dvc-yaml --configfile params-paper.yaml --out paper/dvc.yaml": FAST,
    "dvc repro": "test_readme.py::test_dvc_repro_on_a_fresh_clone (slow)",
    "dvc status dvc.yaml": f"{FAST}; test_readme.py::test_dvc_repro_on_a_fresh_clone (slow)",
    "dvc dag": FAST,
    "dvc metrics show": FAST,
    "dvc plots show": FAST,
    "dvc exp run -S methods.selora.threshold=1.3": "test_readme.py::test_dvc_experiments (slow)",
    "dvc exp show": f"{FAST}; test_readme.py::test_dvc_experiments (slow)",
    "snakemake --cores 2 --config 'methods={selora: {threshold: 1.3}}' 'experiment={seeds: [0]}'":
        "test_workflow.py::test_config_overrides_reach_every_selora_call_and_the_grid runs it with --dry-run",
    "snakemake --cores 4 --profile slurm --configfile params-paper.yaml":
        "needs SLURM: test_workflow.py::test_dry_run_of_the_paper_grid runs it with --dry-run",
    "make rehearse": "test_rehearsal.py::test_make_rehearse_runs_the_paper_grid_into_every_table_then_does_"
                     "nothing (slow: ≈ 15 min on 2 cores; the same `make rehearse`, with the test's venv)",
    "make rehearse-ci": "test_rehearsal.py::test_make_rehearse_runs_the_paper_grid_into_every_table_then_"
                        "does_nothing[reduced] (slow: ≈ 9 min on 2 cores; the same `make rehearse-ci`)",
    "snakemake -n --profile slurm --configfile params-paper.yaml .test/config-rehearsal.yaml":
        "test_rehearsal.py::test_slurm_dry_run_with_the_overlay_lists_the_full_grid runs it verbatim",
    "dvc repro paper/dvc.yaml": "needs the paper's data and a GPU: this test runs `dvc dag paper/dvc.yaml` "
                                "(it parses) and test_workflow.py compares its jobs with Snakemake's",
    "selora prepare --dataset iu-xray      --raw data/raw/iu-xray      --out data/prepared/iu-xray-224 "
    "--views data/raw/iu-xray/nlmcxr_tsne_pa.csv.gz": "needs the downloaded data set; test_prepare_iuxray.py "
    "runs its parser, test_prepare_iuxray_real.py the real reports; the flags resolve in "
    "test_readme_prepare_commands_resolve",
    "selora prepare --dataset montgomery   --raw data/raw/montgomery   --out data/prepared/montgomery-224":
        "needs the downloaded data set; test_prepare_montgomery.py runs its parser",
    "selora prepare --dataset patchgastric --raw data/raw/patchgastric --out data/prepared/patchgastric-384 "
    "--size 384": "needs the downloaded data set; test_prepare_patchgastric.py runs its parser",
    "selora prepare --params params-paper.yaml --setup iu-xray-384 --out data/prepared/iu-xray-384":
        "needs the downloaded data set; test_prepare_iuxray_real.py runs it on the real reports (tiny "
        "images, SD 1.5's tokenizer); the flags resolve in test_readme_prepare_commands_resolve",
}


def readme_commands() -> list[str]:
    """The lines of the README's ```bash blocks (indented ones too), without trailing comments."""
    commands, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        text = line.strip()
        if text.startswith("```"):
            inside = text == "```bash" if not inside else False
            continue
        if inside and text:
            commands.append(re.sub(r"\s+#\s.*$", "", text).strip())
    return commands


def test_every_readme_command_is_listed_with_where_it_runs():
    shown = readme_commands()
    assert shown, "no ```bash block found in README.md"
    assert set(shown) == set(README_COMMANDS), (
        f"in the README but not listed here: {sorted(set(shown) - set(README_COMMANDS))}; "
        f"listed but gone from the README: {sorted(set(README_COMMANDS) - set(shown))}")


def test_readme_prepare_commands_resolve(monkeypatch):
    """Each README `selora prepare` line parses and resolves its setup, raw folder and view table
    from the params it names, as written (the data itself is the user's download)."""
    import shlex

    from selora.cli import build_parser
    from selora.commands.prepare import load_params, options_from_args

    prepares = [c for c in README_COMMANDS if c.startswith("selora prepare")]
    assert len(prepares) == 4
    monkeypatch.chdir(ROOT)
    for command in prepares:
        args = build_parser().parse_args(shlex.split(command)[1:])
        opts = options_from_args(args, load_params(args))
        assert str(opts.raw).startswith("data/raw/"), command
        if opts.dataset == "iu-xray":
            assert opts.views == Path("data/raw/iu-xray/nlmcxr_tsne_pa.csv.gz"), command


def run(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def fresh_clone(tmp_path: Path) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    res = subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return clone


def test_readme_commands_run_verbatim_on_a_fresh_clone(tmp_path):
    """The generator commands leave the clone unchanged (the committed files are current), and the
    DVC commands work with no set-up; `dvc exp show` too (it needs the git history)."""
    clone = fresh_clone(tmp_path)
    ran = [c for c, where in README_COMMANDS.items() if where.startswith(FAST)]
    for command in ran:
        res = run(command, clone)
        assert res.returncode == 0, (command, res.stdout[-2000:], res.stderr[-2000:])
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=clone,
                             capture_output=True, text=True).stdout
    assert changed == "", f"a README command changed committed files:\n{changed}"
    paper = run("dvc dag --dot paper/dvc.yaml", clone)
    assert paper.returncode == 0 and "train-iu-xray-224-lora-default-seed0" in paper.stdout, paper.stderr


SMOKE_CONFIG = ".test/config-smoke.yaml"  # a grid small enough for a real run in a few minutes
REDUCED = yaml.safe_load((ROOT / SMOKE_CONFIG).read_text())


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.mark.slow
def test_dvc_repro_on_a_fresh_clone(tmp_path):
    """`dvc repro` verbatim on a fresh clone runs the embedded default end to end (≈ 15+ min on
    2 cores); a second `dvc repro` runs nothing and `dvc status dvc.yaml` is clean."""
    clone = fresh_clone(tmp_path)
    first = run("dvc repro", clone, timeout=3600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (clone / "results" / "tables" / "index.md").is_file()
    again = run("dvc repro", clone)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout[-3000:]
    # bare `dvc status` also lists paper/dvc.yaml's stages, which never ran here (README says so)
    assert run("dvc status --quiet dvc.yaml", clone).returncode == 0
    assert "prepare-iu-xray-224" in run("dvc status", clone).stdout


@pytest.mark.slow
def test_dvc_experiments(tmp_path):
    """`dvc exp run -S methods.selora.threshold=1.3` (and a queued one) on a committed reduced grid:
    the selora run folder is retrained with that λ, and `dvc exp show` lists its metrics."""
    clone = fresh_clone(tmp_path)
    params = _merge(yaml.safe_load((clone / "params.yaml").read_text()), REDUCED)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in ("selora dvc-yaml", "git -c user.name=t -c user.email=t@t commit -qam reduced",
                    "dvc repro", "git add dvc.lock",
                    "git -c user.name=t -c user.email=t@t commit -qm baseline"):
        res = run(command, clone, timeout=1800)
        assert res.returncode == 0, (command, res.stdout[-3000:], res.stderr[-3000:])
    exp = run("dvc exp run -S methods.selora.threshold=1.3", clone, timeout=1800)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    assert "Running stage 'train-synthetic-cxr-32-selora-default-seed0'" in exp.stdout
    assert "Running stage 'train-synthetic-cxr-32-lora-default-seed0'" not in exp.stdout  # λ is selora's
    run_dir = clone / "results" / "runs" / "synthetic-cxr-32" / "selora" / "default" / "seed0"
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    assert summary["run_config"]["method"]["threshold"] == 1.3
    assert (run_dir / "metrics.json").is_file()
    shown = run("dvc exp show", clone)
    assert shown.returncode == 0, shown.stderr

    def table() -> tuple[list[str], list[dict[str, str]]]:
        rows = list(csv.DictReader(io.StringIO(run("dvc exp show --csv", clone).stdout)))
        return list(rows[0]), rows

    _, rows = table()
    lam = "params.yaml:methods.selora.threshold"  # params-paper.yaml has one too
    exp_rows = [r for r in rows if r["Experiment"]]
    assert [r[lam] for r in exp_rows] == ["1.3"], rows
    fid = f"{run_dir.relative_to(clone)}/metrics.json:fid"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the experiment's own row lists its metrics (read from DVC's cache, not only the workspace)
    assert float(exp_rows[0][fid]) == pytest.approx(metrics["fid"], rel=1e-6), exp_rows[0][fid]
    queued = run("dvc exp run --queue -S methods.selora.threshold=1.2", clone)
    assert queued.returncode == 0, queued.stderr
    started = run("dvc queue start", clone)
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 1800
    while True:  # the queue's worker runs the experiment in a temporary copy of the commit
        status = run("dvc queue status", clone).stdout
        if not re.search(r"\b(Queued|Running)\b", status) or time.monotonic() > deadline:
            break
        time.sleep(10)
    assert "Success" in status, status + run("dvc queue logs $(dvc queue status | awk 'NR==2{print $1}')",
                                            clone).stdout[-3000:]
    _, rows = table()
    assert {"1.3", "1.2"} <= {r[lam] for r in rows if r["Experiment"]}
    shutil.rmtree(clone, ignore_errors=True)
