"""Phases 5 and 6 of benchmarks/sd15.py (see its docstring): ``selora train`` against a
diffusers-style loop and ``selora sample`` against a plain pipeline call on an in-memory SD 1.5, and
the FID-Inception forward in float64 vs float32. Run through ``sd15.py``, not on their own."""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _sd15_model import Parts, shared_copy  # the sibling module (benchmarks/ is on sys.path)
from torch import nn

from selora import sd15
from selora.adapters.base import linear_modules
from selora.config import load_params


# ---- engine vs a diffusers-style loop -------------------------------------------------------------
def sd15_pipeline(base: Parts, vae: nn.Module, tokenizer: Any):
    """An in-memory StableDiffusionPipeline around a shared copy of the base (SD 1.5's scheduler)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    parts = shared_copy(base)
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae),
        text_encoder=parts["text_encoder"],
        tokenizer=tokenizer,
        unet=parts["unet"],
        scheduler=PNDMScheduler.from_config(sd15.SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def engine_setup(
    params_file: str, tmp: Path, batch_size: int, steps: int, size: int, threads: int
) -> tuple[Any, Any, Path]:
    """(params, run id, data folder) for ``selora train`` on a small synthetic CXR set."""
    from selora.runlayout import RunId
    from selora.synthetic import make_cxr

    data = tmp / "data"
    make_cxr(
        load_params(
            None,
            [
                f"synthetic.cxr.n_images={2 * steps * batch_size + 4}",
                f"synthetic.cxr.size={size}",
                "synthetic.cxr.splits.train=0.8",
                "synthetic.cxr.splits.validation=0.0",
                "synthetic.cxr.splits.test=0.2",
            ],
        ).synthetic.cxr,
        data,
        seed=0,
        progress=False,
    )
    params = load_params(
        params_file,
        [
            f"paths.results={tmp}/results",
            "train.device=cpu",
            "train.lr=1.0e-4",
            f"train.threads={threads}",
            "train.checkpoint_every=100000",
            f"setups.synthetic-cxr-32.size={size}",
            f"setups.synthetic-cxr-32.batch_size={batch_size}",
            f"setups.synthetic-cxr-32.max_steps={steps}",
            "setups.synthetic-cxr-32.epochs=1000",
            "sample.steps=2",
            "sample.batch_size=2",
        ],
    )
    return params, RunId("synthetic-cxr-32", "lora", "default", 0), data


@contextmanager
def patched_base(make_pipe: Callable[[], Any]) -> Iterator[None]:
    """``selora train`` / ``sample`` load their base through ``load_pipeline``; point it at SD 1.5.

    Their run identity names the base model by its files (``base_model_identity``); the in-memory
    SD 1.5 has none, so it is named by a constant instead of the params' ``base_model`` (which would
    demand a pre-trained miniature on disk). Hashing an on-disk base reads 64 sampled blocks per
    file: a fixed cost per call that this benchmark then leaves out.
    """
    import selora.engine.sample as sample_mod
    import selora.engine.train as train_mod
    import selora.runlayout as layout_mod

    def identity(params: Any) -> dict[str, Any]:
        return {"name": "sd15-random-in-memory"}

    def load(params: Any, torch_dtype: Any = None, progress: bool = True) -> Any:  # load_pipeline's
        return make_pipe()

    saved = (train_mod.load_pipeline, sample_mod.load_pipeline, layout_mod.base_model_identity,
             sample_mod.base_model_identity)
    train_mod.load_pipeline = sample_mod.load_pipeline = load
    layout_mod.base_model_identity = sample_mod.base_model_identity = identity
    try:
        yield
    finally:
        (train_mod.load_pipeline, sample_mod.load_pipeline, layout_mod.base_model_identity,
         sample_mod.base_model_identity) = saved


def engine_run(params: Any, run: Any, data: Path, out: Path) -> float:
    """Seconds per step of ``selora train`` (its own step clock: loop, hooks, logging)."""
    from selora.engine.train import train

    summary = train(params, run, data_dir=data, out_dir=out, progress=False)
    return summary["steps_time_s"] / summary["steps"]


def diffusers_loop(
    pipe: Any, params: Any, data: Path, steps: int, batch_size: int, size: int, seed: int = 0
) -> float:
    """Seconds per step of a minimal loop written as diffusers' ``train_text_to_image_lora.py``
    (peft adapters on every linear via ``add_adapter``, AdamW, ε-MSE), on the engine's data and
    latent draws."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from selora.engine.data import encode_rows, epoch_order
    from selora.imagefolder import read_manifest

    unet, text, vae = pipe.unet, pipe.text_encoder, pipe.vae
    rows = [r for r in read_manifest(data) if r["split"] == "train"]
    train_set = encode_rows(vae, pipe.tokenizer, rows, size, torch.device("cpu"))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for model in (unet, text, vae):
        model.requires_grad_(False)
    for model in (unet, text):
        cfg = LoraConfig(
            r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=sorted(linear_modules(model))
        )
        model.add_adapter(cfg)
        model.train()
    opt = torch.optim.AdamW(
        [p for m in (unet, text) for p in m.parameters() if p.requires_grad],
        lr=params.train.lr,
        betas=tuple(params.train.betas),
        weight_decay=params.train.weight_decay,
    )
    gen = torch.Generator().manual_seed(seed)
    order = epoch_order(len(train_set), seed, 0)
    scaling = float(vae.config.scaling_factor)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        mean, std = train_set.mean[idx], train_set.std[idx]
        latents = (mean + std * torch.randn(mean.shape, generator=gen)) * scaling
        noise = torch.randn(latents.shape, generator=gen)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        hidden = text(train_set.input_ids[idx])[0]
        pred = unet(
            scheduler.add_noise(latents, noise, timesteps), timesteps, encoder_hidden_states=hidden
        ).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps


