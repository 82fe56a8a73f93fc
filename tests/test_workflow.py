"""The workflow: Snakemake DAG (default, paper scale, SLURM profile), lint, bad params, `--config`
overrides, dvc.yaml generated from the Snakemake DAG (current, same jobs, same rerun decisions), a
fresh clone that DVC accepts as it is, the conda env file, the `.test/` overlays a user can run, and
a real end-to-end run of the reduced embedded grid (.test/config-reduced.yaml).

Jobs are counted from the job list of Snakemake's dry run as `selora dvc-yaml` reads it
(selora.dag.parse_dry_run), not from its "Job stats" table."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from selora.config import load_params
from selora.dag import parse_dry_run
from selora.runlayout import RunId, grid

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
    """Per rule, the jobs Snakemake lists (dry run or real run; `all` included, empty when none)."""
    return dict(Counter(job.rule for job in parse_dry_run(out)))


def train_runs(out: str) -> set[RunId]:
    """The runs of the train jobs Snakemake lists, from their wildcards."""
    return {RunId(**{**j.wildcards, "seed": int(j.wildcards["seed"])})
            for j in parse_dry_run(out) if j.rule == "train"}


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
    runs = grid(load_params(ROOT / "params.yaml"))
    n = len(runs)
    counts = job_counts(res.stdout)
    assert counts["train"] == counts["sample"] == counts["evaluate"] == n == 16
    assert train_runs(res.stdout) == set(runs)  # the grid's runs themselves, not only as many
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
    assert needle in out and parse_dry_run(out) == []  # no job listed


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


def selora(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "selora"), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("scale", ["default", "paper"])
def test_committed_dvc_yaml_is_what_the_snakemake_dag_generates(scale):
    """dvc.yaml is never edited by hand: `selora dvc-yaml` regenerates it from the Snakemake DAG."""
    args = [] if scale == "default" else ["--configfile", "params-paper.yaml", "--out", "paper/dvc.yaml"]
    res = selora("dvc-yaml", "--check", *args, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def dvc_stages(cwd: Path, dvcfile: str = "dvc.yaml") -> dict[str, dict]:
    """Every stage as DVC itself reads it: command, deps, params keys, outs (incl. metrics, plots)."""
    code = ("from dvc.repo import Repo; import json, sys; r = Repo('.'); out = {}\n"
            f"for s in r.stage.collect({dvcfile!r}):\n"
            "    out[s.name] = {'cmd': s.cmd, 'wdir': s.wdir, 'deps': [str(d.def_path) for d in s.deps "
            "if not hasattr(d, 'params')], 'params': {str(d.def_path): sorted(d.params) for d in s.deps "
            "if hasattr(d, 'params')}, 'outs': [str(o.def_path) for o in s.outs]}\n"
            "print(json.dumps(out))")
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("scale", ["default", "paper"])
def test_dvc_runs_exactly_the_snakemake_jobs(tmp_path, scale):
    """Per job, both tools have the same command (Snakemake's without its log redirection), the same
    inputs and the same outputs; DVC's params are the keys of the rerun hash (issue 13's examples:
    `train.checkpoint_every` reruns neither, `base_model.revision` both), and the paper-scale DAG
    has no miniature in it."""
    wd = workdir(tmp_path, "params-paper.yaml")
    shutil.copy(ROOT / "dvc.yaml", wd / "dvc.yaml")
    (wd / "paper").mkdir()
    shutil.copy(ROOT / "paper" / "dvc.yaml", wd / "paper" / "dvc.yaml")
    assert dvc("init", "--no-scm", "-q", cwd=wd).returncode == 0
    extra = []
    if scale == "paper":
        extra = ["--configfile", "params-paper.yaml"]
        for d in ("iu-xray", "montgomery", "patchgastric"):
            (wd / "data" / "raw" / d).mkdir(parents=True)
    # Enough cores that no rule's threads are capped (`--set train.threads={threads}` in the command).
    smk = snakemake("-n", "-p", "--forceall", "--cores", "64", *extra, cwd=wd)
    assert smk.returncode == 0, smk.stderr
    jobs = [j for j in parse_dry_run(smk.stdout) if j.rule != "all"]
    stages = dvc_stages(wd, "dvc.yaml" if scale == "default" else "paper/dvc.yaml")
    assert sorted(stages) == sorted(j.stage_name for j in jobs)
    params_file = "params.yaml" if scale == "default" else "params-paper.yaml"
    for job in jobs:
        stage = stages[job.stage_name]
        assert job.command == f"{stage['cmd']} > {job.log} 2>&1", job.stage_name
        # DVC lists a stage's outs before its metrics; Snakemake keeps the rule's order.
        assert stage["deps"] == job.inputs and sorted(stage["outs"]) == sorted(job.outputs), job.stage_name
        assert list(stage["params"]) in ([params_file], []), job.stage_name
        keys = stage["params"].get(params_file, [])
        if job.rule == "train":
            assert "base_model" in keys and "train.lr" in keys
            assert not any(k.startswith(("train.checkpoint_every", "train.threads", "sample")) for k in keys)
    if scale == "paper":
        assert not any("tiny-sd" in d for s in stages.values() for d in s["deps"] + s["outs"])
        assert not any(name.startswith(("make_synthetic", "pretrain_base")) for name in stages)
        assert {s["wdir"] for s in stages.values()} == {str(wd)}  # paths relative to the repository root


def test_config_overrides_reach_every_selora_call_and_the_grid(tmp_path):
    """`--config` takes Snakemake's top-level form (`section='{key: value}'`); every `selora` call
    gets it as `--set KEY=VALUE` (so the jobs and their rerun hashes see it), and the grid follows."""
    wd = workdir(tmp_path)
    readme = "--cores 2 --config 'methods={selora: {threshold: 1.3}}' 'experiment={seeds: [0]}'"
    assert f"snakemake {readme}" in (ROOT / "README.md").read_text()  # the README's command, dry run
    res = snakemake(*shlex.split(readme), "-n", "-p", "--forceall", cwd=wd)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    commands = [j.command for j in parse_dry_run(res.stdout) if j.command]
    counts = job_counts(res.stdout)
    assert len(commands) == sum(counts.values()) - counts["all"]  # one per job
    for cmd in commands:
        assert "--set methods.selora.threshold=1.3 --set 'experiment.seeds=[0]'" in cmd, cmd
    assert job_counts(res.stdout)["train"] == 4 + 4  # one seed; the ablation points stay
    bad = snakemake("-n", "--config", "methods={selora: {threshold: abc}}", cwd=wd)
    assert bad.returncode != 0 and "methods.selora.threshold" in bad.stdout + bad.stderr


def test_params_yaml_rewritten_by_dvc_exp_run_still_loads(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with DVC's YAML 1.2 writer, which leaves
    `mixed_precision: no` unquoted; PyYAML (selora, Snakemake) reads that as False. The package
    takes the word back, so both tools still run on the rewritten file."""
    from dvc.utils.serialize import modify_yaml

    wd = workdir(tmp_path)
    with modify_yaml(wd / "params.yaml") as data:  # what `-S methods.selora.threshold=1.3` does
        data["methods"]["selora"]["threshold"] = 1.3
    assert re.search(r"^\s*mixed_precision: no\b", (wd / "params.yaml").read_text(), re.M)
    params = load_params(wd / "params.yaml")
    assert params.train.mixed_precision == "no" and params.methods.selora.threshold == 1.3
    res = snakemake("-n", cwd=wd)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def test_a_fresh_clone_is_a_dvc_repository(tmp_path):
    """What a new user gets from `git clone`: DVC needs no set-up, and both pipelines parse."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    res = subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # (`dvc status`, `dvc dag` and friends run verbatim there in test_readme.py.)
    default = dvc("dag", "--dot", "--outs", cwd=clone)
    paper = dvc("dag", "--dot", "--outs", "paper/dvc.yaml", cwd=clone)
    assert default.returncode == paper.returncode == 0, default.stderr + paper.stderr
    assert "models/tiny-sd" in default.stdout and "results/paper/tables" in paper.stdout
    assert "tiny-sd" not in paper.stdout  # the paper-scale DAG does not depend on the miniature
    for path in (".venv/x", ".snakemake/x", ".dvc/cache/x", ".dvc/tmp/x"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=clone).returncode == 0, path
    dvcignore = (clone / ".dvcignore").read_text()
    assert all(p in dvcignore for p in (".venv/", ".snakemake/", "results/logs/"))


def test_environment_yml_is_self_contained_and_pins_what_requirements_txt_pins():
    """`snakemake --sdm conda` copies environment.yml alone: it may name no file beside it."""
    from selora.envfile import pins, render

    text = (ROOT / "environment.yml").read_text()
    env = yaml.safe_load(text)
    assert env["name"] == "selora" and "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert not any(p.startswith(("-r", "-e", "--", ".")) or "/" in p for p in pip)
    assert pip == pins((ROOT / "requirements.txt").read_text())
    assert text == render((ROOT / "requirements.txt").read_text()), "regenerate: python -m selora.envfile"


def test_conda_rules_find_the_selora_cli_without_the_package_installed(tmp_path):
    """With --sdm conda the per-rule env holds the pins but not the package: the rules' shell prefix
    (common.smk) runs the checkout's source with the env's `python`. Checked with the system Python,
    which has no `selora` (conda itself cannot be installed here, so the env build is not tested)."""
    from selora.dag import conda_shell_prefix

    system = Path("/usr/bin/python3")
    if not system.exists():
        pytest.skip("no system Python to stand in for a bare conda env")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}
    (tmp_path / "python").symlink_to(system)
    bare = subprocess.run(["python", "-c", "import selora"], cwd=tmp_path, env=env, capture_output=True)
    assert bare.returncode != 0, "the stand-in env already has selora: a vacuous check"
    prefix = conda_shell_prefix(ROOT / "src").format()  # as Snakemake formats it
    res = subprocess.run(["bash", "-c", prefix + "type selora; selora dvc-yaml --help"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "selora is a function" in res.stdout and "--configfile" in res.stdout


REDUCED_CONFIG = ".test/config-reduced.yaml"  # the embedded grid, shrunk: one seed, one extra λ and t
REDUCED = yaml.safe_load((ROOT / REDUCED_CONFIG).read_text())


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, val in node.items() for k, v in _leaves(val, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


# Each `.test/` overlay of params.yaml → the leaves its comment says it changes, and its grid's size.
# A leaf beyond these would make it another pipeline, not a smaller one.
SHRINKS = ("synthetic.cxr.n_images", "synthetic.cxr.size", "setups.synthetic-cxr-32.epochs",
           "methods.selora.test_interval", "methods.adalora.delta_t", "train.checkpoint_every",
           "train.memory_every", "sample.steps", "evaluate.reference_steps",
           "evaluate.min_finding_accuracy", "evaluate.kid_subset_size", "experiment.seeds",
           "experiment.ablation.threshold", "experiment.ablation.test_interval")
OVERLAYS = {
    REDUCED_CONFIG: (SHRINKS, 6),
    ".test/config-smoke.yaml": ((*SHRINKS, "synthetic.natural.n_images", "base_model.tiny.vae_steps",
                                 "base_model.tiny.unet_steps", "experiment.methods"), 3),
}


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_a_test_overlay_runs_as_its_comment_says_and_changes_only_what_it_says(tmp_path, overlay):
    """A `.test/` overlay is a config a user can copy: the command its comment gives runs (here as a
    dry run) the grid it announces, every job reads the overlay after params.yaml, and it changes
    exactly the leaves OVERLAYS lists for it (those its comment names, each with params.yaml's value)."""
    changes, n_runs = OVERLAYS[overlay]
    command = f"snakemake --cores 2 --configfile {overlay}"
    assert f"#     {command}\n" in (ROOT / overlay).read_text()
    full, shrunk = load_params(ROOT / "params.yaml"), load_params([ROOT / "params.yaml", ROOT / overlay])
    before, after = _leaves(full.raw), _leaves(shrunk.raw)
    assert set(before) == set(after)  # no key that params.yaml lacks
    changed = {k for k in before if before[k] != after[k]}
    assert changed == set(changes), changed ^ set(changes)
    wd = workdir(tmp_path)
    (wd / ".test").mkdir()
    shutil.copy(ROOT / overlay, wd / overlay)
    res = snakemake(*shlex.split(command)[1:], "-n", "-p", cwd=wd)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    runs = grid(shrunk)
    assert len(runs) == n_runs and train_runs(res.stdout) == set(runs)
    assert job_counts(res.stdout)["sample"] == job_counts(res.stdout)["evaluate"] == n_runs
    commands = [j.command for j in parse_dry_run(res.stdout) if j.command]
    assert commands and all(f"--params params.yaml --params {overlay} " in c for c in commands), commands


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, synthetic_dirs, tiny_base):
    """`snakemake --cores 2` on the reduced grid, reusing the session's synthetic data and
    pre-trained miniature (copied in as already-built outputs, older data first)."""
    wd = reduced_workdir(tmp_path_factory.mktemp("e2e"))
    shutil.copytree(synthetic_dirs["natural"], wd / "data" / "synthetic" / "natural")
    shutil.copytree(synthetic_dirs["cxr"], wd / "data" / "raw" / "synthetic-cxr")
    shutil.copytree(tiny_base["path"], wd / "models" / "tiny-sd")
    # Newer than the data, as when pre-trained in this session: a reused SELORA_TEST_TINY_SD folder
    # keeps its older time through copytree, and `--touch` would then run its job and record
    # metadata, so that `--config` reruns it (test_changing_one_param_... assumes it does not).
    os.utime(wd / "models" / "tiny-sd")
    # Adopt the copies as built (in DAG order), the way a user adopts outputs made elsewhere.
    touched = snakemake("--touch", "--cores", "1", "models/tiny-sd", cwd=wd)
    assert touched.returncode == 0, touched.stderr
    res = snakemake("--cores", "2", cwd=wd, timeout=900)
    return wd, res


