"""``selora train``: fine-tune one adapter on one prepared data set (paper Section 3.5, Table 4).

Reads top to bottom like diffusers' ``train_text_to_image_lora.py``: :func:`train` calls one named
phase per step below, in the order they run. The method-specific parts are the adapter's hooks
(:mod:`selora.adapters.base`), so there is no ``if method == ...``:

0. outputs: leftovers of killed writes removed; a finished run of the same identity is reused;
1. base model (``tiny`` or any diffusers Stable Diffusion) with everything frozen;
2. data: the prepared set, latents encoded once by the frozen VAE, prompts truncated to 77 tokens;
3. the adapter in every linear layer of the U-Net and the text encoder, none in the VAE;
4. the resume point: the last checkpoint, when it is verified and was written for the same params,
   data, base model and seeds (:func:`selora.runlayout.run_identity`); its adapter is restored;
5. the optimiser, Adam with ``train.lr``, ``train.betas`` and ``train.weight_decay`` from the params
   (Table 4's values, but for ``train.lr``: see params.yaml), the LR schedule ``train.lr_schedule``
   and fp16 loss scaling; then the rest of the checkpoint's state (:class:`selora.engine.state.TrainState`);
6. the loop (:mod:`selora.engine.loop`): ε-prediction MSE, adapter hooks, logs, peak memory and
   checkpoints; before training, "epoch -1", the untouched base's validation loss;
7. after each epoch: validation loss on fixed (noise, timestep) draws; the best epoch's adapter is
   exported as a standard LoRA file (``adapter/best``); with no validation split the last is kept;
8. the end (:mod:`selora.engine.publish`): best and last adapters, logs, parameter table and a
   summary with provenance.

Nothing from an earlier process is trusted unchecked: the summary, the checkpoint and every adapter
folder are checked against the run's identity and their checksums, and what fails is discarded
(stale) or moved to ``train/quarantine`` (corrupt).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from selora.adapters import create_adapter
from selora.adapters.base import Adapter
from selora.basemodel import load_pipeline
from selora.config import Params, Setup, TrainConfig
from selora.engine.data import batches_per_epoch, encode_rows, tokenize, validation_draws
from selora.engine.device import resolve_device, use_threads
from selora.engine.loop import Data, Model, TrainingDiverged, run_epochs, validation_loss
from selora.engine.publish import finished_summary, publish, summarise
from selora.engine.state import Target, TrainState, resume_point
from selora.errors import DatasetFormatError
from selora.imagefolder import read_manifest
from selora.io import Provenance, report_leftovers, write_json
from selora.runlayout import RunId

FUSED_ADAM = ("cpu", "cuda")  # devices with torch's fused Adam kernel

__all__ = ["TrainingDiverged", "train"]


def train(params: Params, run: RunId, *, data_dir: str | Path | None = None,
          out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one run; returns its summary. Resumes from ``train/checkpoint`` when present."""
    t0 = time.perf_counter()
    setup, tcfg = params.setup(run.setup), params.train
    target = Target.of(params, run, data_dir, out_dir)

    # 0. Remove what killed writes left (also inside the declared outputs adapter/ and logs/); a
    #    finished run of the same identity whose adapters check out is not trained again.
    report_leftovers(target.out)
    done = finished_summary(target.out, target.identity_hash)
    if done is not None:
        return done
    prov = Provenance("train", params.raw)
    device, autocast = set_up_torch(tcfg, run.seed)

    # 1. Base model: VAE, text encoder, U-Net, all frozen (the adapter adds what trains).
    pipe = load_pipeline(params, progress=progress)
    model = freeze_base(pipe, device, autocast)

    # 2. Data: the prepared set; latents encoded once, prompts truncated by the tokenizer.
    data = load_data(pipe, model, target.data_dir, setup, tcfg, params.seed, progress)
    del pipe  # the VAE and the tokenizer have done their part

    # 3. The adapter, in every linear layer of the U-Net and the text encoder.
    adapter = build_adapter(params, run, model, data.total_steps, tcfg.gradient_checkpointing)

    # 4. The resume point. Its adapter is restored first: resumed SeLoRA layers have grown, so the
    #    optimiser must be built on the restored parameters.
    saved = resume_point(target)
    if saved is not None:
        TrainState.restore_adapter(adapter, saved)

    # 5. Optimiser (Adam, Table 4), its LR schedule, fp16 loss scaling, the data generator;
    #    then the rest of the saved state: optimiser, schedules, RNG, data position, logs.
    state = TrainState.start(target, adapter, *build_optimiser(adapter, tcfg, device, data.total_steps),
                             rng=torch.Generator().manual_seed(run.seed))
    if saved is not None:
        state.restore(saved)
    elif data.draws is not None:  # the untouched base (every adapter starts as the identity)
        state.logs.add("validation", epoch=-1, step=0, val_loss=validation_loss(model, data),
                       is_best=False)

    # 6.–7. The loop; after each epoch, validation on fixed draws and the best epoch's adapter.
    run_epochs(state, model, data, tcfg, seed=run.seed, ckpt_dir=target.checkpoint_dir,
               desc=f"train {run.relpath}", progress=progress)

    # 8. The end: publish the best and last adapters, logs, parameters, summary (written last).
    publish(params, run, target, state, data)
    summary = summarise(target, state, data, device, prov, t0)
    write_json(target.out / "summary.json", summary)
    return summary