def engine_vs_loop(
    base: Parts,
    params_file: str,
    tmp: Path,
    batch_size: int,
    steps: int,
    size: int,
    threads: int,
    do_sampling: bool,
) -> dict[str, Any]:
    """``selora train`` vs the diffusers-style loop, ABBA; then (optionally) sampling, ABBA."""
    from selora.tinysd import train_tokenizer

    params, run, data = engine_setup(params_file, tmp, batch_size, steps, size, threads)
    from selora.imagefolder import read_manifest

    rows = read_manifest(data)
    tokenizer = train_tokenizer([r["text"] for r in rows], 1000, 77)
    vae = sd15.build_vae()
    engine_s, loop_s = [], []
    with patched_base(lambda: sd15_pipeline(base, vae, tokenizer)):
        for k, which in enumerate(("engine", "loop", "loop", "engine")):
            if which == "engine":
                engine_s.append(engine_run(params, run, data, tmp / f"run{k}"))
            else:
                loop_s.append(
                    diffusers_loop(sd15_pipeline(base, vae, tokenizer), params, data, steps, batch_size, size)
                )
            gc.collect()
        out: dict[str, Any] = {
            "engine_s_per_step": [round(s, 3) for s in engine_s],
            "diffusers_loop_s_per_step": [round(s, 3) for s in loop_s],
            "engine_vs_diffusers_loop": round(sum(loop_s) / sum(engine_s), 4),
            "steps_per_block": steps,
            "batch_size": batch_size,
            "image_px": size,
        }
        if do_sampling:
            out["sampling"] = sampling(
                params, run, data, tmp / "run3", lambda: sd15_pipeline(base, vae, tokenizer)
            )
    return out