def reduced_workdir(tmp: Path) -> Path:
    """params.yaml with the reduced grid merged in (DVC reads params.yaml alone), and the dvc.yaml
    `selora dvc-yaml` generates for it."""
    wd = workdir(tmp)
    full = load_params(ROOT / "params.yaml").raw
    (wd / "params.yaml").write_text(yaml.safe_dump(_merge(full, REDUCED), sort_keys=False))
    gen = selora("dvc-yaml", "--snakefile", str(ROOT / "Snakefile"), cwd=wd)
    assert gen.returncode == 0, gen.stderr
    return wd


@pytest.fixture(scope="module")
def e2e_dvc(e2e):
    """The Snakemake run's outputs adopted by DVC (`dvc commit`), once per module."""
    wd, res = e2e
    assert res.returncode == 0
    if not (wd / ".dvc").exists():
        assert dvc("init", "--no-scm", "-q", cwd=wd).returncode == 0
        commit = dvc("commit", "--force", cwd=wd)
        assert commit.returncode == 0, commit.stderr
    return wd


def dvc_reruns(wd: Path) -> dict[str, int]:
    """Per rule, how many stages `dvc repro` would run: those `dvc status` reports changed, and
    every stage downstream of them (a dependency inside a rerun stage's outputs)."""
    status = dvc("status", "--json", cwd=wd)
    assert status.returncode == 0, status.stderr
    stages = yaml.safe_load((wd / "dvc.yaml").read_text())["stages"]

    def outs(stage: dict) -> list[str]:
        return [o if isinstance(o, str) else next(iter(o)) for k in ("outs", "metrics", "plots")
                for o in stage.get(k, [])]

    rerun = set(json.loads(status.stdout))
    grew = True
    while grew:
        produced = [o for name in rerun for o in outs(stages[name])]
        more = {name for name, st in stages.items() if name not in rerun and any(
            d == o or d.startswith(o + "/") for d in st.get("deps", []) for o in produced)}
        rerun |= more
        grew = bool(more)
    counts: dict[str, int] = {}
    for name in rerun:
        rule = name.split("-", 1)[0]
        counts[rule] = counts.get(rule, 0) + 1
    return counts


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
    from huggingface_hub import ModelCard

    adapters = wd / "results" / "runs" / "synthetic-cxr-32" / "selora" / "default" / "seed0" / "train"
    adapters = adapters / "adapter"
    for which in ("best", "last"):  # a model card beside each exported adapter
        card = ModelCard.load(adapters / which / "README.md")
        assert "selora" in card.data.tags and card.data.base_model is None  # the miniature: not on a hub
    assert "best_val_loss" in (adapters / "best" / "README.md").read_text()
    # The untouched base model is a row, every row shows its exported parameters, and every method
    # is compared with SeLoRA with a bootstrap interval on FID, KID and the finding accuracy (all
    # runs kept their features and findings): 4 rows × 3 metrics.
    main, against = quality.split("## Against SeLoRA")
    base = next(line for line in main.splitlines() if line.startswith("| No adapter (base model)"))
    assert base.strip(" |").split("|")[-1].strip() == "0" and "exported params" in main
    assert "No bootstrap interval" not in against
    assert sum(line.count("significant") for line in against.splitlines() if line.startswith("| ")) == 12
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


