"""Fixed, predictable output paths: the contract between the phases.

No timestamped folders. Each training run is identified by (setup, method, variant, seed)::

    <results>/runs/<setup>/<method>/<variant>/seed<seed>/
        train/
            adapter/best/pytorch_lora_weights.safetensors   standard LoRA file (best validation epoch)
            adapter/best/ranks.json                          part → module → rank
            adapter/last/...                                 the same for the last step
            checkpoint/state.pt, checkpoint/best/            full resumable state (atomic, with its
                                                             checksum; state.prev.pt: the one before)
                                                             and the best adapter so far (published
                                                             at the end); every adapter folder has a
                                                             SHA256SUMS written last
            quarantine/<time>-<pid>/                         corrupt checkpoint files moved aside
            logs/steps.csv          step, epoch, loss, lr          (no wall clock: kept bit-identical)
            logs/validation.csv     epoch, step, val_loss, is_best (epoch -1 = the untouched base)
            logs/memory.csv         step, device, peak_mb        (every train.memory_every steps)
            logs/ranks.csv          step, part, module, rank, fi_ratio   (rank map over time)
            logs/parameters.csv     part, base_parameters, trainable_parameters, effective_parameters,
                                    trainable_percent, effective_percent, adapted_layers
            summary.json            provenance + run id + best_epoch, best_val_loss, steps, epochs,
                                    train_time_s, peak/mean memory, final rank map
        samples/
            images/*.png
            manifest.jsonl          file_name (inside images/), prompt, source_id, real_image, labels,
                                    seed, k
            summary.json
        metrics.json                FID 64/192/2048 (+ feature space), KID, CLIP score, finding accuracy
        features.safetensors        generated images' final-tap features + their test-prompt rows
                                    (for the report's bootstrap over test images)

The untouched base model ("no adapter", the reference every adapter must beat) is sampled and
evaluated like a run, once per setup, at ``<results>/runs/<setup>/none/default/seed0/`` (no
``train/``; it has no training seed, and its images use the same sampling seeds as every run).

Per setup, ``selora evaluate --fit-reference`` writes the evaluation reference every run of that
setup is scored against: ``<results>/reference/<setup>/`` (reference.json, real test features,
reference network); ``selora report`` writes ``<results>/tables/`` and ``<results>/figures/``.

A *variant* names a SeLoRA ablation point: ``default`` (params as given), ``threshold-1.3`` (λ) or
``test_interval-80`` (t). Prepared data live at ``<data>/prepared/<setup>/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selora.config import Params
from selora.errors import ConfigError

DEFAULT_VARIANT = "default"
ABLATION_KEYS = ("threshold", "test_interval")
NO_ADAPTER = "none"  # the method name of the untouched base model's run


@dataclass(frozen=True)
class RunId:
    setup: str
    method: str
    variant: str
    seed: int

    @property
    def relpath(self) -> str:
        return f"{self.setup}/{self.method}/{self.variant}/seed{self.seed}"


def run_id_from_path(path: str | Path, what: str = "run folder") -> RunId:
    """The run a folder ``.../<setup>/<method>/<variant>/seed<N>`` holds: the inverse of
    :attr:`RunId.relpath`, kept beside it so one module knows the layout. ``what`` names the path in
    the error (e.g. the command-line option it came from). The setup is not checked against params."""
    parts = Path(path).resolve().parts
    if len(parts) < 4 or not parts[-1].startswith("seed") or not parts[-1][4:].lstrip("-").isdigit():
        raise ConfigError(f"{what} {path}: expected .../<setup>/<method>/<variant>/seed<N>")
    return RunId(parts[-4], parts[-3], parts[-2], int(parts[-1][4:]))


def variant_name(key: str, value: float | int) -> str:
    """``threshold-1.3``, ``test_interval-80`` (``str(value)``, as DVC's templating renders it)."""
    return f"{key}-{value}"


def variant_overrides(method: str, variant: str) -> list[str]:
    """``KEY=VALUE`` overrides that turn the base params into this variant's params."""
    if variant == DEFAULT_VARIANT:
        return []
    key, _, value = variant.partition("-")
    if key not in ABLATION_KEYS or not value:
        raise ConfigError(
            f"variant {variant!r}: expected 'default' or '<key>-<value>' with key in {ABLATION_KEYS}"
        )
    from selora.adapters.base import proposed_method

    proposed = proposed_method()
    if method != proposed:
        raise ConfigError(f"variant {variant!r} only applies to {proposed}, not {method}")
    return [f"methods.{proposed}.{key}={value}"]


def run_dir(params: Params, run: RunId) -> Path:
    return Path(params.paths.results) / "runs" / run.relpath


def prepared_dir(params: Params, setup: str) -> Path:
    params.setup(setup)  # validates the name
    return Path(params.paths.data) / "prepared" / setup


def grid(params: Params) -> list[RunId]:
    """Every run the experiment needs: the main grid, then the ablation points (whose base point,
    the proposed method's own λ and t, is the main grid's run of it)."""
    from selora.adapters.base import proposed_method

    runs: list[RunId] = []
    exp = params.experiment
    for setup in exp.setups:
        for method in exp.methods:
            for seed in exp.seeds:
                runs.append(RunId(setup, method, DEFAULT_VARIANT, seed))
    abl = exp.ablation
    for setup in abl.setups:
        for key in ABLATION_KEYS:
            for value in getattr(abl, key):
                for seed in abl.seeds:
                    runs.append(RunId(setup, proposed_method(), variant_name(key, value), seed))
    return runs


def no_adapter_run(setup: str) -> RunId:
    """The base model's run of ``setup``: seed 0 by convention (nothing is trained, so no seed)."""
    return RunId(setup, NO_ADAPTER, DEFAULT_VARIANT, 0)


def no_adapter_runs(params: Params) -> list[RunId]:
    """One no-adapter run per main setup when ``experiment.no_adapter`` is on (the default)."""
    if not params.experiment.no_adapter:
        return []
    return [no_adapter_run(s) for s in params.experiment.setups]


def no_adapter_sample_config(params: Params, setup: str) -> dict[str, Any]:
    """Everything that decides the base model's samples (no method, no training)."""
    return {
        "run": {"setup": setup, "method": NO_ADAPTER, "variant": DEFAULT_VARIANT, "seed": 0},
        "base_model": params.raw["base_model"],
        "setup": params.raw["setups"][setup],
        "mixed_precision": params.raw["train"]["mixed_precision"],
        "sample": params.raw["sample"],
    }


def run_config(params: Params, run: RunId) -> dict[str, Any]:
    """Everything that decides a training run's result. A checkpoint or summary made with another
    configuration is not resumed from or reused, and the workflow reruns the job when it changes."""
    return {
        "run": {"setup": run.setup, "method": run.method, "variant": run.variant, "seed": run.seed},
        "base_model": params.raw["base_model"],
        "setup": params.raw["setups"][run.setup],
        "method": params.raw["methods"][run.method],
        "train": {k: v for k, v in params.raw["train"].items() if k not in ("checkpoint_every", "threads")},
    }


def data_identity(data_dir: str | Path) -> str:
    """Content digest of a prepared set: its manifests and every image they list (not the data
    report, whose provenance changes on every preparation). The manifests carry no per-image
    digests, so the images are read; a prepared set is small next to one training run."""
    from selora.imagefolder import MANIFEST, SPLITS, read_manifest
    from selora.io import tree_digest

    root = Path(data_dir)
    rows = read_manifest(root)  # clear error when the folder is not a prepared set
    files = [root / s / MANIFEST for s in SPLITS if (root / s / MANIFEST).is_file()]
    return tree_digest(root, files + [Path(r["path"]) for r in rows])[:32]


# The pipeline components selora loads (load_pipeline drops the safety checker).
_BASE_COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "unet", "vae")


