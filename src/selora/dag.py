"""One definition of the pipeline's jobs for Snakemake and DVC.

The Snakemake rules (``workflow/rules/*.smk``) define the DAG: which jobs exist, their commands,
inputs and outputs. What makes a job rerun lives here, once: :data:`JOB_CONFIGS` maps every rule to
the part of the config its result depends on. The rules hash it (``params: depends=job_hash(...)``,
Snakemake's params rerun trigger) and ``selora dvc-yaml`` lists exactly the params keys that change
it in each DVC stage. ``dvc.yaml`` is therefore *generated*, never written by hand:

    selora dvc-yaml                                                   # dvc.yaml from params.yaml
    selora dvc-yaml --configfile params-paper.yaml --out paper/dvc.yaml   # the paper-scale pipeline

It runs ``snakemake --dry-run --forceall --printshellcmds`` in an empty folder and turns every job
into one DVC stage with the same command (minus Snakemake's log redirection), inputs, outputs and
params. A new rule needs an entry here and ``depends=job_hash("<rule>")`` in its ``params:``;
regenerating adds its stages (an unknown rule stops the generator, naming this table).

It also turns ``snakemake --config key=value`` into ``selora --set`` overrides
(:func:`config_overrides`), so an override reaches every job and its rerun hash.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from selora.config import apply_overrides, load_params, read_params_file
from selora.errors import ConfigError
from selora.runlayout import (
    RunId,
    config_hash,
    no_adapter_sample_config,
    run_config,
    sample_config,
    variant_overrides,
)

Config = Mapping[str, Any]
Wildcards = Mapping[str, str]


def _run(cfg: Config, w: Wildcards) -> tuple[Any, RunId]:
    """The variant's params (only ``.raw`` is read by run_config) and the run id of a job."""
    raw = apply_overrides(dict(cfg), variant_overrides(w["method"], w["variant"]))
    return SimpleNamespace(raw=raw), RunId(w["setup"], w["method"], w["variant"], int(w["seed"]))


def _dataset(cfg: Config, w: Wildcards) -> Any:
    return cfg["datasets"][cfg["setups"][w["setup"]]["dataset"]]


# rule → the config its result depends on (hashed for Snakemake, key-listed for DVC). The shapes are
# those the rules hashed before this table existed, so existing results are not rerun.
JOB_CONFIGS: dict[str, Callable[[Config, Wildcards], Any]] = {
    "make_synthetic": lambda c, w: {"seed": c["seed"], "synthetic": c["synthetic"]},
    "pretrain_base": lambda c, w: {"seed": c["seed"], "base_model.tiny": c["base_model"]["tiny"]},
    "prepare": lambda c, w: [c["seed"], c["setups"][w["setup"]], _dataset(c, w)],
    "train": lambda c, w: [run_config(*_run(c, w)), c["seed"]],  # the seed draws the validation batches
    "sample": lambda c, w: sample_config(*_run(c, w)),
    "sample_no_adapter": lambda c, w: no_adapter_sample_config(SimpleNamespace(raw=c), w["setup"]),
    "fit_reference": lambda c, w: {"seed": c["seed"], "evaluate": c["evaluate"],
                                   f"setups.{w['setup']}": c["setups"][w["setup"]]},
    "evaluate": lambda c, w: {"evaluate": c["evaluate"]},
    "evaluate_no_adapter": lambda c, w: {"evaluate": c["evaluate"]},
    "report": lambda c, w: {"experiment": c["experiment"]},
}
LOCAL_RULES = ("all",)  # targets only: no command, no DVC stage


# Jobs whose numbers depend on the CPU kernels torch runs (the report's bootstrap too: float64 torch
# linear algebra): a cpu_isa pin changes their bits. Keyed in only while set, so that the hash of
# every job run without a pin stays what it was.
TORCH_RULES = ("pretrain_base", "train", "sample", "sample_no_adapter", "fit_reference", "evaluate",
               "evaluate_no_adapter", "report")


def job_config(rule: str, cfg: Config, wildcards: Wildcards) -> Any:
    if rule not in JOB_CONFIGS:
        raise ConfigError(f"rule {rule!r} has no entry in selora.dag.JOB_CONFIGS: say what config its "
                          "result depends on there (Snakemake's rerun hash and dvc.yaml both read it)")
    out = JOB_CONFIGS[rule](cfg, wildcards)
    if rule in TORCH_RULES and cfg.get("cpu_isa") is not None:
        out = {"job": out, "cpu_isa": cfg["cpu_isa"]}
    return out


def job_hash(rule: str, cfg: Config, wildcards: Wildcards) -> str:
    return config_hash(job_config(rule, cfg, wildcards))


