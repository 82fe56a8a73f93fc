# Helpers shared by every phase file: the params files handed to `selora`, and path helpers.
import shlex
from pathlib import Path

# The same params files Snakemake merged into `config`, in the same order, for every `selora` call.
PARAMS_FILES = [str(p) for p in (workflow.configfiles or ["params.yaml"])]
PARAMS_ARGS = " ".join(f"--params {shlex.quote(p)}" for p in PARAMS_FILES)

DATA = config["paths"]["data"]
MODELS = config["paths"]["models"]
RESULTS = config["paths"]["results"]
LOGS = f"{RESULTS}/logs"
ENV = "../../environment.yml"


def base_model_input():
    """The pre-trained miniature when base_model.name is 'tiny'; nothing for SD 1.5 and friends."""
    if config["base_model"]["name"] == "tiny":
        return [f"{MODELS}/tiny-sd"]
    return []


def final_targets():
    return [f"{DATA}/raw/synthetic-cxr", *base_model_input()]