def set_up_torch(tcfg: TrainConfig, seed: int) -> tuple[torch.device, torch.autocast]:
    """The device, torch's threads and global seed, and the autocast of ``train.mixed_precision``."""
    device = resolve_device(tcfg.device)
    use_threads(tcfg.threads)
    torch.manual_seed(seed)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(tcfg.mixed_precision)
    return device, torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def freeze_base(pipe: Any, device: torch.device, autocast: torch.autocast) -> Model:
    """Every base weight frozen; the U-Net and text encoder are what the adapter will train in."""
    from diffusers import DDPMScheduler

    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    for module in (pipe.vae, *parts.values()):
        module.requires_grad_(False)
    return Model(parts, DDPMScheduler.from_config(pipe.scheduler.config),
                 float(pipe.vae.config.scaling_factor), device, autocast)


def load_data(pipe: Any, model: Model, data_dir: Path, setup: Setup, tcfg: TrainConfig, seed: int,
              progress: bool) -> Data:
    """The train and validation splits encoded by the frozen VAE, the fixed validation draws
    (``train.val_draws`` per image, from the top-level seed) and the run's length in steps."""
    device, vae, tokenizer = model.device, pipe.vae.to(model.device), pipe.tokenizer
    rows = read_manifest(data_dir)
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "validation"]
    if not train_rows:
        raise DatasetFormatError(f"{data_dir}: no training images")
    train_set = encode_rows(vae, tokenizer, train_rows, setup.size, device, progress=progress,
                            desc="encode train")
    val_set = encode_rows(vae, tokenizer, val_rows, setup.size, device) if val_rows else None
    timesteps = model.scheduler.config.num_train_timesteps
    draws = validation_draws(val_set, tcfg.val_draws, timesteps, seed) if val_set is not None else None
    steps_per_epoch = batches_per_epoch(len(train_set), setup.batch_size)
    total_steps = steps_per_epoch * setup.epochs
    if setup.max_steps:
        total_steps = min(total_steps, setup.max_steps)
    epochs = (total_steps + steps_per_epoch - 1) // steps_per_epoch
    return Data(train_set, val_set, draws, setup.batch_size, steps_per_epoch, total_steps, epochs,
                tcfg.timesteps, tcfg.caption_dropout, tokenize(tokenizer, [""])[0])


def build_adapter(params: Params, run: RunId, model: Model, total_steps: int,
                  gradient_checkpointing: bool) -> Adapter:
    """The method's adapter attached to the U-Net and the text encoder, which move to the device."""
    seed = run.seed if params.train.adapter_seed is None else params.train.adapter_seed
    adapter = create_adapter(run.method, params.methods.get(run.method), seed=seed)
    adapter.attach(model.parts, total_steps)
    for module in model.parts.values():
        module.to(model.device).train()
    if gradient_checkpointing:
        model.parts["unet"].enable_gradient_checkpointing()  # diffusers: non-reentrant
        # Reentrant checkpointing would silently freeze the text encoder's adapters (its inputs
        # do not require grad), so ask for the non-reentrant kind explicitly.
        model.parts["text_encoder"].gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    return adapter


def build_optimiser(adapter: Adapter, tcfg: TrainConfig, device: torch.device, total_steps: int) -> tuple[
        torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.amp.GradScaler]:
    """Adam on the adapter's trainable parameters (Table 4), the LR schedule ``train.lr_schedule``
    (diffusers' ``get_scheduler``: constant, or decayed to 0 over ``total_steps``; transformers'
    warmup-stable-decay for ``wsd``), fp16 loss scaling.

    Adam's fused kernel (CPU and CUDA) updates the ~200 small adapter matrices in one call instead of
    one per tensor: the same update, 3.5× faster on the miniature's LoRA (benchmarks/optimiser.py).
    """
    optimizer = torch.optim.Adam(adapter.trainable_parameters(), lr=tcfg.lr, betas=tuple(tcfg.betas),
                                 weight_decay=tcfg.weight_decay, fused=device.type in FUSED_ADAM)
    if tcfg.lr_schedule == "wsd":
        from transformers.optimization import get_wsd_schedule

        decay = round(tcfg.lr_decay_fraction * total_steps)
        lr_scheduler = get_wsd_schedule(optimizer, num_warmup_steps=0, num_decay_steps=decay,
                                        num_training_steps=total_steps, decay_type="linear")
    else:
        from diffusers.optimization import get_scheduler

        lr_scheduler = get_scheduler(tcfg.lr_schedule, optimizer, num_warmup_steps=0,
                                     num_training_steps=total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.mixed_precision == "fp16")
    return optimizer, lr_scheduler, scaler
