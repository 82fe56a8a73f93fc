"""``selora train``: fine-tune one adapter on one prepared data set (paper Section 3.5, Table 4).

Reads top to bottom like diffusers' ``train_text_to_image_lora.py``; the method-specific parts
are the adapter's hooks (:mod:`selora.adapters.base`), so there is no ``if method == ...``:

1. base model (``tiny`` or any diffusers Stable Diffusion) with everything frozen;
2. data: the prepared set, latents encoded once by the frozen VAE, prompts truncated to 77 tokens;
3. the adapter in every linear layer of the U-Net and the text encoder, none in the VAE;
4. Adam (lr 1e-4, β = (0.9, 0.999), no weight decay), a constant LR schedule, fp16 grad scaling;
5. resume from the last checkpoint when one exists and is verified (same params, data, base model
   and seeds ⇒ same run; see :func:`selora.runlayout.run_identity`);
6. the loop: ε-prediction MSE, adapter hooks, logs, peak memory every 40 steps, checkpoints;
7. after each epoch: validation loss on fixed (noise, timestep) draws (and once before training,
   "epoch -1", for the untouched base); the best epoch's adapter is exported as a standard LoRA
   file (``adapter/best``); with no validation split the last epoch is kept;
8. the end: last adapter, logs, parameter table and a summary with provenance.

Nothing from an earlier process is trusted unchecked: leftovers of killed writes are removed at the
start, the summary, the checkpoint and every adapter folder are checked against the run's identity
and their checksums, and what fails is discarded (stale) or moved to ``train/quarantine`` (corrupt).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selora.adapters import create_adapter
from selora.basemodel import load_pipeline
from selora.config import Params
from selora.engine import checkpoint
from selora.engine.data import (
    LatentSet,
    ValidationDraws,
    batches_per_epoch,
    encode_rows,
    epoch_order,
    validation_draws,
)
from selora.engine.device import memory_mb, resolve_device
from selora.engine.logs import RunLogs, write_csv
from selora.errors import DatasetFormatError, SeloraError
from selora.imagefolder import read_manifest
from selora.io import (
    Provenance,
    atomic_dir,
    quarantine,
    report_leftovers,
    verify_checksums,
    write_checksums,
    write_json,
)
from selora.runlayout import RunId, config_hash, prepared_dir, run_config, run_dir, run_identity

PARAMETER_COLUMNS = ("part", "base_parameters", "trainable_parameters", "effective_parameters",
                     "trainable_percent", "effective_percent", "adapted_layers")
FAULT_KILL_ENV = "SELORA_FAULT_KILL_AFTER_STEP"  # testing hook: SIGKILL self after this step
__all__ = ["TrainingDiverged", "resolve_device", "train"]  # resolve_device: selora.engine.sample's


class TrainingDiverged(SeloraError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def diffusion_loss(parts: dict[str, torch.nn.Module], scheduler, latents: torch.Tensor,
                   input_ids: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   autocast: torch.autocast) -> torch.Tensor:
    """The MSE between the U-Net's prediction and its target (ε, or v for v-prediction models)."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    with autocast:
        hidden = parts["text_encoder"](input_ids)[0]
        pred = parts["unet"](noisy, timesteps, encoder_hidden_states=hidden).sample
    return F.mse_loss(pred.float(), target.float())


@torch.no_grad()
def validation_loss(parts, scheduler, val: LatentSet, draws: ValidationDraws, scaling: float,
                    batch_size: int, device: torch.device, autocast: torch.autocast) -> float:
    """Mean loss over the fixed draws, with the adapter in eval mode (DyLoRA: full rank)."""
    for m in parts.values():
        m.eval()
    total, n = 0.0, 0
    for i in range(0, len(draws.index), batch_size):
        idx = draws.index[i:i + batch_size]
        sl = slice(i, i + batch_size)
        latents = (val.mean[idx] + val.std[idx] * draws.latent_eps[sl]) * scaling
        loss = diffusion_loss(parts, scheduler, latents.to(device), val.input_ids[idx].to(device),
                              draws.noise[sl].to(device), draws.timesteps[sl].to(device), autocast)
        total += loss.item() * len(idx)
        n += len(idx)
    for m in parts.values():
        m.train()
    return total / n


def export_adapter(adapter, dest: Path, **info: Any) -> None:
    """The standard LoRA file plus ``adapter.json`` (epoch, step, validation loss it came from),
    and last ``SHA256SUMS`` over both, so a reader can tell a complete export from a damaged one."""
    with atomic_dir(dest) as tmp:
        adapter.export(tmp)
        write_json(Path(tmp) / "adapter.json", info)
        write_checksums(tmp)


