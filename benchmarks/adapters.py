"""Training speed and peak memory of the adapter methods relative to plain LoRA, on the embedded
miniature (CPU), in one run and on the same batches.

    python benchmarks/adapters.py --out results/benchmarks/adapters.json \
        [--base models/tiny-sd] [--data data/raw/synthetic-cxr] [--steps 240] [--threads 1]

1. *Pilot*: SeLoRA (paper settings: λ = 1.1, t = 40, per-sample Fisher) trains ``--steps`` steps,
   untimed, to learn its final per-layer ranks (training on the CPU is deterministic, so the timed
   run below reaches the same ranks; the JSON says whether it did).
2. *Timed, interleaved*: (a) SeLoRA from rank 1, test steps included, and (b) plain fixed-rank LoRA
   (peft, ``rank_pattern`` = SeLoRA's final per-layer ranks, from its first step) each run the same
   ``--steps`` batches; their steps alternate (a b, b a, a b, ...) so machine noise hits both alike.
   ``step_time_ratio_vs_lora[m]`` = total step time of m / total step time of LoRA (a step =
   before_forward, forward, loss, backward, optimiser step, after_optimizer_step, zero_grad).
   A third, reference trainer runs in the same rotation: SeLoRA's own layer at the final ranks from
   step 0 and never tested, which splits the ratio into "growing + testing" and "layer vs peft".
   ``selora_test_step_cost_ratio`` = median over 16 adjacent (test step, plain step) pairs on the
   same batch after the run (test steps still expand); the run's own tests, each over the median
   of the 6 plain steps before it, are listed too.
3. *Peak memory*: each method in its own fresh subprocess (the same base model, batches and final
   ranks; SeLoRA resumes from its final state and runs a 12-step window with a test step), reading
   the peak RSS of that window (Linux: heap trimmed and the kernel's peak mark reset first, so
   loading does not count); the RSS before the window and the increment are reported too.

4. *All four methods* (paper Tables 7/8): ``benchmarks/baselines.py``'s interleaved run of lora,
   adalora, dylora and selora through the registry, on the same batches, LoRA at r = 4.

The headline mappings compare each method with plain LoRA **at its own rank budget**: SeLoRA with
LoRA at SeLoRA's final per-layer ranks (steps 1–3; the paper's Appendix D.2.1 comparison), AdaLoRA
(6 → 4) and DyLoRA (4) with LoRA r = 4 (step 4); ``lora`` = 1.0. ``all_methods_vs_lora_r4`` keeps
step 4's full result (SeLoRA included, against r = 4) and its Table 7/8 columns. The memory
readings differ in kind (peak RSS of a window for SeLoRA, peak tensor memory for the baselines) and
are ratios only against the LoRA of the same measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import baselines  # the sibling script: benchmarks/ is on sys.path when this runs as a script
import torch
from baselines import check_inputs

from selora.adapters import create_adapter
from selora.adapters._common import anchored, most_common
from selora.adapters.selora import SeLoraConfig
from selora.errors import SeloraError
from selora.io import Provenance, peak_rss_mb, write_json

GOAL = 1.01
FIXED = "selora_layer_fixed_final_ranks"  # reference trainer, not a method
SELORA = SeLoraConfig(init_rank=1, threshold=1.1, test_interval=40, fisher="per_sample", max_rank=None,
                      scale=1.0)


# ---- data and model ----------------------------------------------------------------------------
Batch = dict[str, torch.Tensor]


def make_batches(base: Path, data: Path, steps: int, batch_size: int, seed: int) -> list[Batch]:
    """One fixed batch per step (the same batches baselines.py draws for the same seed)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    return baselines.make_batches(pipe, data, steps, batch_size, seed)


def load_parts(base: Path) -> dict[str, torch.nn.Module]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    return {"unet": UNet2DConditionModel.from_pretrained(base / "unet").train(),
            "text_encoder": CLIPTextModel.from_pretrained(base / "text_encoder").train()}