# ----------------------------------------------------------------------------- --config overrides
def _typed(value: Any) -> Any:
    """Snakemake parses nested ``--config`` values with YAML's BaseLoader (every scalar a string):
    read each scalar again the way ``selora --set`` does."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, str):
        from selora.config import parse_override

        return parse_override(f"x={value}")[1]
    return value


def config_overrides(overwrite: Mapping[str, Any]) -> list[str]:
    """``snakemake --config`` entries as ``KEY=VALUE`` leaves for ``selora --set`` (values in JSON,
    which YAML reads back unchanged), e.g. ``{"sample": {"steps": "5"}}`` → ``["sample.steps=5"]``."""
    out: list[str] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, val in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), val)
        else:
            out.append(f"{prefix}={json.dumps(node)}")

    for key, val in _typed(dict(overwrite)).items():
        walk(str(key), val)
    return out


def relative(path: str | Path) -> str:
    """``path`` relative to the current folder when inside it (Snakemake absolutises --configfile)."""
    path, cwd = Path(path).resolve(), Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def conda_shell_prefix(src: Path) -> str:
    """Snakemake's shell prefix under ``--sdm conda``: the per-rule env has the pinned dependencies
    but not this package (environment.yml cannot name the checkout it sits in), so ``selora`` runs
    the checkout's source with the env's Python. Braces doubled: Snakemake formats the prefix."""
    path = shlex.quote(str(src))
    return (f'export PYTHONPATH={path}"${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; '
            'selora() {{ python -m selora "$@"; }}; ')


# ----------------------------------------------------------------------------- the Snakemake DAG
@dataclass
class Job:
    rule: str
    wildcards: dict[str, str] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    log: str | None = None
    command: str = ""

    @property
    def stage_name(self) -> str:
        """DVC stage names allow only letters, digits, ``-`` and ``_``."""
        parts = [f"seed{v}" if k == "seed" else v for k, v in self.wildcards.items()]
        return re.sub(r"[^\w-]", "_", "-".join([self.rule, *parts]))


def parse_dry_run(text: str) -> list[Job]:
    """Jobs from ``snakemake -n -p`` output, in its order (the rule blocks and 'Shell command:')."""
    jobs: list[Job] = []
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            jobs.append(Job(m[1]))
            continue
        if not jobs:
            continue
        job = jobs[-1]
        key, _, value = line.strip().partition(": ")
        if line.startswith("Shell command: "):
            command = line.removeprefix("Shell command: ").strip()
            job.command = "" if command == "None" else command  # a target-only rule (`all`)
        elif not line.startswith("    "):
            continue
        elif key in ("input", "output"):
            setattr(job, f"{key}s", [v.strip() for v in value.split(", ")])
        elif key == "log":
            job.log = value.strip()
        elif key == "wildcards":
            job.wildcards = dict(kv.split("=", 1) for kv in value.split(", "))
    return jobs


def snakemake_jobs(params_files: list[Path], snakefile: Path, config: Config) -> list[Job]:
    """Every job of the full DAG, from a dry run in an empty folder (the user's raw-data folders are
    created there empty, as the dry run only needs them to exist)."""
    bin_dir = Path(sys.executable).parent
    exe = shutil.which("snakemake", path=str(bin_dir)) or shutil.which("snakemake") or "snakemake"
    from selora.data.synthetic import NAME as SYNTHETIC

    with tempfile.TemporaryDirectory(prefix="selora-dag-") as tmp:
        for path in params_files:
            (Path(tmp) / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(tmp) / path)
        for name, source in config["datasets"].items():
            if name != SYNTHETIC and source.get("raw"):  # the synthetic set is a job's output
                (Path(tmp) / source["raw"]).mkdir(parents=True, exist_ok=True)
        cmd = [exe, "-s", str(snakefile.resolve()), "--directory", tmp, "--dry-run", "--forceall",
               "--printshellcmds", "--cores", "64", "--nolock"]
        for path in params_files[1:]:
            cmd += ["--configfile", str(path)]
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    if res.returncode != 0:
        raise ConfigError(f"snakemake dry run failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    jobs = [j for j in parse_dry_run(res.stdout) if j.rule not in LOCAL_RULES]
    order = {rule: i for i, rule in enumerate(JOB_CONFIGS)}

    def natural(text: str) -> list[Any]:
        return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text)]

    # The dry run's order is Snakemake's job ids; phase order, then by name, reads (and diffs) better.
    return sorted(jobs, key=lambda j: (order.get(j.rule, len(order)), natural(j.stage_name)))


# ----------------------------------------------------------------------------- params keys
def _leaves(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*prefix, str(k)))]
    return [prefix]


def _set(cfg: dict, path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        cfg = cfg[part]
    cfg[path[-1]] = value


NAMED = ("setups", "datasets", "methods")  # sections of named entries: list the entry, not the section


def _compact(node: Any, chosen: set[tuple[str, ...]], prefix: tuple[str, ...] = ()) -> list[str]:
    """The fewest dotted keys covering exactly ``chosen`` (a section when all its leaves are in;
    ``setups.<name>`` rather than ``setups`` even when there is one setup, so adding one reruns nothing)."""
    leaves = _leaves(node, prefix)
    if all(leaf in chosen for leaf in leaves) and prefix and not (len(prefix) == 1 and prefix[0] in NAMED):
        return [".".join(prefix)]
    if not isinstance(node, dict) or not any(leaf in chosen for leaf in leaves):
        return []
    return [key for k, v in node.items() for key in _compact(v, chosen, (*prefix, str(k)))]


def params_keys(jobs: Iterable[Job], cfg: Config) -> dict[str, list[str]]:
    """Per job (stage name), the config keys whose change changes :func:`job_hash`: each leaf of the
    config is perturbed in turn. This is what DVC's ``params:`` must list to rerun the same jobs."""
    jobs = list(jobs)
    base = {j.stage_name: job_hash(j.rule, cfg, j.wildcards) for j in jobs}
    chosen: dict[str, set[tuple[str, ...]]] = {j.stage_name: set() for j in jobs}
    for leaf in _leaves(cfg):
        changed = copy.deepcopy(dict(cfg))
        _set(changed, leaf, "<perturbed>")
        for j in jobs:
            try:
                differs = job_hash(j.rule, changed, j.wildcards) != base[j.stage_name]
            except (KeyError, TypeError, ValueError, ConfigError):  # a key that picks other keys
                differs = True
            if differs:
                chosen[j.stage_name].add(leaf)
    return {name: _compact(dict(cfg), keys) for name, keys in chosen.items()}