def test_dvc_adopts_the_snakemake_outputs_and_is_up_to_date(e2e_dvc):
    """DVC's stages cover exactly what Snakemake built: after `dvc commit` every stage is clean,
    so `dvc repro` would do nothing (and `dvc push` can version the results)."""
    wd = e2e_dvc
    status = dvc("status", "--quiet", cwd=wd)
    assert status.returncode == 0, dvc("status", cwd=wd).stdout


CHANGES = {  # one param changed → the jobs that must rerun (the reduced grid: 6 runs)
    "sample.steps": ({"sample": {"steps": 5}}, {"sample": 6, "evaluate": 6, "sample_no_adapter": 1,
                                                "evaluate_no_adapter": 1, "report": 1}),
    # The threshold-1.3 run sets λ itself, so only the runs that use the base λ retrain.
    "methods.selora.threshold": ({"methods": {"selora": {"threshold": 1.2}}},
                                 {"train": 2, "sample": 2, "evaluate": 2, "report": 1}),
    # Issue 13: these two made only one of the tools rerun.
    "train.checkpoint_every": ({"train": {"checkpoint_every": 7}}, {}),
    "base_model.revision": ({"base_model": {"revision": "main"}},
                            {"train": 6, "sample": 6, "evaluate": 6, "sample_no_adapter": 1,
                             "evaluate_no_adapter": 1, "report": 1}),
}