def diffusion_loss(parts: dict[str, torch.nn.Module], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from selora.pretrain import denoise_loss
    from selora.tinysd import noise_scheduler

    return denoise_loss(parts["unet"], parts["text_encoder"], _SCHEDULER.setdefault("s", noise_scheduler()),
                        batch["latents"], batch["input_ids"], batch["noise"], batch["timesteps"])


_SCHEDULER: dict[str, Any] = {}


# ---- methods -----------------------------------------------------------------------------------
class AdapterTrainer:
    """Any registered adapter, stepped in the order the training engine uses."""

    def __init__(self, method: str, cfg: Any, parts: dict[str, torch.nn.Module], steps: int, lr: float,
                 seed: int) -> None:
        self.parts = parts
        self.adapter = create_adapter(method, cfg, seed=seed)
        self.adapter.attach(parts, steps)
        self.opt = torch.optim.Adam(self.adapter.trainable_parameters(), lr=lr)

    def step(self, i: int, batch: dict[str, torch.Tensor]) -> None:
        self.adapter.before_forward(i)
        loss = diffusion_loss(self.parts, batch)
        extra = self.adapter.extra_loss()
        (loss if extra is None else loss + extra).backward()
        self.opt.step()
        self.adapter.after_optimizer_step(i, self.opt)
        self.opt.zero_grad(set_to_none=True)

    def trainable(self) -> int:
        return sum(p.numel() for p in self.adapter.trainable_parameters())


class PeftLoraTrainer:
    """Plain LoRA (peft) with the given per-layer ranks, alpha = rank (scale 1, as SeLoRA's s = 1)."""

    def __init__(self, ranks: dict[str, dict[str, int]], parts: dict[str, torch.nn.Module], lr: float,
                 seed: int) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        torch.manual_seed(seed)
        self.parts = parts
        for part, layer_ranks in ranks.items():
            default = most_common(layer_ranks.values())
            pattern = {anchored(n): r for n, r in layer_ranks.items() if r != default}
            cfg = LoraConfig(r=default, lora_alpha=default, target_modules=sorted(layer_ranks),
                             rank_pattern=pattern, alpha_pattern=dict(pattern))
            inject_adapter_in_model(cfg, parts[part])
            got = {n.removesuffix(".lora_A.default"): m.out_features for n, m in parts[part].named_modules()
                   if n.endswith(".lora_A.default")}
            if got != layer_ranks:
                raise RuntimeError(f"peft did not give {part} the requested per-layer ranks")
        self.params = [p for m in parts.values() for n, p in m.named_parameters() if "lora_" in n]
        for m in parts.values():
            for n, p in m.named_parameters():
                p.requires_grad_("lora_" in n)
        self.opt = torch.optim.Adam(self.params, lr=lr)

    def step(self, i: int, batch: dict[str, torch.Tensor]) -> None:
        diffusion_loss(self.parts, batch).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)


@dataclass
class Setup:
    base: Path
    steps: int
    lr: float
    seed: int
    ranks: dict[str, dict[str, int]]


# name -> builder(setup) returning a trainer with .step(i, batch) and .trainable()
METHODS: dict[str, Callable[[Setup], Any]] = {
    "lora": lambda s: PeftLoraTrainer(s.ranks, load_parts(s.base), s.lr, s.seed),
    "selora": lambda s: AdapterTrainer("selora", SELORA, load_parts(s.base), s.steps, s.lr, s.seed),
}


# ---- measurements ------------------------------------------------------------------------------
def selora_at_final_ranks(setup: Setup, state: dict) -> AdapterTrainer:
    """Reference: SeLoRA's own layer at its final ranks from step 0, never tested — separates the
    cost of growing and testing from the difference between SeLoRA's layer and peft's."""
    tr = AdapterTrainer("selora", replace(SELORA, test_interval=10**9), load_parts(setup.base), setup.steps,
                        setup.lr, setup.seed)
    tr.adapter.load_state_dict(state)
    tr.opt = torch.optim.Adam(tr.adapter.trainable_parameters(), lr=setup.lr)
    return tr


def timed_interleaved(trainers: dict[str, Any], batches: list[Batch]) -> dict[str, list[float]]:
    """Each batch is stepped by every trainer in turn, the order rotating from step to step."""
    names = list(trainers)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i, batch in enumerate(batches):
        j = i % len(names)
        for name in names[j:] + names[:j]:
            t0 = time.perf_counter()
            trainers[name].step(i, batch)
            times[name].append(time.perf_counter() - t0)
    return times