def base_model_identity(params: Params) -> dict[str, Any]:
    """What the base model's weights are, not only its name: a local folder by the digest of
    model_index.json and its loaded components' files (multi-GB files sampled, see
    :func:`selora.io.tree_digest`), a hub id by the commit of its cached snapshot."""
    from selora.basemodel import resolve_base
    from selora.io import tree_digest

    source = resolve_base(params)
    path = Path(source)
    if path.is_dir():
        files = [path / "model_index.json"]
        for component in _BASE_COMPONENTS:
            files += [f for f in (path / component).rglob("*") if f.is_file()]
        return {"folder": True, "digest": tree_digest(path, files, sample_above=64 << 20)[:32]}
    commit = None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "model_index.json", revision=params.base_model.revision)
        if isinstance(cached, str):
            commit = Path(cached).parent.name  # .../snapshots/<commit>/model_index.json
    except ImportError:  # pragma: no cover - diffusers depends on huggingface_hub
        pass
    return {"hub": source, "revision": params.base_model.revision, "commit": commit}


def run_identity(params: Params, run: RunId, data_dir: str | Path) -> dict[str, Any]:
    """Everything a training run's result depends on: :func:`run_config` (the params), the
    top-level seed (validation draws), and what the prepared data and the base model *are*. A
    checkpoint or summary with another identity is never resumed from or reused. A ``cpu_isa`` pin
    is part of it while set (other kernels, other bits), and absent otherwise, so that runs made
    before the key existed keep their identity."""
    pin = {"cpu_isa": params.cpu_isa} if params.cpu_isa is not None else {}
    return {
        "config": config_hash(run_config(params, run)),
        "seed": params.seed,
        "data": data_identity(data_dir),
        "base_model": base_model_identity(params),
        **pin,
    }


def sample_config(params: Params, run: RunId) -> dict[str, Any]:
    return {**run_config(params, run), "sample": params.raw["sample"]}


def config_hash(cfg: Any) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
