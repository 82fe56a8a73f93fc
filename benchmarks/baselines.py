"""Training step time and memory of every registered method relative to LoRA (paper Tables 7 and 8),
on the embedded miniature, in one run and on the same batches.

    python benchmarks/baselines.py --out results/benchmarks/baselines.json \
        [--base models/tiny-sd] [--data data/raw/synthetic-cxr] [--steps 80] [--threads 1]

Every method (lora, adalora, dylora, selora; a method not registered in this checkout is skipped
with a note) is built through the registry with its params section and trained by the engine's step
(``before_forward``, forward, diffusion loss + ``extra_loss``, backward, optimiser step,
``after_optimizer_step``, ``zero_grad``) on the same sequence of batches.

1. *Time*: the methods' steps are interleaved (step i runs every method, in an order rotated by i)
   so that machine noise hits all alike; every step is timed, SeLoRA's expansion tests and
   AdaLoRA's allocations included. ``step_time_ratio_vs_lora[m]`` = total step time of m / LoRA's.
2. *Memory*: a second interleaved pass from fresh adapters over the same batches measures the peak
   tensor memory (parameters, gradients, optimiser state, activations) of sampled steps: on CUDA the
   allocator's ``max_memory_allocated``, on the CPU torch's ``MemTracker`` (a dispatch mode that
   counts every live tensor storage; too slow to run while timing). Steps are sampled every
   ``--memory-every`` steps at (s + 1) % every ∈ {every/2, 0}, so with t = 40 one sample in two falls
   on a SeLoRA test step. ``peak_memory_ratio_vs_lora[m]`` = peak of m / LoRA's peak; the Table 7
   column is the average over the samples (the paper averages readings taken every 40 steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from selora.adapters import create_adapter, registered_methods
from selora.config import load_params
from selora.errors import DatasetFormatError, MissingWeightsError
from selora.io import Provenance, write_json

METHODS = ("lora", "adalora", "dylora", "selora")
Batch = dict[str, torch.Tensor]


# ---- inputs ------------------------------------------------------------------------------------
def check_inputs(base: Path, data: Path) -> None:
    if not (base / "model_index.json").is_file():
        raise MissingWeightsError(f"--base {base}: no model_index.json; run `selora pretrain-base` "
                                  "(or `make repro`) first, or pass --base /path/to/tiny-sd")
    if not (data / "train" / "metadata.jsonl").is_file():
        raise DatasetFormatError(f"--data {data}: no train/metadata.jsonl; run `selora make-synthetic` "
                                 "first, or pass --data /path/to/synthetic-cxr")


def make_batches(pipe, data: Path, steps: int, batch_size: int, seed: int) -> list[Batch]:
    """One batch per step from the train split: cached latents (VAE posterior mean), ids, noise, t."""
    from selora.imagefolder import read_manifest
    from selora.pretrain import encode, load_images, tokenize

    rows = [r for r in read_manifest(data) if r["split"] == "train"]
    if len(rows) < batch_size:
        raise DatasetFormatError(f"--data {data}: {len(rows)} train images, fewer than the batch size")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    with torch.no_grad():
        mean, _ = encode(pipe.vae, load_images(rows, size))
    latents = mean * pipe.vae.config.scaling_factor  # [n, 4, h, w]
    ids = tokenize(pipe.tokenizer, [r["text"] for r in rows])  # [n, 77]
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        pick = torch.randperm(len(rows), generator=gen)[:batch_size]
        batches.append({"latents": latents[pick], "input_ids": ids[pick],
                        "noise": torch.randn(latents[pick].shape, generator=gen),
                        "timesteps": torch.randint(0, 1000, (batch_size,), generator=gen)})
    return batches


# ---- one method under the engine's step --------------------------------------------------------
class MethodRun:
    """A method's adapter on private copies of the U-Net and text encoder, with its optimiser."""

    def __init__(self, name: str, cfg: Any, pipe, total_steps: int, params, seed: int, device: str) -> None:
        import copy

        from selora import tinysd

        self.name = name
        self.parts = {"unet": copy.deepcopy(pipe.unet).to(device),
                      "text_encoder": copy.deepcopy(pipe.text_encoder).to(device)}
        self.adapter = create_adapter(name, cfg, seed=seed)
        self.adapter.attach(self.parts, total_steps)
        self.optimizer = torch.optim.AdamW(self.adapter.trainable_parameters(), lr=params.train.lr,
                                           betas=tuple(params.train.betas),
                                           weight_decay=params.train.weight_decay)
        self.scheduler = tinysd.noise_scheduler()
        self.device = device
        for module in self.parts.values():
            module.train()

    def step(self, step: int, batch: Batch) -> float:
        from selora.pretrain import denoise_loss

        b = {k: v.to(self.device) for k, v in batch.items()}
        self.adapter.before_forward(step)
        loss = denoise_loss(self.parts["unet"], self.parts["text_encoder"], self.scheduler, b["latents"],
                            b["input_ids"], b["noise"], b["timesteps"])
        extra = self.adapter.extra_loss()
        (loss if extra is None else loss + extra).backward()
        self.optimizer.step()
        self.adapter.after_optimizer_step(step, self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def build_runs(methods: list[str], pipe, total_steps: int, params, seed: int,
               device: str) -> dict[str, MethodRun]:
    return {m: MethodRun(m, params.methods.get(m), pipe, total_steps, params, seed, device) for m in methods}


def rotated(names: list[str], step: int) -> list[str]:
    k = step % len(names)
    return names[k:] + names[:k]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_pass(runs: Mapping[str, MethodRun], batches: list[Batch], device: str) -> dict[str, list[float]]:
    """Seconds of every step of every method, interleaved."""
    times: dict[str, list[float]] = {m: [] for m in runs}
    for i, batch in enumerate(batches):
        for m in rotated(list(runs), i):
            _sync(device)
            t0 = time.perf_counter()
            runs[m].step(i, batch)
            _sync(device)
            times[m].append(time.perf_counter() - t0)
    return times


def peak_step_memory(run: MethodRun, step: int, batch: Batch) -> int:
    """Peak bytes of live tensors during one step (model, gradients, optimiser state, activations)."""
    if run.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run.step(step, batch)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    from torch.distributed._tools.mem_tracker import MemTracker

    class FrozenBaseMemTracker(MemTracker):
        # MemTracker hooks every parameter's gradient, which fails on frozen base weights; gradients
        # are still counted, as the backward ops that create them run inside the tracker.
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

    tracker = FrozenBaseMemTracker()
    tracker.track_external(*run.parts.values(), run.optimizer, *batch.values())
    with tracker:
        run.step(step, batch)
    return int(sum(snap["Total"] for snap in tracker.get_tracker_snapshot("peak").values()))


def memory_steps(steps: int, every: int) -> list[int]:
    half = max(1, every // 2)
    return [s for s in range(steps) if (s + 1) % every in (0, half % every)]


def memory_pass(runs: Mapping[str, MethodRun], batches: list[Batch],
                sample: list[int]) -> dict[str, list[int]]:
    """Peak bytes at the sampled steps; the other steps train untracked, interleaved as in timing."""
    peaks: dict[str, list[int]] = {m: [] for m in runs}
    wanted = set(sample)
    for i, batch in enumerate(batches):
        for m in rotated(list(runs), i):
            if i in wanted:
                peaks[m].append(peak_step_memory(runs[m], i, batch))
            else:
                runs[m].step(i, batch)
    return peaks


# ---- the report --------------------------------------------------------------------------------
def summarise(times: Mapping[str, list[float]], peaks: Mapping[str, list[int]],
              runs: Mapping[str, MethodRun]) -> dict[str, Any]:
    """Ratios vs LoRA and the Table 7/8 columns (average memory, training time)."""
    mib = 2 ** 20
    total = {m: sum(t) for m, t in times.items()}
    peak = {m: max(p) for m, p in peaks.items()}
    table = []
    for m in times:
        params = {row["part"]: row for row in runs[m].adapter.parameter_table()}
        table.append({
            "method": m,
            "avg_memory_mib": round(statistics.fmean(peaks[m]) / mib, 3),
            "peak_memory_mib": round(peak[m] / mib, 3),
            "train_time_s": round(total[m], 3),
            "step_time_ms_mean": round(1e3 * statistics.fmean(times[m]), 2),
            "step_time_ms_median": round(1e3 * statistics.median(times[m]), 2),
            "trainable_parameters": sum(r["trainable_parameters"] for r in params.values()),
            "unet_trainable_percent": round(params["unet"]["trainable_percent"], 3),
            "text_encoder_trainable_percent": round(params["text_encoder"]["trainable_percent"], 3),
        })
    return {
        "step_time_ratio_vs_lora": {m: round(total[m] / total["lora"], 4) for m in times},
        "peak_memory_ratio_vs_lora": {m: round(peak[m] / peak["lora"], 4) for m in peaks},
        "avg_memory_ratio_vs_lora": {m: round(statistics.fmean(peaks[m]) / statistics.fmean(peaks["lora"]), 4)
                                     for m in peaks},
        "table": table,
    }


def benchmark(base: Path, data: Path, steps: int, batch_size: int, memory_every: int, params, seed: int,
              device: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    from diffusers import StableDiffusionPipeline

    check_inputs(base, data)
    available = set(registered_methods())
    methods = [m for m in METHODS if m in available]
    skipped = {m: "not registered in this checkout" for m in METHODS if m not in available}
    for m, why in skipped.items():
        log(f"note: skipping {m}: {why}")
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    batches = make_batches(pipe, data, steps, batch_size, seed)
    log(f"timing {', '.join(methods)}: {steps} interleaved steps each, batch {batch_size}, {device}")
    times = timed_pass(build_runs(methods, pipe, steps, params, seed, device), batches, device)
    sample = memory_steps(steps, memory_every)
    log(f"memory: fresh adapters, peak tensor memory at steps {sample}")
    runs = build_runs(methods, pipe, steps, params, seed, device)
    peaks = memory_pass(runs, batches, sample)
    return {"device": device, "torch_threads": torch.get_num_threads(), "steps": steps,
            "batch_size": batch_size, "memory_steps": sample, "methods": methods, "skipped": skipped,
            **summarise(times, peaks, runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=Path("models/tiny-sd"))
    ap.add_argument("--data", type=Path, default=Path("data/raw/synthetic-cxr"))
    ap.add_argument("--params", default="params.yaml", help="params file; the method sections are used")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE override")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--memory-every", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="results/benchmarks/baselines.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params, args.overrides)
    prov = Provenance("benchmarks/baselines.py", params.raw)
    result = benchmark(args.base, args.data, args.steps, args.batch_size, args.memory_every, params,
                       params.seed, args.device)
    write_json(args.out, {**result, "provenance": prov.as_dict()})
    print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=1))
    print(f"{'method':8} {'avg MiB':>9} {'peak MiB':>9} {'time s':>8} {'ms/step':>8} {'trainable':>10}")
    for row in result["table"]:
        print(f"{row['method']:8} {row['avg_memory_mib']:9.3f} {row['peak_memory_mib']:9.3f} "
              f"{row['train_time_s']:8.2f} {row['step_time_ms_mean']:8.2f} {row['trainable_parameters']:10d}")


if __name__ == "__main__":
    main()