def paired_test_step_costs(trainer: AdapterTrainer, batches: list[Batch], first: int,
                           pairs: int) -> list[float]:
    """Test step / plain step for ``pairs`` adjacent pairs on the same batch (order alternating), after
    training: a steadier estimate than the run's few test steps. Test steps may still expand."""
    t = trainer.adapter.cfg.test_interval
    out = []
    for p in range(pairs):
        test = (first // t + p + 1) * t - 1  # a test step number; test + 1 is a plain one
        batch = batches[p % len(batches)]
        dt = {}
        for step in (test, test + 1) if p % 2 == 0 else (test + 1, test):
            t0 = time.perf_counter()
            trainer.step(step, batch)
            dt[step] = time.perf_counter() - t0
        out.append(dt[test] / dt[test + 1])
    return out


def test_step_costs(times: list[float], t: int) -> list[float]:
    """Each SeLoRA test step over the median of the 6 plain steps before it (same ranks)."""
    out = []
    for i in range(t - 1, len(times), t):
        before = times[max(0, i - 6):i]
        if before:
            out.append(times[i] / statistics.median(before))
    return out


def memory_worker(method: str, work: Path) -> None:
    """Runs in a fresh process: builds one method, then measures its training window's peak RSS.

    Before the window, freed heap is returned to the OS (``malloc_trim``) and the kernel's peak-RSS
    mark is reset (``/proc/self/clear_refs`` = 5), so the peak belongs to training, not to loading."""
    import ctypes
    import gc

    spec = json.loads((work / "spec.json").read_text())
    batches = torch.load(work / "batches.pt", weights_only=True)
    torch.set_num_threads(spec["threads"])
    setup = Setup(Path(spec["base"]), spec["steps"], spec["lr"], spec["seed"], spec["ranks"])
    trainer = METHODS[method](setup)
    first = 0
    if method == "selora":  # resume SeLoRA at its final ranks; the window holds one test step
        trainer.adapter.load_state_dict(torch.load(work / "selora_state.pt", weights_only=True))
        trainer.opt = torch.optim.Adam(trainer.adapter.trainable_parameters(), lr=setup.lr)
        first = spec["steps"] - spec["window"] // 2
    gc.collect()
    try:  # Linux; elsewhere the process's lifetime peak (loading included) is all there is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    baseline = _status_mb("VmRSS") if reset else float("nan")
    for j in range(spec["window"]):
        trainer.step(first + j, batches[j % len(batches)])
    print(json.dumps({"peak_rss_mb": _status_mb("VmHWM") if reset else peak_rss_mb(),
                      "baseline_rss_mb": baseline, "process_peak_rss_mb": peak_rss_mb(),
                      "peak_mark_reset": reset}))


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(methods: list[str], spec: dict, batches, selora_state, window: int) -> dict[str, dict]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "spec.json").write_text(json.dumps({**spec, "window": window}))
        torch.save(batches[:window], work / "batches.pt")
        torch.save(selora_state, work / "selora_state.pt")
        env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
        for method in methods:
            res = subprocess.run([sys.executable, __file__, "--memory-worker", method, "--work", str(work)],
                                 capture_output=True, text=True, env=env, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"memory worker {method} failed:\n{res.stderr[-3000:]}")
            out[method] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ---- main --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/benchmarks/adapters.json")
    ap.add_argument("--base", default="models/tiny-sd", help="diffusers folder of the base model")
    ap.add_argument("--data", default="data/raw/synthetic-cxr", help="imagefolder with a train split")
    ap.add_argument("--steps", type=int, default=240, help="training steps per method (t = 40: 6 tests)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest timings)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="params.yaml", help="params file (baselines' method sections)")
    ap.add_argument("--baseline-steps", type=int, default=80, help="steps per method in step 4")
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker, Path(args.work))
        return
    try:
        result = run(args)
    except SeloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    result = {**result, **all_methods(args, result)}
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k in SUMMARY_KEYS}, indent=1))


def all_methods(args: argparse.Namespace, selora_result: dict[str, Any]) -> dict[str, Any]:
    """Step 4: every registered method against LoRA r = 4 (baselines.py), merged into the mappings."""
    from selora.config import load_params

    params = load_params(args.params)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = baselines.benchmark(Path(args.base), Path(args.data), args.baseline_steps, args.batch_size, 40,
                              params, params.seed, device)
    step = {"lora": 1.0, **{m: res["step_time_ratio_vs_lora"][m] for m in ("adalora", "dylora")},
            "selora": selora_result["step_time_ratio_vs_lora"]["selora"]}
    mem = {"lora": 1.0, **{m: res["peak_memory_ratio_vs_lora"][m] for m in ("adalora", "dylora")},
           "selora": selora_result["peak_memory_ratio_vs_lora"]["selora"]}
    return {"step_time_ratio_vs_lora": step, "peak_memory_ratio_vs_lora": mem, "all_methods_vs_lora_r4": res}


