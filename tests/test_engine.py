"""The training and sampling engine: protocol, best epoch, kill-and-resume bit-identity, NaN, sampling."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from selora.config import load_params, method_names
from selora.engine import checkpoint
from selora.engine.sample import sample
from selora.engine.train import TrainingDiverged, train
from selora.runlayout import RunId

SETUP = "synthetic-cxr-32"
DETERMINISTIC_LOGS = ("steps.csv", "validation.csv", "ranks.csv", "parameters.csv")


def engine_overrides(base_path: Path, results: Path) -> list[str]:
    return [
        f"base_model.name={base_path}",
        f"paths.results={results}",
        f"setups.{SETUP}.epochs=2",
        f"setups.{SETUP}.batch_size=8",
        "train.lr=2.0e-3",
        "train.checkpoint_every=3",
        "train.memory_every=4",
        "methods.selora.test_interval=3",
        "methods.selora.threshold=1.0",
        "methods.adalora.delta_t=2",
        "sample.steps=4",
        "sample.batch_size=8",
    ]


@pytest.fixture(scope="module")
def trained(tiny_base, prepared, tmp_path_factory) -> dict[str, tuple]:
    """One short run per method: {method: (params, run, summary)}."""
    results = tmp_path_factory.mktemp("results")
    out = {}
    for method in method_names():
        params = load_params(None, engine_overrides(tiny_base["path"], results))
        run = RunId(SETUP, method, "default", 0)
        out[method] = (params, run, train(params, run, data_dir=prepared, progress=False))
    return out


def _run_root(params, run) -> Path:
    return Path(params.paths.results) / "runs" / run.relpath


@pytest.mark.parametrize("method", method_names())
def test_training_reduces_validation_loss_and_keeps_the_best_epoch(trained, method):
    params, run, summary = trained[method]
    train_dir = _run_root(params, run) / "train"
    val = pd.read_csv(train_dir / "logs" / "validation.csv")
    base_loss = val.loc[val.epoch == -1, "val_loss"].item()
    epochs = val[val.epoch >= 0]
    assert epochs.val_loss.min() < base_loss, "fine-tuning did not lower the validation loss"
    # AdaLoRA may only export an epoch that ends after its final budget allocation (step 14 − 6 = 8).
    eligible = epochs[epochs.step > 14 - round(0.4 * 14)] if method == "adalora" else epochs
    best_row = eligible.loc[eligible.val_loss.idxmin()]
    assert summary["best_epoch"] == best_row.epoch
    best = json.loads((train_dir / "adapter" / "best" / "adapter.json").read_text())
    assert best["epoch"] == best_row.epoch and best["val_loss"] == pytest.approx(best_row.val_loss)
    steps = pd.read_csv(train_dir / "logs" / "steps.csv")
    assert len(steps) == summary["steps"] == 14 and steps.lr.eq(2e-3).all()
    assert (train_dir / "logs" / "memory.csv").read_text().count("\n") == 1 + 14 // 4
    assert summary["provenance"]["git_commit"] is None or len(summary["provenance"]["git_commit"]) >= 40
    cpu = summary["provenance"]["cpu"]  # which host's arithmetic made these weights
    assert cpu["torch_threads"] >= 1 and cpu["torch_capability"]
    assert cpu["logical_cpus"] >= 1 and (cpu["model"] or sys.platform != "linux")


def test_a_finished_run_is_not_trained_again(trained, prepared):
    params, run, summary = trained["lora"]
    weights = _run_root(params, run) / "train" / "adapter" / "best" / "pytorch_lora_weights.safetensors"
    before = weights.stat().st_mtime_ns
    again = train(params, run, data_dir=prepared, progress=False)
    assert again == summary and weights.stat().st_mtime_ns == before


def test_sampling_is_deterministic_and_prompt_dependent(trained, prepared, tmp_path, capfd):
    params, run, _ = trained["selora"]
    root = _run_root(params, run)
    a = sample(params, run, data_dir=prepared, progress=False)
    first = {p.name: p.read_bytes() for p in (root / "samples" / "images").glob("*.png")}
    import shutil

    shutil.rmtree(root / "samples")
    capfd.readouterr()
    b = sample(params, run, data_dir=prepared, progress=False)
    # `--quiet` (progress=False) reaches every loader, the adapter's too: no bars in a job's log.
    assert "Loading" not in capfd.readouterr().err
    second = {p.name: p.read_bytes() for p in (root / "samples" / "images").glob("*.png")}
    assert a["n_images"] == b["n_images"] == 16 and first == second
    rows = [json.loads(x) for x in (root / "samples" / "manifest.jsonl").read_text().splitlines()]
    assert {r["source_id"] for r in rows} == {
        json.loads(x)["source_id"] for x in (prepared / "test" / "metadata.jsonl").read_text().splitlines()}
    assert all(Path(r["real_image"]).is_file() for r in rows)

    # Same noise seed, two prompts: the images differ.
    from selora.basemodel import load_pipeline
    from selora.engine.sample import build_pipeline

    def draw(p) -> np.ndarray:
        gens = [torch.Generator().manual_seed(3) for _ in range(2)]
        return p(["The heart is enlarged. Bilateral pleural effusions.", "The lungs are clear."],
                 num_inference_steps=4, guidance_scale=7.5, generator=gens, output_type="np").images

    pipe = build_pipeline(params, root / "train" / "adapter" / "best", torch.device("cpu"))
    out = draw(pipe)
    assert np.abs(out[0] - out[1]).mean() > 1e-3

    # The fused pipeline (no LoRA layers left) draws what the loaded, unfused LoRA layers draw.
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())
    unfused = load_pipeline(params)
    unfused.load_lora_weights(str(root / "train" / "adapter" / "best"))
    unfused.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    assert any("lora" in name for name, _ in unfused.unet.named_modules())
    ref = draw(unfused)
    assert np.abs(out - ref).max() < 1e-4


def test_sampling_runs_on_the_thread_count_the_params_name(tiny_base, prepared, tmp_path, monkeypatch):
    """The workflow passes each job's count as `train.threads`; `dvc repro` starts a stage with the
    host's cores, so sampling must set it itself (it read only Snakemake's OMP_NUM_THREADS)."""
    from selora.engine import sample as sample_module

    seen: list[int] = []

    def stop(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop before drawing")

    monkeypatch.setattr(sample_module, "build_pipeline", stop)
    base = engine_overrides(tiny_base["path"], tmp_path / "results")
    run = RunId(SETUP, "none", "default", 0)  # the base model's run: no adapter to train first
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(3 - threads)  # the other count: the params, not the caller, decide
            params = load_params(None, [*base, f"train.threads={threads}"])
            with pytest.raises(RuntimeError, match="stop before drawing"):
                sample(params, run, data_dir=prepared, progress=False)
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]


def test_rescaled_guidance_reaches_the_sampler_and_redraws_the_samples(trained, prepared, tmp_path):
    """`sample.guidance_rescale` is handed to the pipeline and is part of what the samples are
    reused for: at guidance 3 another rescale draws other images (and a changed value draws them
    again instead of reusing the old ones); without guidance (scale 1) it changes nothing, as
    diffusers rescales only a guided prediction."""
    params, run, _ = trained["lora"]
    base = engine_overrides(Path(params.base_model.name), Path(params.paths.results))

    def draw(scale: float, rescale: float) -> tuple[dict, dict[str, bytes]]:
        out = tmp_path / "run"
        if not (out / "train").exists():
            out.mkdir()
            (out / "train").symlink_to(_run_root(params, run) / "train")
        p = load_params(None, [*base, f"sample.guidance_scale={scale}", f"sample.guidance_rescale={rescale}"])
        summary = sample(p, run, data_dir=prepared, out_dir=out, progress=False)
        return summary, {f.name: f.read_bytes() for f in (out / "samples" / "images").glob("*.png")}

    plain, plain_images = draw(3.0, 0.0)
    rescaled, rescaled_images = draw(3.0, 1.0)
    assert rescaled["guidance_rescale"] == 1.0 and rescaled["config_hash"] != plain["config_hash"]
    assert rescaled_images.keys() == plain_images.keys()
    assert sum(rescaled_images[k] != plain_images[k] for k in plain_images) == len(plain_images)
    assert draw(1.0, 0.0)[1] == draw(1.0, 1.0)[1]


def _files_digest(train_dir: Path) -> dict[str, str]:
    files = [train_dir / "adapter" / "best" / "pytorch_lora_weights.safetensors",
             train_dir / "adapter" / "last" / "pytorch_lora_weights.safetensors",
             *[train_dir / "logs" / f for f in DETERMINISTIC_LOGS]]
    return {f.name if f.parent.name == "logs" else f"{f.parent.name}/{f.name}":
            hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _cli_train(params_file: Path, run_dir: Path, data: Path, method: str, env_extra=None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    cmd = [sys.executable, "-m", "selora", "train", "--params", str(params_file), "--setup", SETUP,
           "--method", method, "--seed", "0", "--run-dir", str(run_dir), "--data", str(data), "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_sigkill_at_any_point_then_resume_is_bit_identical(tiny_base, prepared, tmp_path):
    """SeLoRA (the method whose shapes change): kill right after an expansion, and at a random
    instant; the restarted run must end byte-identical to an uninterrupted one."""
    params_file = tmp_path / "params.yaml"
    params = load_params(None, [*engine_overrides(tiny_base["path"], tmp_path / "results"),
                                "train.checkpoint_every=2"])
    params_file.write_text(yaml.safe_dump(params.raw))

    ref = tmp_path / "ref"
    done = _cli_train(params_file, ref, prepared, "selora")
    assert done.returncode == 0, done.stderr
    ranks = pd.read_csv(ref / "train" / "logs" / "ranks.csv")
    expansion_steps = sorted(set(ranks.loc[ranks.expanded == 1, "step"]))
    assert expansion_steps, "no expansion happened; the test would not cover one"
    # The engine counts finished steps from 1: kill after the first checkpoint (every 2 steps) that
    # holds the grown shapes, i.e. right after the expansion.
    first = int(expansion_steps[0]) + 1
    kill_after = first + first % 2

    # 1. Killed right after an expansion (SIGKILL from inside, after that step's bookkeeping).
    resumed = tmp_path / "resumed"
    killed = _cli_train(params_file, resumed, prepared, "selora",
                        {"SELORA_FAULT_KILL_AFTER_STEP": str(kill_after)})
    assert killed.returncode == -signal.SIGKILL
    assert not (resumed / "train" / "summary.json").exists()
    assert _cli_train(params_file, resumed, prepared, "selora").returncode == 0
    assert _files_digest(resumed / "train") == _files_digest(ref / "train")

    # 2. Killed from outside at a random instant of training, then restarted until it finishes.
    rng = np.random.default_rng(int(time.time()))
    rand = tmp_path / "random"
    cmd = [sys.executable, "-m", "selora", "train", "--params", str(params_file), "--setup", SETUP,
           "--method", "selora", "--seed", "0", "--run-dir", str(rand), "--data", str(prepared), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (rand / "train" / "checkpoint" / "state.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(float(rng.uniform(0, 1.0)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _cli_train(params_file, rand, prepared, "selora").returncode == 0
    assert _files_digest(rand / "train") == _files_digest(ref / "train")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_base, prepared,
                                                                                tmp_path):
    params = load_params(None, [*engine_overrides(tiny_base["path"], tmp_path), "train.lr=1.0e+6",
                                "train.checkpoint_every=1"])
    run = RunId(SETUP, "lora", "default", 0)
    with pytest.raises(TrainingDiverged, match="last good checkpoint") as err:
        train(params, run, data_dir=prepared, progress=False)
    ckpt = tmp_path / "runs" / run.relpath / "train" / "checkpoint" / "state.pt"
    state = checkpoint.read(ckpt)
    assert f"at step {state['step']} " in str(err.value)  # the checkpoint is the step before the NaN
    assert all(np.isfinite(r["loss"]) for r in state["logs"]["steps"])


def test_gradient_checkpointing_keeps_text_encoder_adapters_training(tiny_base, prepared, tmp_path):
    from selora.adapters import create_adapter
    from selora.basemodel import load_pipeline

    params = load_params(None, engine_overrides(tiny_base["path"], tmp_path))
    pipe = load_pipeline(params)
    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    adapter = create_adapter("lora", params.methods.lora, seed=0)
    adapter.attach(parts, total_steps=1)
    pipe.unet.enable_gradient_checkpointing()
    pipe.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for m in parts.values():
        m.train()
    ids = pipe.tokenizer(["The heart is enlarged."] * 2, padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids)[0]
    out = pipe.unet(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), encoder_hidden_states=hidden).sample
    out.pow(2).mean().backward()
    te_params = {n: p for n, p in pipe.text_encoder.named_parameters() if p.requires_grad}
    assert te_params and all(p.grad is not None for p in te_params.values())
    # B starts at zero (so A's first gradient is zero); every B must receive a gradient.
    b_grads = [p.grad for n, p in te_params.items() if "lora_B" in n]
    assert len(b_grads) == 12 and all(g.abs().sum() > 0 for g in b_grads)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_the_device_at_hand(tiny_base, prepared, tmp_path, precision):
    """The GPU options run end to end (here on the CPU: autocast + fp16 loss scaling)."""
    params = load_params(None, [*engine_overrides(tiny_base["path"], tmp_path),
                                f"train.mixed_precision={precision}", f"setups.{SETUP}.max_steps=4",
                                "methods.selora.test_interval=2"])
    run = RunId(SETUP, "selora", "default", 0)
    summary = train(params, run, data_dir=prepared, progress=False)
    steps = pd.read_csv(tmp_path / "runs" / run.relpath / "train" / "logs" / "steps.csv")
    assert summary["steps"] == 4 and np.isfinite(steps.loss).all()
    assert summary["run_config"]["train"]["mixed_precision"] == precision


def test_a_changed_config_retrains_instead_of_resuming_a_stale_checkpoint(tiny_base, prepared, tmp_path):
    run = RunId(SETUP, "dylora", "default", 0)
    base = [*engine_overrides(tiny_base["path"], tmp_path), f"setups.{SETUP}.max_steps=3"]
    first = train(load_params(None, base), run, data_dir=prepared, progress=False)
    second = train(load_params(None, [*base, "train.lr=1.0e-3"]), run, data_dir=prepared, progress=False)
    assert second["config_hash"] != first["config_hash"] and second["steps"] == 3
    assert second["run_config"]["train"]["lr"] == 1e-3


@pytest.mark.parametrize("method", ["lora", "dylora"])
def test_adapter_seed_gives_every_run_seed_the_same_adapter_and_rank_draws(tiny_base, tmp_path, method):
    """train.adapter_seed: null, the run's seed decides the adapter's initial weights (and DyLoRA's
    rank per step) as the paper's seeds do; an int makes them the same for every run seed, which
    then varies only the data order and the noise."""
    from selora.basemodel import load_pipeline
    from selora.engine.train import build_adapter, freeze_base

    def start(adapter_seed: str, seed: int):
        params = load_params(None, [*engine_overrides(tiny_base["path"], tmp_path),
                                    f"train.adapter_seed={adapter_seed}"])
        model = freeze_base(load_pipeline(params), torch.device("cpu"), torch.autocast("cpu", enabled=False))
        adapter = build_adapter(params, RunId(SETUP, method, "default", seed), model, 12, False)
        draws = [adapter.draw(step) for step in range(12)] if method == "dylora" else []
        return [p.detach().clone() for p in adapter.trainable_parameters()], draws

    (a0, r0), (a1, r1) = start("null", 0), start("null", 1)
    assert not all(torch.equal(x, y) for x, y in zip(a0, a1, strict=True))
    (f0, q0), (f1, q1) = start("5", 0), start("5", 1)
    assert all(torch.equal(x, y) for x, y in zip(f0, f1, strict=True)) and q0 == q1
    assert not all(torch.equal(x, y) for x, y in zip(f0, a0, strict=True))  # 5 is not seed 0's
    if method == "dylora":
        assert r0 != r1  # 12 draws from {1..4}: two seeds differ


def _toy_run(seed: int = 0, lr_schedule: str = "constant", *sets: str):
    """A LoRA on two small linear stacks and its optimiser: the objects a TrainState holds."""
    from selora.adapters import create_adapter

    torch.manual_seed(0)  # the same base weights (they come from the base model, not the checkpoint)
    parts = {"unet": torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3)),
             "text_encoder": torch.nn.Sequential(torch.nn.Linear(4, 5))}
    for module in parts.values():
        module.requires_grad_(False)
    adapter = create_adapter("lora", load_params(None).methods.lora, seed=seed)
    adapter.attach(parts, total_steps=8)
    torch.manual_seed(seed)
    params = load_params(None, ["train.mixed_precision=fp16",  # a scaler with state of its own
                                f"train.lr_schedule={lr_schedule}", *sets])
    return parts, adapter, params.train


def _toy_steps(state, parts, n: int) -> list[float]:
    """Steps that draw from the state's generator and from torch's global RNG, as the engine does."""
    losses = []
    for _ in range(n):
        x = torch.randn(2, 6, generator=state.rng) + torch.randn(2, 6)
        loss = parts["unet"](x).pow(2).mean() + parts["text_encoder"](x[:, :4]).pow(2).mean()
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.lr_scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.logs.add("steps", step=state.step, epoch=state.epoch, loss=loss.item(), lr=0.1)
        state.step, state.batch = state.step + 1, state.batch + 1
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine", "wsd"])
def test_a_train_state_is_its_checkpoint_and_resumes_where_it_stopped(tmp_path, lr_schedule):
    """The checkpoint holds exactly TrainState's fields; restored into fresh objects, the run goes
    on bit-identically (adapter, optimiser moments, scaler, both RNGs, position, logs, the LR)."""
    from dataclasses import fields

    from selora.engine.state import Target, TrainState
    from selora.engine.train import build_optimiser

    target = Target(out=tmp_path, data_dir=tmp_path, config={}, config_hash="c", identity={"seed": 0},
                    identity_hash="i")
    device = torch.device("cpu")
    parts, adapter, tcfg = _toy_run(lr_schedule=lr_schedule)
    state = TrainState.start(target, adapter, *build_optimiser(adapter, tcfg, device, 12),
                             rng=torch.Generator().manual_seed(3))
    _toy_steps(state, parts, 3)
    state.epoch, state.best_val_loss, state.best_epoch = 1, 0.25, 0
    state.timing.append({"epoch": 0, "wall_s": 1.0})
    state.scaler.update(new_scale=1024.0)  # as after overflows (the initial scale is 65536)
    state.save(tmp_path)
    saved = checkpoint.read(tmp_path / checkpoint.FILENAME)
    assert set(saved) == {f.name for f in fields(TrainState)}
    assert state.clock["checkpoint_s"] > 0 and saved["clock"]["checkpoint_s"] == 0  # counted after
    expected = _toy_steps(state, parts, 3)

    parts2, adapter2, _ = _toy_run(seed=1)  # other adapter weights and RNG: all must come from disk
    TrainState.restore_adapter(adapter2, saved)
    resumed = TrainState.start(target, adapter2, *build_optimiser(adapter2, tcfg, device, 12),
                               rng=torch.Generator().manual_seed(4))
    resumed.restore(saved)
    assert (resumed.step, resumed.epoch, resumed.batch, resumed.best_val_loss, resumed.best_epoch) == (
        3, 1, 3, 0.25, 0)
    assert resumed.scaler.get_scale() == 1024.0
    assert _toy_steps(resumed, parts2, 3) == expected
    assert resumed.logs.rows == state.logs.rows and resumed.timing == state.timing
    assert resumed.lr_scheduler.last_epoch == state.lr_scheduler.last_epoch == 6
    assert resumed.optimizer.param_groups[0]["lr"] == state.optimizer.param_groups[0]["lr"]
    after, after2 = adapter.state_dict(), adapter2.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(_tensors(after), _tensors(after2), strict=True))


def _lrs_over_ten_steps(name: str, *sets: str):
    """The lr build_optimiser's schedule gives each of a 10-step run's steps, and the one after."""
    from selora.engine.train import build_optimiser

    _, adapter, tcfg = _toy_run(0, name, *sets)
    optimizer, sched, _ = build_optimiser(adapter, tcfg, torch.device("cpu"), 10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    return tcfg, lrs, optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("name", ["constant", "cosine", "linear"])
def test_the_lr_schedule_is_constant_or_decays_to_zero_at_the_last_step(name):
    """train.lr_schedule: constant keeps Table 4's lr at every step (the paper path, as before);
    cosine and linear start at it, fall monotonically and reach 0 after the run's last step."""
    tcfg, lrs, after = _lrs_over_ten_steps(name)
    assert lrs[0] == tcfg.lr
    if name == "constant":
        assert lrs == [tcfg.lr] * 10 and after == tcfg.lr
    else:
        assert all(a > b for a, b in itertools.pairwise(lrs)) and lrs[-1] > 0
        assert after == 0.0
        assert lrs[5] == pytest.approx(tcfg.lr / 2, rel=1e-9)  # half-way: both at half the lr