# ----------------------------------------------------------------------------- dvc.yaml
LOG_REDIRECT = re.compile(r"\s*>\s*(\S+)\s+2>&1\s*$")


def _dvc_command(job: Job) -> str:
    """Snakemake's command without its log redirection (DVC shows the output; its folder would not
    exist, as DVC does not create log folders)."""
    m = LOG_REDIRECT.search(job.command)
    if m and job.log and shlex.split(m[1]) == [job.log]:
        return job.command[: m.start()]
    return job.command


def _dvc_outs(path: str) -> tuple[str, Any]:
    """Where an output goes in a DVC stage. Metrics and figures stay in DVC's cache (its default):
    results/ is git-ignored, so an uncached metrics file would exist in no commit, and `dvc exp
    show` would print "!" for every experiment but the workspace."""
    if path.endswith("metrics.json"):
        return "metrics", path
    if Path(path).name == "figures":
        return "plots", path
    return "outs", path


def _check_keys(keys: Iterable[str], data: Mapping[str, Any], file: str, stage: str) -> None:
    for key in keys:
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ConfigError(f"{file} lacks {key}, which stage {stage} depends on: DVC reads that "
                                  "file alone, so it must spell out every key")
            node = node[part]


def dvc_yaml(params_files: list[Path], snakefile: Path, out: Path) -> str:
    """The text of a dvc.yaml with one stage per Snakemake job (see the module docstring)."""
    cfg = load_params(params_files).raw
    jobs = snakemake_jobs(params_files, snakefile, cfg)
    keys = params_keys(jobs, cfg)
    params_file = params_files[-1]
    file_data = read_params_file(params_file)
    root = Path.cwd().resolve()  # the working directory: where the stages' paths are relative to
    if not out.resolve().parent.is_relative_to(root):
        raise ConfigError(f"{out}: a dvc.yaml must lie inside the repository ({root})")
    wdir = Path(*[".."] * len(out.resolve().parent.relative_to(root).parts)).as_posix()
    stages: dict[str, Any] = {}
    for job in jobs:
        _check_keys(keys[job.stage_name], file_data, str(params_file), job.stage_name)
        stage: dict[str, Any] = {}
        if wdir != ".":
            stage["wdir"] = wdir
        stage["cmd"] = _dvc_command(job)
        if job.inputs:
            stage["deps"] = list(job.inputs)
        if keys[job.stage_name]:
            stage["params"] = (keys[job.stage_name] if params_file.as_posix() == "params.yaml"
                               else [{params_file.as_posix(): keys[job.stage_name]}])
        for path in job.outputs:
            kind, entry = _dvc_outs(path)
            stage.setdefault(kind, []).append(entry)
        stages[job.stage_name] = stage
    regen = "selora dvc-yaml" + "".join(f" --configfile {p}" for p in params_files[1:])
    if out.as_posix() != "dvc.yaml":
        regen += f" --out {out.as_posix()}"
    header = (
        "# GENERATED from the Snakemake DAG by `selora dvc-yaml` (src/selora/dag.py): do not edit.\n"
        f"# Regenerate after changing the rules, the grid (experiment), paths or base_model.name:\n"
        f"#     {regen}\n"
        "# One stage per Snakemake job: the same command (without the log redirection), inputs,\n"
        "# outputs and the params keys that change its Snakemake rerun hash (selora.dag.JOB_CONFIGS).\n"
    )
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=1000)