def sampling(
    params: Any, run: Any, data: Path, run_root: Path, make_pipe: Callable[[], Any]
) -> dict[str, Any]:
    """``selora sample`` (end to end: pipeline, LoRA file, PNGs, manifest) vs the same pipeline built
    the same way and called directly on the same prompts and seeds; ABBA."""
    import shutil

    from selora.engine.sample import build_pipeline, sample
    from selora.imagefolder import read_manifest

    tests = [r for r in read_manifest(data) if r["split"] == "test"]
    scfg = params.sample
    size = params.setup(run.setup).size
    adapter_dir = run_root / "train" / "adapter" / "best"

    def ours() -> None:
        shutil.rmtree(run_root / "samples", ignore_errors=True)
        sample(params, run, data_dir=data, out_dir=run_root, progress=False)

    def plain() -> None:
        pipe = build_pipeline(params, adapter_dir, torch.device("cpu"))
        for start in range(0, len(tests), scfg.batch_size):
            batch = tests[start : start + scfg.batch_size]
            gens = [torch.Generator().manual_seed(scfg.seed + start + j) for j in range(len(batch))]
            with torch.no_grad():
                pipe(
                    [r["text"] for r in batch],
                    height=size,
                    width=size,
                    num_inference_steps=scfg.steps,
                    guidance_scale=scfg.guidance_scale,
                    guidance_rescale=scfg.guidance_rescale,
                    generator=gens,
                )

    times: dict[str, list[float]] = {"selora_sample": [], "pipeline_call": []}
    for which in ("selora_sample", "pipeline_call", "pipeline_call", "selora_sample"):
        t0 = time.perf_counter()
        (ours if which == "selora_sample" else plain)()
        times[which].append(time.perf_counter() - t0)
    return {
        "s": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
        "images": len(tests),
        "inference_steps": scfg.steps,
        "image_px": size,
        "sample_vs_pipeline_call": round(sum(times["pipeline_call"]) / sum(times["selora_sample"]), 4),
    }


# ---- Inception in float64 vs float32 -----------------------------------------------------------------
def random_inception(path: Path) -> Path:
    """A torch-fidelity FID-Inception state dict with random weights (the real one is a download)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():  # variance-preserving draws: default ones shrink features to ~0 in 90 layers
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def inception_dtypes(tmp: Path, n_images: int, rounds: int = 2) -> dict[str, Any]:
    """Images/s of the FID-Inception forward (taps 64 and 2048) in float64, the project's choice, and
    float32, and the FIDs of one pair of image sets computed from each."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from selora.metrics.frechet import fid

    weights = random_inception(tmp / "inception.pth")
    nets = {
        dt: FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["64", "2048"],
            feature_extractor_weights_path=str(weights),
            feature_extractor_internal_dtype=dt,
        ).eval()
        for dt in ("float64", "float32")
    }
    # torch-fidelity's text_to_dtype maps "float64" to torch.float32, so asking for float64 runs in
    # float32; cast by hand to measure what float64 would cost
    asked = str(next(nets["float64"].parameters()).dtype)
    nets["float64"].double()
    nets["float64"].feature_extractor_internal_dtype = torch.float64
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (n_images, 3, 64, 64), generator=gen, dtype=torch.uint8)
    fake = (real.float() * 0.7 + 40).clamp(0, 255).to(torch.uint8)
    times: dict[str, list[float]] = {dt: [] for dt in nets}
    feats: dict[str, dict[str, list[torch.Tensor]]] = {}
    for r in range(rounds):
        for dt in list(nets)[r % 2 :] + list(nets)[: r % 2]:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = [nets[dt](x) for x in (real, fake)]
            times[dt].append(time.perf_counter() - t0)
            feats[dt] = {
                tap: [o[k].reshape(n_images, -1).double() for o in out]
                for k, tap in enumerate(("64", "2048"))
            }
    ips = {dt: round(2 * n_images * rounds / sum(ts), 2) for dt, ts in times.items()}
    fids = {tap: {dt: fid(*feats[dt][tap]) for dt in nets} for tap in ("64", "2048")}
    f64, f32 = feats["float64"]["2048"][0], feats["float32"]["2048"][0]
    return {
        "images_per_s": ips,
        "float64_vs_float32_throughput": round(ips["float64"] / ips["float32"], 4),
        "fid": {tap: {dt: round(v, 6) for dt, v in d.items()} for tap, d in fids.items()},
        "fid_abs_difference": {tap: float(abs(d["float64"] - d["float32"])) for tap, d in fids.items()},
        "feature_max_rel_difference": float((f64 - f32).abs().max() / f64.abs().max()),
        "images": n_images,
        "image_px": 64,
        "weights": "random (torch-fidelity format, Kaiming-normal)",
        "torch_fidelity_float64_request_runs_in": asked,
    }