SUMMARY_KEYS = ("step_time_ratio_vs_lora", "peak_memory_ratio_vs_lora", "selora_test_step_cost_ratio",
                "paper_worst_case_ratio", "goal_ratio", "selora_final_rank_mean", "wall_s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    base, data = Path(args.base), Path(args.data)
    check_inputs(base, data)
    torch.set_num_threads(args.threads)
    prov = Provenance("benchmarks/adapters.py", vars(args))
    t_start = time.perf_counter()
    batches = make_batches(base, data, args.steps, args.batch_size, args.seed)
    setup = Setup(base, args.steps, args.lr, args.seed, ranks={})

    pilot = METHODS["selora"](setup)
    for i, batch in enumerate(batches):
        pilot.step(i, batch)
    setup.ranks = pilot.adapter.rank_map()
    selora_state = pilot.adapter.state_dict()
    del pilot

    methods = ["selora", "lora"]
    trainers = {m: METHODS[m](setup) for m in methods}
    trainers[FIXED] = selora_at_final_ranks(setup, selora_state)
    times = timed_interleaved(trainers, batches)
    selora_ranks = trainers["selora"].adapter.rank_map()
    history_rows = trainers["selora"].adapter.history()
    total = {m: sum(ts) for m, ts in times.items()}
    costs = test_step_costs(times["selora"], SELORA.test_interval)
    trainable = {m: trainers[m].trainable() for m in methods}
    table = trainers["selora"].adapter.parameter_table()
    paired = paired_test_step_costs(trainers["selora"], batches, args.steps, pairs=16)
    mem = peak_memory(methods, {"base": str(base), "steps": args.steps, "lr": args.lr, "seed": args.seed,
                                "threads": args.threads, "ranks": setup.ranks},
                      batches, selora_state, window=2 * 6)
    all_ranks = [r for layers in setup.ranks.values() for r in layers.values()]
    t = SELORA.test_interval
    return {
        "step_time_ratio_vs_lora": {m: round(total[m] / total["lora"], 4) for m in methods if m != "lora"},
        "peak_memory_ratio_vs_lora": {m: round(mem[m]["peak_rss_mb"] / mem["lora"]["peak_rss_mb"], 4)
                                      for m in methods if m != "lora"},
        "selora_test_step_cost_ratio": round(statistics.median(paired), 4),
        "paper_worst_case_ratio": round(1 + 1 / t, 4),
        "goal_ratio": GOAL,
        "timing": {
            "steps": args.steps, "batch_size": args.batch_size, "threads": args.threads,
            "total_s": {m: round(v, 3) for m, v in total.items()},
            "median_step_s": {m: round(statistics.median(ts), 5) for m, ts in times.items()},
            "paired_median_ratio": {m: round(statistics.median(a / b for a, b in
                                                               zip(times[m], times["lora"], strict=True)), 4)
                                    for m in [*methods, FIXED] if m != "lora"},
            "selora_vs_its_layer_at_final_ranks": round(total["selora"] / total[FIXED], 4),
            "selora_layer_at_final_ranks_vs_lora": round(total[FIXED] / total["lora"], 4),
            "selora_test_steps": list(range(t - 1, args.steps, t)),
            "selora_test_step_cost_ratios_in_run": [round(c, 4) for c in costs],
            "selora_test_step_cost_ratios_paired": [round(c, 4) for c in paired],
            "amortised_test_overhead": round(1 + (statistics.median(paired) - 1) / t, 4),
        },
        "memory": {"method": "peak RSS (VmHWM) of the training window in a fresh subprocess per method, "
                             "after malloc_trim and a reset of the peak mark; MiB",
                   **{m: {k: round(v, 1) if isinstance(v, float) else v for k, v in mem[m].items()}
                      for m in methods},
                   "increment_ratio_vs_lora": {
                       m: round((mem[m]["peak_rss_mb"] - mem[m]["baseline_rss_mb"])
                                / (mem["lora"]["peak_rss_mb"] - mem["lora"]["baseline_rss_mb"]), 4)
                       for m in methods if m != "lora"}},
        "selora_final_ranks": setup.ranks,
        "selora_final_rank_mean": round(statistics.mean(all_ranks), 3),
        "selora_rank_histogram": dict(sorted(Counter(all_ranks).items())),
        "selora_timed_run_reached_pilot_ranks": selora_ranks == setup.ranks,
        "selora_expansions": sum(r["expanded"] for r in history_rows),
        "selora_mean_rank_after_test": {step: round(statistics.mean(r["rank"] for r in history_rows
                                                                    if r["step"] == step), 3)
                                        for step in sorted({r["step"] for r in history_rows})},
        "trainable_parameters": trainable,
        "selora_parameter_table": table,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "provenance": prov.as_dict(),
    }


if __name__ == "__main__":
    main()
