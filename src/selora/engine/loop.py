"""The training loop (paper Section 3.5): ε-prediction MSE through the adapter's hooks, logs, peak
memory and checkpoints every so many steps, and after each epoch the validation loss on fixed
(noise, timestep) draws, the best epoch's adapter kept.

Everything that changes while it runs lives in :class:`selora.engine.state.TrainState`, so that a
run killed at any instant and resumed from its checkpoint ends byte-identical to one never stopped.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selora.config import TrainConfig
from selora.diffusion import prediction_target
from selora.engine.data import LatentSet, ValidationDraws, epoch_order
from selora.engine.device import memory_mb
from selora.engine.publish import export_adapter
from selora.engine.state import TrainState
from selora.errors import SeloraError

FAULT_KILL_ENV = "SELORA_FAULT_KILL_AFTER_STEP"  # testing hook: SIGKILL self after this step


class TrainingDiverged(SeloraError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Model:
    """The base model's trainable path (U-Net and text encoder, adapted) and how it runs."""

    parts: dict[str, torch.nn.Module]
    scheduler: Any  # diffusers' DDPMScheduler: noise schedule and targets
    scaling: float  # the VAE's latent scaling factor
    device: torch.device
    autocast: torch.autocast


@dataclass
class Data:
    """The encoded splits, the fixed validation draws (None without a validation split) and the
    run's length; the last partial batch of an epoch is kept."""

    train: LatentSet
    val: LatentSet | None
    draws: ValidationDraws | None
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    timesteps: str = "uniform"  # train.timesteps: how a batch's timesteps are drawn
    caption_dropout: float = 0.0  # train.caption_dropout: share of captions replaced by the empty prompt
    empty_ids: torch.Tensor | None = None  # [L] the empty prompt's token ids


def diffusion_loss(model: Model, latents: torch.Tensor, input_ids: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor) -> torch.Tensor:
    """The MSE between the U-Net's prediction and its target (ε, or v for v-prediction models)."""
    scheduler, device = model.scheduler, model.device
    latents, input_ids = latents.to(device), input_ids.to(device)
    noise, timesteps = noise.to(device), timesteps.to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = prediction_target(scheduler, latents, noise, timesteps)
    with model.autocast:
        hidden = model.parts["text_encoder"](input_ids)[0]
        pred = model.parts["unet"](noisy, timesteps, encoder_hidden_states=hidden).sample
    return F.mse_loss(pred.float(), target.float())


@torch.no_grad()
def validation_loss(model: Model, data: Data) -> float:
    """Mean loss over the fixed draws, with the adapter in eval mode (DyLoRA: full rank)."""
    val, draws, size = data.val, data.draws, data.batch_size
    assert val is not None and draws is not None, "no validation split"
    for m in model.parts.values():
        m.eval()
    total, n = 0.0, 0
    for i in range(0, len(draws.index), size):
        idx, sl = draws.index[i:i + size], slice(i, i + size)
        latents = (val.mean[idx] + val.std[idx] * draws.latent_eps[sl]) * model.scaling
        loss = diffusion_loss(model, latents, val.input_ids[idx], draws.noise[sl], draws.timesteps[sl])
        total += loss.item() * len(idx)
        n += len(idx)
    for m in model.parts.values():
        m.train()
    return total / n


def run_epochs(state: TrainState, model: Model, data: Data, tcfg: TrainConfig, *, seed: int,
               ckpt_dir: Path, desc: str, progress: bool) -> None:
    """Train from ``state``'s position to the end: checkpoints every ``train.checkpoint_every``
    steps and after each epoch, peak memory every ``train.memory_every`` steps."""
    kill_after = int(os.environ.get(FAULT_KILL_ENV, "-1"))
    bar = tqdm(total=data.total_steps, initial=state.step, desc=desc, disable=not progress)
    t_epoch = time.perf_counter()
    while state.epoch < data.epochs:
        order = epoch_order(len(data.train), seed, state.epoch)
        while state.batch < data.steps_per_epoch and state.step < data.total_steps:
            t_step = time.perf_counter()
            first = state.batch * data.batch_size
            train_step(state, model, data, order[first:first + data.batch_size], ckpt_dir)
            state.clock["steps_s"] += time.perf_counter() - t_step
            bar.update(1)
            if state.step % tcfg.memory_every == 0:
                state.logs.add("memory", step=state.step, device=model.device.type,
                               peak_mb=memory_mb(model.device))
            if state.step % tcfg.checkpoint_every == 0:
                state.save(ckpt_dir)
            if state.step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        end_epoch(state, model, data, ckpt_dir)
        state.timing.append({"epoch": state.epoch, "wall_s": round(time.perf_counter() - t_epoch, 3)})
        t_epoch = time.perf_counter()
        state.epoch, state.batch = state.epoch + 1, 0
        state.save(ckpt_dir)
    bar.close()