def test_the_wsd_schedule_holds_the_lr_then_decays_it_linearly_to_zero_over_its_fraction():
    """train.lr_schedule wsd (transformers' warmup-stable-decay, no warm-up): Table 4's lr for the
    first 70 % of 10 steps, then linearly down over the last 3, reaching 0 after the last step."""
    tcfg, lrs, after = _lrs_over_ten_steps("wsd", "train.lr_decay_fraction=0.3")
    assert lrs[:8] == [tcfg.lr] * 8
    assert lrs[8:] == pytest.approx([tcfg.lr * 2 / 3, tcfg.lr / 3], rel=1e-9)
    assert after == 0.0


def test_the_engines_fused_adam_makes_the_per_tensor_update():
    """build_optimiser's fused Adam (one kernel for all adapter matrices) updates the weights and
    moments as torch's per-tensor Adam does, to float32 rounding, with the same hyperparameters."""
    from selora.engine.train import build_optimiser

    _, adapter, tcfg = _toy_run()
    fused, _, _ = build_optimiser(adapter, tcfg, torch.device("cpu"), 5)
    assert fused.defaults["fused"] is True
    twins = [p.detach().clone().requires_grad_(True) for p in adapter.trainable_parameters()]
    start = [q.detach().clone() for q in twins]
    plain = torch.optim.Adam(twins, lr=tcfg.lr, betas=tuple(tcfg.betas), weight_decay=tcfg.weight_decay,
                             foreach=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        for p, q in zip(adapter.trainable_parameters(), twins, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        fused.step()
        plain.step()
    for p, q, q0 in zip(adapter.trainable_parameters(), twins, start, strict=True):
        assert (q.detach() - q0).abs().min() > 0  # every entry moved: the comparison is not vacuous
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused.state[p]["exp_avg_sq"], plain.state[q]["exp_avg_sq"],
                                   rtol=1e-5, atol=1e-9)


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree) for t in _tensors(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in _tensors(v)]
    return []