def _finished_summary(out: Path, identity_hash: str) -> dict[str, Any] | None:
    """The summary of a finished run with this identity whose adapters pass their checksums."""
    path = out / "summary.json"
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        quarantine(path, out / "quarantine", f"unreadable ({exc}); the run is published again")
        return None
    if not isinstance(done, dict) or done.get("identity_hash") != identity_hash:
        return None
    for name in ("best", "last"):
        problem = verify_checksums(out / "adapter" / name)
        if problem:
            print(f"publishing {out} again: {problem}", file=sys.stderr)
            return None
    return done


def card_adapters(params: Params, run: RunId, adapter_dir: Path, **metrics: Any) -> None:
    """A model card (README.md) beside the best and last adapters: what a hub needs to list them."""
    from selora.adapters.export import write_model_card

    setup = params.raw["setups"][run.setup]
    base = params.base_model.name
    base = f"{params.paths.models}/tiny-sd" if base == "tiny" else base  # the embedded miniature
    on_hub = params.base_model.name != "tiny" and not Path(base).exists()
    train_cfg = {k: v for k, v in params.raw["train"].items() if k not in ("threads", "checkpoint_every")}
    for which in ("best", "last"):
        write_model_card(adapter_dir / which, base_model=base, method=run.method,
                         hyperparameters=params.raw["methods"][run.method], dataset=setup["dataset"],
                         setup={"setup": run.setup, **setup}, training={"seed": run.seed, **train_cfg},
                         metrics=metrics if which == "best" else None, base_on_hub=on_hub)