def draw_timesteps(n: int, num_train_timesteps: int, how: str, gen: torch.Generator) -> torch.Tensor:
    """``n`` training timesteps [n] (``train.timesteps``): independent uniform draws, or one from each
    of ``n`` equal strata of [0, T) in random order: every batch spans the noise levels, the expected
    loss is the same, and on the embedded default's 336 steps of batch 8 the FID-ref spread between
    seeds halved (benchmarks/README, "Stratified timesteps")."""
    if how == "uniform":
        return torch.randint(0, num_train_timesteps, (n,), generator=gen)
    u = (torch.randperm(n, generator=gen) + torch.rand(n, generator=gen, dtype=torch.float64)) / n  # [n]
    return (u * num_train_timesteps).long().clamp_(max=num_train_timesteps - 1)


def drop_captions(input_ids: torch.Tensor, empty_ids: torch.Tensor | None, share: float,
                  gen: torch.Generator) -> torch.Tensor:
    """``input_ids`` [B, L] with each row replaced by the empty prompt's ``empty_ids`` [L] with
    probability ``share`` (``train.caption_dropout``), so fine-tuning trains the prediction that
    classifier-free guidance extrapolates from, as pre-training did. Nothing is drawn at share 0:
    runs without dropout keep their random stream."""
    if share <= 0:
        return input_ids
    assert empty_ids is not None, "caption dropout needs the empty prompt's token ids"
    drop = torch.rand(len(input_ids), generator=gen) < share  # [B]
    return torch.where(drop[:, None], empty_ids, input_ids)


def train_step(state: TrainState, model: Model, data: Data, idx: torch.Tensor, ckpt_dir: Path) -> None:
    """One optimiser step on the images ``idx``, with the adapter's hooks around it (SeLoRA grows,
    AdaLoRA prunes, DyLoRA samples a rank); its loss, LR and rank changes are logged."""
    adapter, gen, step = state.adapter, state.rng, state.step
    adapter.before_forward(step)
    mean, std = data.train.mean[idx], data.train.std[idx]
    latents = (mean + std * torch.randn(mean.shape, generator=gen)) * model.scaling
    noise = torch.randn(latents.shape, generator=gen)
    timesteps = draw_timesteps(len(idx), model.scheduler.config.num_train_timesteps, data.timesteps, gen)
    input_ids = drop_captions(data.train.input_ids[idx], data.empty_ids, data.caption_dropout, gen)
    loss = diffusion_loss(model, latents, input_ids, noise, timesteps)
    extra = adapter.extra_loss()
    total = loss if extra is None else loss + extra
    if not torch.isfinite(total):
        raise TrainingDiverged(
            f"loss is {total.item()} at step {step} (epoch {state.epoch}); training stopped. The last "
            f"good checkpoint is kept in {ckpt_dir}; lower train.lr or use bf16/fp32"
        )
    state.scaler.scale(total).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.lr_scheduler.step()
    adapter.after_optimizer_step(step, state.optimizer)
    state.optimizer.zero_grad(set_to_none=True)

    state.logs.add("steps", step=step, epoch=state.epoch, loss=loss.item(),
                   lr=state.optimizer.param_groups[0]["lr"])
    state.logs.extend("ranks", adapter.history())
    state.step += 1
    state.batch += 1


def end_epoch(state: TrainState, model: Model, data: Data, ckpt_dir: Path) -> None:
    """Validation on the fixed draws; the best epoch's adapter is exported. Without a validation
    split (Montgomery, as the paper) every epoch is the best so far: the last one is kept."""
    if data.draws is not None:
        t_val = time.perf_counter()
        val = validation_loss(model, data)
        state.clock["validation_s"] += time.perf_counter() - t_val
    else:
        val = float("nan")
    # Only an adapter the method allows to be exported competes (AdaLoRA: after its final budget).
    is_best = state.adapter.exportable(state.step) and (data.draws is None or val < state.best_val_loss)
    if is_best:
        if data.draws is not None:
            state.best_val_loss = val
        state.best_epoch = state.epoch
        # Kept inside the checkpoint folder until the run ends: Snakemake and DVC delete a failed
        # job's outputs before retrying it, and the resumed run must still have it.
        export_adapter(state.adapter, ckpt_dir / "best", epoch=state.epoch, step=state.step,
                       val_loss=val if data.draws is not None else None)
    state.logs.add("validation", epoch=state.epoch, step=state.step, val_loss=val, is_best=is_best)