@pytest.mark.parametrize("setting", ["train.device", "--device"])
def test_one_device_resolver_names_the_setting_to_change(monkeypatch, setting):
    """Training, sampling and `selora evaluate` resolve devices alike; a bad one is a ConfigError."""
    from selora.engine.device import resolve_device
    from selora.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", setting) == resolve_device("cpu", setting) == torch.device("cpu")
    with pytest.raises(ConfigError, match=f"^{setting} is 'cuda:1' but CUDA is not available on this"):
        resolve_device("cuda:1", setting)
    with pytest.raises(ConfigError, match=f"^{setting} is 'gpu', which is not a device"):
        resolve_device("gpu", setting)


def test_evaluate_refuses_cuda_where_there_is_none_before_any_work(monkeypatch, capsys, tmp_path):
    from selora.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    code = main(["evaluate", "--params", str(params), "--run-dir", str(tmp_path / "absent"),
                 "--device", "cuda"])
    assert code == 2 and "--device is 'cuda' but CUDA is not available" in capsys.readouterr().err


def test_stratified_timesteps_take_one_from_each_stratum_and_uniform_ones_are_torchs():
    """train.timesteps: stratified draws put exactly one timestep of a batch in each of its n equal
    strata of [0, T), in an order that varies; uniform draws are torch.randint's, bit for bit (the
    paper path's runs are unchanged)."""
    from selora.engine.loop import draw_timesteps

    n, T = 8, 1000
    gen = torch.Generator().manual_seed(0)
    orders, counts = set(), torch.zeros(T, dtype=torch.int64)
    for _ in range(200):
        t = draw_timesteps(n, T, "stratified", gen)
        assert t.dtype == torch.int64 and t.shape == (n,) and int(t.min()) >= 0 and int(t.max()) < T
        assert sorted((t * n // T).tolist()) == list(range(n))  # one per stratum
        orders.add(tuple((t * n // T).tolist()))
        counts += torch.bincount(t, minlength=T)
    assert len(orders) > 150  # the strata come in random order, so images get every noise level
    assert (counts.view(n, -1).sum(1) == 200).all() and (counts > 0).sum() > 0.7 * T  # spread within
    again = draw_timesteps(n, T, "stratified", torch.Generator().manual_seed(0))
    first = draw_timesteps(n, T, "stratified", torch.Generator().manual_seed(0))
    assert torch.equal(again, first)  # deterministic per generator
    uniform = draw_timesteps(n, T, "uniform", torch.Generator().manual_seed(3))
    assert torch.equal(uniform, torch.randint(0, T, (n,), generator=torch.Generator().manual_seed(3)))


def test_caption_dropout_replaces_a_share_of_captions_with_the_empty_prompt_and_draws_nothing_at_zero():
    """train.caption_dropout: each row becomes the empty prompt with the given probability, the
    others stay as they were; at 0 the generator is not touched (runs without it are unchanged)."""
    from selora.engine.loop import drop_captions

    ids = torch.arange(1, 4001).view(1000, 4)  # [B, L]
    empty = torch.tensor([49406, 49407, 49407, 49407])  # [L]
    gen = torch.Generator().manual_seed(0)
    out = drop_captions(ids, empty, 0.1, gen)
    dropped = (out == empty).all(1)  # [B]
    assert 70 < int(dropped.sum()) < 130  # 1,000 draws at 0.1: 100 ± 9.5
    assert torch.equal(out[~dropped], ids[~dropped])
    gen, untouched = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert drop_captions(ids, None, 0.0, gen) is ids
    assert torch.equal(gen.get_state(), untouched.get_state())


def test_fine_tuning_sees_the_empty_prompt_at_the_caption_dropout_share(tiny_base, prepared, tmp_path,
                                                                      monkeypatch):
    """The engine hands the text encoder the empty prompt for about train.caption_dropout of
    its training images and their captions for the rest; validation always has the captions."""
    from selora.basemodel import load_pipeline
    from selora.engine import loop
    from selora.imagefolder import read_manifest

    seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}  # grad enabled (training) or not
    real_loss = loop.diffusion_loss

    def recording_loss(model, latents, input_ids, noise, timesteps):
        seen[torch.is_grad_enabled()].append(input_ids.clone())
        return real_loss(model, latents, input_ids, noise, timesteps)

    monkeypatch.setattr(loop, "diffusion_loss", recording_loss)
    params = load_params(None, [*engine_overrides(tiny_base["path"], tmp_path), f"setups.{SETUP}.max_steps=8",
                                "train.caption_dropout=0.5"])
    train(params, RunId(SETUP, "lora", "default", 0), data_dir=prepared, progress=False)
    tok = load_pipeline(params).tokenizer
    empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    texts = [r["text"] for r in read_manifest(prepared) if r["split"] == "train"]
    tokens = tok(texts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                 return_tensors="pt")
    captions = {tuple(r) for r in tokens.input_ids.tolist()}
    rows = torch.cat(seen[True])  # [8 steps × 8, L]
    is_empty = (rows == empty).all(1)
    assert len(rows) == 64 and 16 <= int(is_empty.sum()) <= 48  # 64 draws at 0.5: 32 ± 4
    assert all(tuple(r) in captions for r in rows[~is_empty].tolist())
    assert seen[False] and not any((v == empty).all(1).any() for v in seen[False])
