# Helpers shared by every phase file: the params files handed to `selora`, the run grid, paths.
import shlex
from pathlib import Path

from selora.config import params_from_dict
from selora.runlayout import RunId, config_hash, grid, run_config, sample_config, variant_overrides

# The same params files Snakemake merged into `config`, in its precedence order (the Snakefile's
# `configfile:` first, then every --configfile), for every `selora` call (later files win there too).
PARAMS_FILES = ["params.yaml", *(str(p) for p in workflow.overwrite_configfiles)]
PARAMS_ARGS = " ".join(f"--params {shlex.quote(p)}" for p in PARAMS_FILES)

# Cross-field checks (unknown setups, missing raw folders, ablation points) before any job starts.
P = params_from_dict(config)
RUNS = grid(P)

DATA = P.paths.data
MODELS = P.paths.models
RESULTS = P.paths.results
LOGS = f"{RESULTS}/logs"
ENV = "../../environment.yml"
RUN = f"{RESULTS}/runs/{{setup}}/{{method}}/{{variant}}/seed{{seed}}"

# GPU jobs only when the params ask for a GPU; the embedded default trains on the CPU.
GPU = 0 if P.train.device == "cpu" else 1
TRAIN_THREADS = P.train.threads or (1 if GPU == 0 else 4)


wildcard_constraints:
    setup="[^/]+",
    method="lora|adalora|dylora|selora",
    variant="default|threshold-[0-9.]+|test_interval-[0-9]+",
    seed="[0-9]+",


def _run(wildcards):
    params = params_from_dict(config, variant_overrides(wildcards.method, wildcards.variant))
    return params, RunId(wildcards.setup, wildcards.method, wildcards.variant, int(wildcards.seed))


def trained_on(wildcards):
    """Hash of the params a training run depends on: Snakemake's `params` rerun trigger reruns
    exactly the jobs whose hash changed when params.yaml is edited."""
    return config_hash(run_config(*_run(wildcards)))


def sampled_with(wildcards):
    return config_hash(sample_config(*_run(wildcards)))


def depends(*keys):
    """A rule param hashing the config sections a phase depends on (`{setup}` is filled in)."""

    def value(wildcards):
        picked = {}
        for key in keys:
            node = config
            for part in key.format(**dict(wildcards.items())).split("."):
                node = node[part]
            picked[key] = node
        return config_hash(picked)

    return value


def dataset_of(wildcards):
    return config["datasets"][config["setups"][wildcards.setup]["dataset"]]


def base_model_input():
    """The pre-trained miniature when base_model.name is 'tiny'; nothing for SD 1.5 and friends."""
    return [f"{MODELS}/tiny-sd"] if P.base_model.name == "tiny" else []


def raw_input(wildcards):
    """The raw folder of a setup's data set: generated for synthetic-cxr, the user's otherwise."""
    dataset = P.setup(wildcards.setup).dataset
    if dataset == "synthetic-cxr":
        return f"{DATA}/raw/synthetic-cxr"
    return P.datasets.get(dataset).raw


def run_paths(leaf):
    """`leaf` (e.g. 'train/summary.json') inside every run folder of the grid."""
    return [f"{RESULTS}/runs/{r.relpath}/{leaf}" for r in RUNS]


def final_targets():
    return [f"{RESULTS}/tables", f"{RESULTS}/figures"]