def _config_arg(change: dict) -> str:
    """The same change as Snakemake's `--config section='{...}'` argument (flow-style YAML)."""
    (section, value), = change.items()
    return f"{section}={yaml.safe_dump(value, default_flow_style=True).strip()}"


@pytest.fixture(scope="module")
def every_job(e2e_dvc) -> dict[str, int]:
    """Per rule, the jobs a `--config` override reruns, whichever param it names: every job of the
    reduced grid's DAG (`--forceall`) but those whose outputs the e2e fixture adopted with `--touch`
    (they carry no Snakemake metadata, so no params trigger can fire for them)."""
    adopted = ("all", "make_synthetic", "pretrain_base")
    return {r: n for r, n in job_counts(snakemake("-n", "--forceall", cwd=e2e_dvc).stdout).items()
            if r not in adopted}


@pytest.mark.parametrize("how", ["params.yaml", "--config"])
@pytest.mark.parametrize("name", list(CHANGES))
def test_changing_one_param_reruns_only_what_depends_on_it_in_both_tools(e2e_dvc, every_job, name, how):
    """Editing params.yaml: Snakemake and DVC rerun exactly the same jobs, only those that depend on
    the param. With `--config` the override is in every job's command, a rerun trigger of its own:
    Snakemake reruns every job (finished trainings of an unchanged config are reused)."""
    wd = e2e_dvc
    change, expected = CHANGES[name]
    expected = {k: v for k, v in expected.items() if v}
    original = (wd / "params.yaml").read_text()
    try:
        if how == "params.yaml":  # edit params.yaml in place, as a user would
            (wd / "params.yaml").write_text(yaml.safe_dump(_merge(yaml.safe_load(original), change)))
            dry = snakemake("-n", cwd=wd)
            assert dvc_reruns(wd) == expected
        else:
            dry = snakemake("-n", "--config", _config_arg(change), cwd=wd)
            expected = every_job
    finally:
        (wd / "params.yaml").write_text(original)
    assert dry.returncode == 0, dry.stderr
    counts = job_counts(dry.stdout)  # empty when Snakemake has nothing to do
    counts.pop("all", None)
    assert counts == expected


