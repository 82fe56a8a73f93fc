# Helpers shared by every phase file: the params files handed to `selora`, the run grid, paths.
import os
import shlex
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from selora import dag
from selora.config import method_names, params_from_dict
from selora.data.synthetic import NAME as SYNTHETIC
from selora.runlayout import grid

# The same params files Snakemake merged into `config`, in its precedence order (the Snakefile's
# `configfile:` first, then every --configfile), for every `selora` call (later files win there too),
# then every --config override (Snakefile) as `--set KEY=VALUE`.
# (Snakemake makes --configfile paths absolute; dag.relative writes them relative to the working
# directory, so the commands, and dvc.yaml's, do not name the folder the workflow happened to run in.)
PARAMS_FILES = ["params.yaml", *(dag.relative(p) for p in workflow.overwrite_configfiles)]
# (Params are a rerun trigger of their own; while an override is given, every job's command
# changes and Snakemake reruns it; `selora train` then reuses a finished run whose config is unchanged.)
PARAMS_ARGS = " ".join(
    [f"--params {shlex.quote(p)}" for p in PARAMS_FILES] + [f"--set {shlex.quote(o)}" for o in OVERRIDES]
)

# With --sdm conda each rule runs in a conda env built from environment.yml, which holds the pinned
# dependencies but not this package (an env file cannot name the checkout it sits in): there,
# `selora` runs this checkout's source.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    shell.prefix(dag.conda_shell_prefix(Path(workflow.basedir) / "src"))

# Cross-field checks (unknown setups, missing raw folders, ablation points) before any job starts.
P = params_from_dict(config)
RUNS = grid(P)

DATA = P.paths.data
MODELS = P.paths.models
RESULTS = P.paths.results
LOGS = f"{RESULTS}/logs"
SYNTHETIC_RAW = f"{DATA}/raw/{SYNTHETIC}"  # the synthetic CXR set `selora make-synthetic` writes
ENV = "../../environment.yml"
RUN = f"{RESULTS}/runs/{{setup}}/{{method}}/{{variant}}/seed{{seed}}"

# GPU jobs only when the params ask for a GPU; the embedded default trains on the CPU.
GPU = 0 if P.train.device == "cpu" else 1
TRAIN_THREADS = P.train.threads or (1 if GPU == 0 else 4)


wildcard_constraints:
    setup="[^/]+",
    method="|".join(method_names()),  # the registered methods (selora.adapters.base)
    variant="default|threshold-[0-9.]+|test_interval-[0-9]+",
    seed="[0-9]+",


def job_hash(rule):
    """The hash of what a job's result depends on, as selora.dag.JOB_CONFIGS says, for `params`.
    Snakemake's params rerun trigger reruns exactly the jobs whose hash changed; dvc.yaml lists
    the same keys."""
    return lambda wildcards: dag.job_hash(rule, config, dict(wildcards.items()))


def local_folders(*names):
    """The names that are folders here (a local SD 1.5, `selora rehearsal-assets`' random weights):
    inputs, so that rebuilding one reruns what used it. A hub id is not tracked: pin
    base_model.revision instead."""
    return [str(Path(n).expanduser()) for n in names if n and Path(n).expanduser().exists()]


def base_model_input():
    """The pre-trained miniature when base_model.name is 'tiny', else the base model's folder."""
    return [f"{MODELS}/tiny-sd"] if P.base_model.name == "tiny" else local_folders(P.base_model.name)


def metric_input():
    """The metric networks' local weights (FID Inception file or folder, CLIP folder), if any."""
    return local_folders(P.evaluate.inception_weights, P.evaluate.clip_model)


def natural_input():
    """The natural scenes the domain probe is fitted against (evaluate.natural_reference), if set:
    make_synthetic writes the embedded ones first, and rewriting them refits the reference."""
    natural = P.evaluate.natural_reference
    return [os.path.normpath(os.path.expanduser(natural))] if natural else []


def raw_input(wildcards):
    """The raw folder of a setup's data set: generated for the synthetic CXR set, the user's otherwise."""
    dataset = P.setup(wildcards.setup).dataset
    if dataset == SYNTHETIC:
        return SYNTHETIC_RAW
    return P.datasets.get(dataset).raw


def run_paths(leaf):
    """`leaf` (e.g. 'train/summary.json') inside every run folder of the grid."""
    return [f"{RESULTS}/runs/{r.relpath}/{leaf}" for r in RUNS]


def final_targets():
    return [f"{RESULTS}/tables", f"{RESULTS}/figures"]