def train(params: Params, run: RunId, *, data_dir: str | Path | None = None,
          out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one run; returns its summary. Resumes from ``train/checkpoint`` when present."""
    t0 = time.perf_counter()
    setup = params.setup(run.setup)
    tcfg = params.train
    root = Path(out_dir) if out_dir else run_dir(params, run)
    out = root / "train"
    cfg = run_config(params, run)
    chash = config_hash(cfg)
    data_dir = Path(data_dir) if data_dir else prepared_dir(params, run.setup)
    identity = run_identity(params, run, data_dir)
    ihash = config_hash(identity)

    # 0. Remove what killed writes left (also inside the declared outputs adapter/ and logs/); a
    #    finished run of the same identity whose adapters check out is not trained again.
    report_leftovers(out)
    summary_path = out / "summary.json"
    done = _finished_summary(out, ihash)
    if done is not None:
        return done

    prov = Provenance("train", params.raw)
    device = resolve_device(tcfg.device)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(run.seed)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(tcfg.mixed_precision)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    # 1. Base model: VAE, text encoder, U-Net, all frozen (the adapter adds what trains).
    pipe = load_pipeline(params)
    vae, tokenizer = pipe.vae.to(device), pipe.tokenizer
    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    for module in (vae, *parts.values()):
        module.requires_grad_(False)
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scaling = float(vae.config.scaling_factor)

    # 2. Data: the prepared set; latents encoded once, prompts truncated by the tokenizer.
    rows = read_manifest(data_dir)
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "validation"]
    if not train_rows:
        raise DatasetFormatError(f"{data_dir}: no training images")
    train_set = encode_rows(vae, tokenizer, train_rows, setup.size, device, progress=progress,
                            desc="encode train")
    val_set = encode_rows(vae, tokenizer, val_rows, setup.size, device) if val_rows else None
    del vae, pipe
    draws = (validation_draws(val_set, tcfg.val_draws, scheduler.config.num_train_timesteps, params.seed)
             if val_set is not None else None)
    steps_per_epoch = batches_per_epoch(len(train_set), setup.batch_size)
    total_steps = steps_per_epoch * setup.epochs
    if setup.max_steps:
        total_steps = min(total_steps, setup.max_steps)
    epochs = (total_steps + steps_per_epoch - 1) // steps_per_epoch

    # 3. The adapter, in every linear layer of the U-Net and the text encoder.
    adapter = create_adapter(run.method, params.methods.get(run.method), seed=run.seed)
    adapter.attach(parts, total_steps)
    for module in parts.values():
        module.to(device).train()
    if tcfg.gradient_checkpointing:
        parts["unet"].enable_gradient_checkpointing()  # diffusers: non-reentrant
        # Reentrant checkpointing would silently freeze the text encoder's adapters (its inputs
        # do not require grad), so ask for the non-reentrant kind explicitly.
        parts["text_encoder"].gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})

    # 5a. Restore the adapter first: resumed SeLoRA layers have grown, so the optimiser must be
    #     built on the restored parameters.
    ckpt_dir = out / "checkpoint"
    state = checkpoint.load(ckpt_dir, out / "quarantine")
    if state is not None and state.get("identity_hash") != ihash:
        # The params, the prepared data, the base model or a seed changed since that checkpoint
        # (e.g. the workflow reruns this job because its input data changed): its progress does
        # not belong to this run.
        changed = [k for k, v in identity.items() if state.get("identity", {}).get(k) != v]
        print(f"discarding {ckpt_dir}: it was written for other inputs ({', '.join(changed) or 'unknown'} "
              "changed)", file=sys.stderr)
        shutil.rmtree(ckpt_dir)
        state = None
    if state is not None and state["best_epoch"] is not None:
        problem = verify_checksums(ckpt_dir / "best")
        if problem:  # the best epoch's adapter cannot be rebuilt from a later checkpoint
            for name in ("best", checkpoint.FILENAME, checkpoint.PREVIOUS):
                if (ckpt_dir / name).exists():
                    quarantine(ckpt_dir / name, out / "quarantine", f"{problem}; training restarts")
            state = None
    if state is None and (ckpt_dir / "best").exists():
        shutil.rmtree(ckpt_dir / "best")  # belongs to no checkpoint; the first epoch exports anew
    if state is not None:
        adapter.load_state_dict(state["adapter"])

    # 4. Optimiser (Adam, Table 4), constant LR schedule, fp16 loss scaling.
    optimizer = torch.optim.Adam(adapter.trainable_parameters(), lr=tcfg.lr, betas=tuple(tcfg.betas),
                                 weight_decay=tcfg.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.mixed_precision == "fp16")
    gen = torch.Generator().manual_seed(run.seed)  # latent sampling, noise, timesteps

    # 5b. Resume the rest: optimiser, schedules, RNG, data position, logs.
    logs = RunLogs()
    step, epoch, batch, best = 0, 0, 0, float("inf")
    best_epoch: int | None = None
    timing: list[dict[str, float]] = []
    clock = {"steps_s": 0.0, "checkpoint_s": 0.0, "validation_s": 0.0}  # where the time goes
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.restore_rng(state["rng"], {"data": gen})
        logs = RunLogs.from_state(state["logs"])
        step, epoch, batch = state["step"], state["epoch"], state["batch"]
        best, best_epoch = state["best_val_loss"], state["best_epoch"]
        timing = list(state["timing"])
        clock = dict(state["clock"])

    if state is None and draws is not None:
        # The untouched base model's validation loss (every adapter starts as the identity).
        val0 = validation_loss(parts, scheduler, val_set, draws, scaling, setup.batch_size, device, autocast)
        logs.add("validation", epoch=-1, step=0, val_loss=val0, is_best=False)

    def save_checkpoint() -> None:
        t = time.perf_counter()
        checkpoint.save(ckpt_dir, {
            "config_hash": chash, "identity_hash": ihash, "identity": identity,
            "step": step, "epoch": epoch, "batch": batch,
            "best_val_loss": best, "best_epoch": best_epoch, "timing": timing, "clock": clock,
            "adapter": adapter.state_dict(), "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": checkpoint.rng_state({"data": gen}), "logs": logs.state(),
        })
        clock["checkpoint_s"] += time.perf_counter() - t

    # 6. The loop.
    kill_after = int(os.environ.get(FAULT_KILL_ENV, "-1"))
    bar = tqdm(total=total_steps, initial=step, desc=f"train {run.relpath}", disable=not progress)
    t_epoch = time.perf_counter()
    while epoch < epochs:
        order = epoch_order(len(train_set), run.seed, epoch)
        while batch < steps_per_epoch and step < total_steps:
            t_step = time.perf_counter()
            idx = order[batch * setup.batch_size:(batch + 1) * setup.batch_size]
            adapter.before_forward(step)
            mean, std = train_set.mean[idx], train_set.std[idx]
            latents = (mean + std * torch.randn(mean.shape, generator=gen)) * scaling
            noise = torch.randn(latents.shape, generator=gen)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
            loss = diffusion_loss(parts, scheduler, latents.to(device), train_set.input_ids[idx].to(device),
                                  noise.to(device), timesteps.to(device), autocast)
            extra = adapter.extra_loss()
            total = loss if extra is None else loss + extra
            if not torch.isfinite(total):
                raise TrainingDiverged(
                    f"loss is {total.item()} at step {step} (epoch {epoch}); training stopped. The last "
                    f"good checkpoint is kept in {ckpt_dir}; lower train.lr or use bf16/fp32"
                )
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            lr_scheduler.step()
            adapter.after_optimizer_step(step, optimizer)
            optimizer.zero_grad(set_to_none=True)

            logs.add("steps", step=step, epoch=epoch, loss=loss.item(),
                     lr=optimizer.param_groups[0]["lr"])
            logs.extend("ranks", adapter.history())
            step += 1
            batch += 1
            clock["steps_s"] += time.perf_counter() - t_step
            bar.update(1)
            if step % tcfg.memory_every == 0:
                logs.add("memory", step=step, device=device.type, peak_mb=memory_mb(device))
            if step % tcfg.checkpoint_every == 0:
                save_checkpoint()
            if step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        # 7. End of epoch: validation on fixed draws; keep the best epoch's adapter.
        if draws is not None:
            t_val = time.perf_counter()
            val = validation_loss(parts, scheduler, val_set, draws, scaling, setup.batch_size, device,
                                  autocast)
            clock["validation_s"] += time.perf_counter() - t_val
        else:
            val = float("nan")  # no validation split (Montgomery, as the paper): the last epoch is kept
        # Only an adapter the method allows to be exported competes (AdaLoRA: after its final budget).
        is_best = adapter.exportable(step) and (draws is None or val < best)
        if is_best:
            best, best_epoch = (val if draws is not None else best), epoch
            # Kept inside the checkpoint folder until the run ends: Snakemake and DVC delete a
            # failed job's outputs before retrying it, and the resumed run must still have it.
            export_adapter(adapter, ckpt_dir / "best", epoch=epoch, step=step,
                           val_loss=val if draws is not None else None)
        logs.add("validation", epoch=epoch, step=step, val_loss=val, is_best=is_best)
        timing.append({"epoch": epoch, "wall_s": round(time.perf_counter() - t_epoch, 3)})
        t_epoch = time.perf_counter()
        epoch, batch = epoch + 1, 0
        save_checkpoint()
    bar.close()

    # 8. The end: publish the best and last adapters, logs, parameters, summary.
    problem = verify_checksums(ckpt_dir / "best")
    if problem:
        quarantine(ckpt_dir / "best", out / "quarantine", problem)
        raise checkpoint.CorruptCheckpoint(f"the best adapter of {run.relpath} cannot be published: "
                                           f"{problem}; run again to retrain it")
    with atomic_dir(out / "adapter" / "best") as tmp:
        shutil.copytree(ckpt_dir / "best", tmp, dirs_exist_ok=True)
        problem = verify_checksums(tmp)
        if problem:
            raise checkpoint.CorruptCheckpoint(f"copying the best adapter failed: {problem}")
    export_adapter(adapter, out / "adapter" / "last", epoch=epochs - 1, step=step)
    card_adapters(params, run, out / "adapter", best_epoch=best_epoch,
                  best_val_loss=best if draws is not None else None)
    logs.write(out / "logs")
    write_csv(out / "logs" / "parameters.csv", adapter.parameter_table(), PARAMETER_COLUMNS)
    memory = [r["peak_mb"] for r in logs.rows["memory"]]
    summary = {
        "run": cfg["run"],
        "config_hash": chash,
        "run_config": cfg,
        "identity_hash": ihash,
        "identity": identity,
        "steps": step,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "n_train": len(train_set),
        "n_validation": len(val_set) if val_set is not None else 0,
        "best_epoch": best_epoch,
        "best_val_loss": best if draws is not None else None,
        "train_time_s": round(sum(t["wall_s"] for t in timing), 3),
        "epoch_times": timing,
        **{f"{k.removesuffix('_s')}_time_s": round(v, 3) for k, v in clock.items()},
        "steps_per_second": round(step / clock["steps_s"], 3) if clock["steps_s"] else None,
        "checkpoint_overhead": round(clock["checkpoint_s"] / max(clock["steps_s"], 1e-9), 4),
        "memory_device": device.type,
        "memory_mean_mb": round(sum(memory) / len(memory), 1) if memory else None,
        "memory_max_mb": max(memory) if memory else None,
        "final_ranks": adapter.rank_map(),
        "parameters": adapter.parameter_table(),
        "provenance": prov.as_dict(process_wall_time_s=round(time.perf_counter() - t0, 3)),
    }
    write_json(summary_path, summary)
    return summary