@pytest.mark.slow
def test_dvc_repro_runs_the_reduced_grid(tmp_path, synthetic_dirs, tiny_base):
    """`dvc repro` itself (not only its stage list) runs the reduced grid into the tables."""
    wd = reduced_workdir(tmp_path)
    shutil.copytree(synthetic_dirs["natural"], wd / "data" / "synthetic" / "natural")
    shutil.copytree(synthetic_dirs["cxr"], wd / "data" / "raw" / "synthetic-cxr")
    shutil.copytree(tiny_base["path"], wd / "models" / "tiny-sd")
    assert dvc("init", "--no-scm", "-q", cwd=wd).returncode == 0
    adopt = dvc("commit", "--force", "make_synthetic", "pretrain_base", cwd=wd)
    assert adopt.returncode == 0, adopt.stderr
    repro = subprocess.run([str(BIN / "dvc"), "repro"], cwd=wd, env=ENV, capture_output=True, text=True,
                           timeout=1200)
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    assert "Running stage 'train-synthetic-cxr-32-selora-default-seed0'" in repro.stdout
    assert (wd / "results" / "tables" / "quality_synthetic-cxr-32.md").is_file()
    assert dvc("status", "--quiet", cwd=wd).returncode == 0
    again = dvc("repro", cwd=wd)
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout and "up to date" in again.stdout  # nothing reran
