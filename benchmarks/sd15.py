"""SeLoRA, the baselines and the training engine on the SD 1.5 architecture (CPU ratios; GPU optional).

    python benchmarks/sd15.py --out results/benchmarks/sd15.json [--latent 8] [--batch-size 2]
        [--rounds 3] [--threads 1] [--skip sampling inception] [--device cuda]

The exact SD 1.5 U-Net (184 linear layers) and CLIP text encoder (72), built from the published
configs (:mod:`selora.sd15`) with random weights (no download; no VAE: latents are random), at a
small latent size on the CPU. The frozen base is built **once** and every method trains on its own
module tree around the *same* base tensors (a deep copy that shares the parameters), so one 4 GB
base serves all methods. Everything below runs in one process and one run:

1. *Interleaved steps*: every method steps the same batches, the order rotating per round (round 0
   is a warm-up and is not counted): ``lora`` = peft LoRA at SeLoRA's per-layer ranks, ``selora``
   at those ranks (plain steps), ``lora_r4``, ``adalora`` (in its rank-allocation phase), ``dylora``.
   Each step is the engine's order (before_forward, forward, loss, backward, optimiser step,
   after_optimizer_step, zero_grad). The rank map is the embedded run's final rank histogram,
   scaled to SD 1.5's 256 layers (no pilot: SD 1.5 steps cost seconds each here).
2. *SeLoRA's test step*: ``--pairs`` adjacent (test step, plain step) pairs on one batch, order
   alternating; ``selora_test_step_cost_ratio`` = median test / plain. ``step_time_ratio_vs_lora``
   for SeLoRA is its interleaved plain-step total over LoRA's, times the amortised test cost
   ``1 + (cost − 1)/t`` at t = 40 (a whole 40-step period per method does not fit in 10 minutes).
   With ``--profile``, one more test step and plain step run under ``torch.profiler``
   (``test_step_profile``: host and device time per step, the ops that make the difference).
3. *Peak memory*: around every counted step, freed heap goes back to the OS (``malloc_trim``) and
   the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``); the step's peak is ``VmHWM``
   after it (benchmarks/adapters.py's reading, taken per step in this one process, where everything
   but the stepping method is the same for all). ``peak_memory_ratio_vs_lora`` compares the largest
   step peak of each method (SeLoRA: test steps included) with LoRA's at the same ranks (AdaLoRA,
   DyLoRA: with LoRA r = 4); the step's increment over its starting RSS is the activation memory.
4. *Scale probe*: one LoRA step and one SeLoRA test step at twice the latent size, so activation
   memory can be extrapolated linearly in (samples × latent pixels), and hooks record how many
   tokens each linear layer sees per sample at both sizes (spatial layers scale, text ones do not).
   ``selora_test_step_extra_mb_at_paper_scale``: the per-sample gradients SeLoRA holds on a test
   step, 4 bytes × N × Σ_layers (r·in + out·(r+1)), at the paper's 384 px / batch 6 and 224 px /
   batch 8, next to the extrapolated activation memory of a LoRA step.
5. *Engine vs diffusers-style loop*: ``selora train`` itself (its loop, hooks, logs, with LoRA r = 4)
   on an in-memory SD 1.5 pipeline (random SD 1.5 VAE, a small CLIP tokenizer) against a minimal
   loop as diffusers' ``train_text_to_image_lora.py`` writes it (peft adapters via ``add_adapter``,
   AdamW) on the same model, data and draws; blocks in ABBA order. ``engine_vs_diffusers_loop`` =
   loop time / engine time per step (≥ 1.0: the engine is not slower).
6. *Sampling* (``selora sample`` vs ``StableDiffusionPipeline.__call__`` on the same prompts and
   seeds, ABBA) and *Inception* feature extraction in float64 vs float32 (random FID-Inception
   weights): throughput ratios and the FID difference the dtype makes.

The model and batches live in ``_sd15_model.py``, phases 5 and 6 in ``_sd15_pipeline.py``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from _sd15_model import Batch, Parts, build_base, diffusion_loss, make_batches, shared_copy  # siblings
from _sd15_pipeline import engine_vs_loop, inception_dtypes

from selora import sd15
from selora.adapters import create_adapter
from selora.adapters.base import linear_modules
from selora.adapters.lora import LoraAdapter
from selora.adapters.selora import SeLoraConfig
from selora.config import load_params
from selora.io import Provenance, write_json

SELORA = SeLoraConfig(
    init_rank=1, threshold=1.1, test_interval=40, fisher="per_sample", max_rank=None, scale=1.0
)
# The embedded benchmark's final SeLoRA ranks (benchmarks/README.md, adapters.py): rank -> layers of 92.
EMBEDDED_RANK_HISTOGRAM = {1: 1, 2: 9, 3: 32, 4: 20, 5: 23, 6: 6, 7: 1}
PAPER_SETTINGS = {"384px_batch6": (384, 6), "224px_batch8": (224, 8)}
GOALS = {
    "step_time_ratio_vs_lora": 1.01,
    "selora_test_step_cost_ratio": 1.10,
    "peak_memory_ratio_vs_lora": 1.0,
    "engine_vs_diffusers_loop": 1.0,
}


# ---- the rank map --------------------------------------------------------------------------------
def rank_map(
    parts: Parts, histogram: Mapping[int, int] = EMBEDDED_RANK_HISTOGRAM, seed: int = 0
) -> dict[str, dict[str, int]]:
    """``histogram``'s rank distribution scaled to these parts' linear layers (largest-remainder
    rounding), assigned to layers in a seeded random order."""
    names = [(p, n) for p, m in parts.items() for n in linear_modules(m)]
    total = sum(histogram.values())
    exact = {r: c * len(names) / total for r, c in histogram.items()}
    counts = {r: math.floor(v) for r, v in exact.items()}
    for r in sorted(exact, key=lambda r: exact[r] - counts[r], reverse=True)[
        : len(names) - sum(counts.values())
    ]:
        counts[r] += 1
    ranks = [r for r in sorted(counts) for _ in range(counts[r])]
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    out: dict[str, dict[str, int]] = {p: {} for p in parts}
    for i, j in enumerate(order):
        p, n = names[j]
        out[p][n] = ranks[i]
    return out


# ---- methods ------------------------------------------------------------------------------------
class Trainer:
    """One adapter on its own shared copy of the base, stepped in the training engine's order."""

    def __init__(
        self,
        adapter: Any,
        parts: Parts,
        total_steps: int,
        lr: float = 1e-4,
        step_offset: int = 0,
        autocast: torch.autocast | None = None,
        attach: bool = True,
    ) -> None:
        self.parts, self.adapter = parts, adapter
        if attach:
            adapter.attach(parts, total_steps)
        self.opt = torch.optim.Adam(adapter.trainable_parameters(), lr=lr)
        self.offset = step_offset
        self.autocast = autocast

    def step(self, i: int, batch: Batch) -> None:
        step = self.offset + i
        self.adapter.before_forward(step)
        loss = diffusion_loss(self.parts, batch, self.autocast)
        extra = self.adapter.extra_loss()
        (loss if extra is None else loss + extra).backward()
        self.opt.step()
        self.adapter.after_optimizer_step(step, self.opt)
        self.opt.zero_grad(set_to_none=True)


def selora_at_ranks(
    parts: Parts, ranks: Mapping[str, Mapping[str, int]], seed: int, autocast: torch.autocast | None = None
) -> Trainer:
    """SeLoRA grown to ``ranks`` with a trained-looking state (A Kaiming, B small and non-zero, so
    the Fisher test sees gradients in every factor as it does mid-training)."""
    adapter = create_adapter("selora", SELORA, seed=seed)
    adapter.attach(parts)
    gen = torch.Generator().manual_seed(seed)
    for (part, name), layer in adapter.layers.items():
        r = ranks[part][name]
        bound = 1 / math.sqrt(layer.in_features)
        a = (torch.rand(r, layer.in_features, generator=gen) * 2 - 1) * bound
        layer.set_factors(a, 1e-3 * torch.randn(layer.out_features, r, generator=gen))
    return Trainer(adapter, parts, 0, autocast=autocast, attach=False)


def build_trainers(
    base: Parts,
    ranks: dict[str, dict[str, int]],
    params: Any,
    seed: int,
    methods: list[str],
    autocast: torch.autocast | None = None,
) -> dict[str, Trainer]:
    """The compared methods, each on its own shared copy of the base."""
    total = 1000  # AdaLoRA's schedule length; it is stepped inside its allocation phase
    builders: dict[str, Callable[[], Trainer]] = {
        "lora": lambda: Trainer(
            LoraAdapter.at_ranks(ranks, seed=seed), shared_copy(base), total, autocast=autocast
        ),
        "selora": lambda: selora_at_ranks(shared_copy(base), ranks, seed, autocast),
        "lora_r4": lambda: Trainer(
            create_adapter("lora", params.methods.get("lora"), seed=seed),
            shared_copy(base),
            total,
            autocast=autocast,
        ),
        "adalora": lambda: Trainer(
            create_adapter("adalora", params.methods.get("adalora"), seed=seed),
            shared_copy(base),
            total,
            step_offset=total // 4,
            autocast=autocast,
        ),
        "dylora": lambda: Trainer(
            create_adapter("dylora", params.methods.get("dylora"), seed=seed),
            shared_copy(base),
            total,
            autocast=autocast,
        ),
    }
    return {m: builders[m]() for m in methods}


# ---- peak memory of one step --------------------------------------------------------------------
def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> float | None:
    """Return freed heap to the OS and reset the kernel's peak-RSS mark; the RSS now (MiB), or None
    where this is not Linux (then no per-step peak can be read)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmRSS")
    except OSError:
        return None


DEVICE = torch.device("cpu")  # set by run(); CUDA steps read the allocator's peak instead of RSS


def measured_step(fn: Callable[[], None]) -> dict[str, float]:
    """Run one step; its seconds and its peak memory and the memory it started from (MiB): the
    process's RSS on the CPU (Linux), allocated tensor memory on CUDA."""
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated() / 2**20
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return {
            "s": time.perf_counter() - t0,
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
            "start_mb": start,
        }
    start = reset_peak()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    out = {"s": dt}
    if start is not None:
        out |= {"peak_mb": _status_mb("VmHWM"), "start_mb": start}
    return out


def interleaved(
    trainers: Mapping[str, Trainer], batches: list[Batch], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Round 0 warms up; rounds 1..rounds are recorded. Each round steps every method on the same
    batch, in an order rotated by the round."""
    names = list(trainers)
    rec: dict[str, list[dict[str, float]]] = {m: [] for m in names}
    for i in range(rounds + 1):
        k = i % len(names)
        for m in names[k:] + names[:k]:
            res = measured_step(partial(trainers[m].step, i, batches[i % len(batches)]))
            if i:
                rec[m].append(res)
    return rec


def test_pairs(selora: Trainer, batches: list[Batch], pairs: int) -> list[dict[str, dict[str, float]]]:
    """Adjacent (test step, plain step) pairs of SeLoRA on one batch, order alternating."""
    t = SELORA.test_interval
    out = []
    for p in range(pairs):
        test = (p + 1) * t - 1
        batch = batches[p % len(batches)]
        res = {}
        for kind, step in (("test", test), ("plain", test + 1))[:: 1 if p % 2 == 0 else -1]:
            res[kind] = measured_step(partial(selora.step, step, batch))
        out.append(res)
    return out


def profile_test_step(selora: Trainer, batch: Batch, top: int = 15) -> dict[str, Any]:
    """One SeLoRA test step and one plain step under ``torch.profiler``: where a test step's extra
    time goes. Per step: wall seconds, the host time the ops took (dispatch and Python), their calls
    and, on CUDA, the kernels' device time (the device events only, as torch's own table sums it:
    an op's row also carries its kernels' time); ``host_bound`` says whether the step waited on the
    host (wall well above device time: many small kernels) rather than on the GPU. Then the ``top``
    host ops by the test step's extra host time, with their extra device time on CUDA."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = DEVICE.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t = SELORA.test_interval
    steps: dict[str, dict[str, Any]] = {}
    for kind, step in (("test", 10 * t - 1), ("plain", 10 * t)):
        gc.collect()
        with profile(activities=acts) as prof:
            res = measured_step(partial(selora.step, step, batch))
        events = prof.key_averages()
        host = [e for e in events if e.device_type == DeviceType.CPU]
        device = sum(e.self_device_time_total for e in events if e.device_type != DeviceType.CPU) / 1e6
        steps[kind] = {
            "s": round(res["s"], 4),
            "host_op_s": round(sum(e.self_cpu_time_total for e in host) / 1e6, 4),
            "device_s": round(device, 4) if cuda else None,
            "op_calls": sum(e.count for e in host),
            "_ops": {e.key: (e.self_cpu_time_total / 1e3, e.self_device_time_total / 1e3, e.count)
                     for e in host},
        }
    test, plain = steps["test"]["_ops"], steps["plain"]["_ops"]
    # op → (extra host ms, extra device ms, plain calls): what the test step adds to a plain one
    extra = {}
    for k, (test_host, test_dev, _) in test.items():
        plain_host, plain_dev, plain_calls = plain.get(k, (0.0, 0.0, 0))
        extra[k] = (test_host - plain_host, test_dev - plain_dev, plain_calls)
    ranked = sorted(extra, key=lambda k: extra[k][0], reverse=True)[:top]
    out: dict[str, Any] = {
        kind: {k: v for k, v in st.items() if not k.startswith("_")} for kind, st in steps.items()
    }
    out["extra_ms_by_op"] = [
        {"op": k, "extra_host_ms": round(extra[k][0], 3),
         "extra_device_ms": round(extra[k][1], 3) if cuda else None,
         "test_calls": test[k][2], "plain_calls": extra[k][2]}
        for k in ranked
    ]
    if cuda:
        out["host_bound"] = {k: out[k]["s"] > 1.2 * out[k]["device_s"] for k in steps}
    return out


# ---- what each layer sees --------------------------------------------------------------------------
@contextmanager
def token_counts(parts: Parts) -> Iterator[dict[str, tuple[int, int, int]]]:
    """{"part.layer": (in, out, tokens per sample)} of every base linear layer during the forward (of
    adapted parts too: the adapters' own linears are skipped, ``base_layer`` names map back)."""
    seen: dict[str, tuple[int, int, int]] = {}
    hooks = []
    for p, m in parts.items():
        for n, lin in linear_modules(m).items():
            if "lora_" in n:
                continue
            key = f"{p}.{n.removesuffix('.base_layer')}"

            def hook(mod, args, key=key):
                x = args[0]
                n_samples = x.shape[0] if x.ndim > 1 else 1
                seen[key] = (mod.in_features, mod.out_features, x[..., 0].numel() // n_samples)

            hooks.append(lin.register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def per_sample_gradient_mb(
    layers: Mapping[str, tuple[int, int]], ranks: Mapping[str, int], n: int, bytes_per: int = 4
) -> float:
    """What a per-sample Fisher test holds at the end of the backward: N·(r·in + out·(r+1)) numbers per
    layer (∂A_i, ∂B_i and the candidate column's gradient for each sample)."""
    numbers = sum(n * (ranks[k] * i + o * (ranks[k] + 1)) for k, (i, o) in layers.items())
    return numbers * bytes_per / 2**20


def paper_scale(
    shapes_small: Mapping[str, tuple[int, int, int]],
    shapes_big: Mapping[str, tuple[int, int, int]],
    latent_small: int,
    latent_big: int,
    ranks: Mapping[str, int],
    act_mb: Mapping[int, float],
    batch_size: int,
) -> dict[str, Any]:
    """Per-sample gradient memory of a test step at the paper's settings, the largest fp32 upcast a
    fp16 test step makes (one layer's x and g at a time), and LoRA's activation memory extrapolated
    linearly in samples × latent pixels from the two measured sizes."""
    spatial = {k for k in shapes_small if shapes_big[k][2] != shapes_small[k][2]}
    layers = {k: (i, o) for k, (i, o, _) in shapes_small.items()}
    (l1, a1), (l2, a2) = sorted(act_mb.items())
    slope = (a2 - a1) / (batch_size * (l2**2 - l1**2))  # MiB per sample-latent-pixel
    out: dict[str, Any] = {}
    for name, (px, n) in PAPER_SETTINGS.items():
        lat = px // sd15.LATENT_FACTOR
        tokens = {
            k: t * (lat / latent_small) ** 2 if k in spatial else t for k, (_, _, t) in shapes_small.items()
        }
        upcast = max(n * tokens[k] * (i + o) * 4 / 2**20 for k, (i, o) in layers.items())
        extra = per_sample_gradient_mb(layers, ranks, n)
        act = a1 + slope * (n * lat**2 - batch_size * l1**2)
        out[name] = {
            "latent": lat,
            "batch": n,
            "per_sample_gradients_mb": round(extra, 1),
            "batch_fisher_gradients_mb": round(per_sample_gradient_mb(layers, ranks, 1), 1),
            "largest_fp16_upcast_mb": round(upcast, 1),
            "lora_step_activation_mb_extrapolated": round(act, 1),
            "extra_vs_lora_activation": round(extra / act, 4) if act > 0 else None,
        }
    out["spatial_layers"] = len(spatial)
    out["layers"] = len(layers)
    return out


# ---- the run ------------------------------------------------------------------------------------
def summarise_steps(
    rec: Mapping[str, list[dict[str, float]]],
    pairs: list[dict[str, dict[str, float]]],
) -> dict[str, Any]:
    """Step-time and peak-memory ratios; SeLoRA's time includes its test cost amortised at t."""
    total = {m: sum(r["s"] for r in rs) for m, rs in rec.items()}
    cost = statistics.median(p["test"]["s"] / p["plain"]["s"] for p in pairs) if pairs else float("nan")
    amortised = 1 + (cost - 1) / SELORA.test_interval
    ref = {"selora": "lora", "adalora": "lora_r4", "dylora": "lora_r4", "lora_r4": "lora"}
    step = {
        m: round(total[m] / total[ref[m]] * (amortised if m == "selora" else 1.0), 4) for m in rec if m in ref
    }
    out: dict[str, Any] = {
        "step_time_ratio_vs_lora": step,
        "selora_test_step_cost_ratio": round(cost, 4),
        "selora_plain_step_ratio_vs_lora": round(total["selora"] / total["lora"], 4)
        if "selora" in rec
        else None,
        "amortised_test_overhead": round(amortised, 4),
        "median_step_s": {m: round(statistics.median(r["s"] for r in rs), 3) for m, rs in rec.items()},
        "comparison": {m: ref[m] for m in step},
    }
    if all("peak_mb" in r for rs in rec.values() for r in rs):
        seen = {m: list(rs) for m, rs in rec.items()}
        if "selora" in seen:
            seen["selora"] += [r for p in pairs for r in p.values()]
        peak = {m: max(r["peak_mb"] for r in rs) for m, rs in seen.items()}
        inc = {m: max(r["peak_mb"] - r["start_mb"] for r in rs) for m, rs in seen.items()}
        out["peak_memory_ratio_vs_lora"] = {m: round(peak[m] / peak[ref[m]], 4) for m in step}
        out["memory"] = {
            "peak_rss_mb": {m: round(v, 1) for m, v in peak.items()},
            "step_increment_mb": {m: round(v, 1) for m, v in inc.items()},
            "increment_ratio_vs_lora": {m: round(inc[m] / inc[ref[m]], 4) for m in step},
            "selora_test_step_increment_mb": [
                round(p["test"]["peak_mb"] - p["test"]["start_mb"], 1) for p in pairs
            ],
            "selora_plain_step_increment_mb": [
                round(p["plain"]["peak_mb"] - p["plain"]["start_mb"], 1) for p in pairs
            ],
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    global DEVICE
    DEVICE = torch.device(args.device)
    t_start = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:  # wall seconds of each phase, logged as it ends
        phases[name] = round(time.perf_counter() - t_start - sum(phases.values()), 1)
        print(f"[sd15] {name}: {phases[name]} s", file=sys.stderr, flush=True)

    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    tiny = args.tiny
    unet_cfg, text_cfg = sd15.scaled() if tiny else (None, None)
    base = {k: m.to(DEVICE) for k, m in build_base(unet_cfg, text_cfg, args.seed).items()}
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    autocast = torch.autocast(DEVICE.type, dtype=amp) if amp else None
    build_s = time.perf_counter() - t_start
    phase("build")
    ranks = rank_map(base, seed=args.seed)
    vocab = (text_cfg or sd15.TEXT_ENCODER)["vocab_size"]
    batches = [
        {k: v.to(DEVICE) for k, v in b.items()}
        for b in make_batches(args.rounds + 1, args.batch_size, args.latent, vocab, args.seed)
    ]
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
        "precision": args.precision,
        "torch_threads": args.threads,
        "latent": args.latent,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "pairs": args.pairs,
        "architecture": "sd15 scaled (tiny)" if tiny else "sd15",
        "build_s": round(build_s, 1),
        "goals": GOALS,
    }
    result["adapted_layers"] = {p: len(linear_modules(m)) for p, m in base.items()}
    all_ranks = [r for layers in ranks.values() for r in layers.values()]
    result["rank_map"] = {
        "source": "embedded adapters.py run's final histogram, scaled",
        "mean": round(statistics.mean(all_ranks), 3),
        "histogram": dict(sorted(Counter(all_ranks).items())),
    }

    trainers = build_trainers(base, ranks, params, args.seed, args.methods, autocast)
    probe = trainers.get("lora")
    with token_counts(probe.parts) as small:
        rec = interleaved(trainers, batches, args.rounds)
    phase("interleaved")
    pairs = test_pairs(trainers["selora"], batches, args.pairs) if "selora" in trainers else []
    phase("test_pairs")
    if args.profile:
        try:  # an extra: a profiler that cannot start (no CUPTI) must not cost the run's numbers
            result["test_step_profile"] = profile_test_step(trainers["selora"], batches[0])
        except Exception as exc:
            result["test_step_profile"] = {"error": f"{type(exc).__name__}: {exc}"}
        phase("profile")
    result |= summarise_steps(rec, pairs)
    result["selora_ranks_after_tests_mean"] = (
        round(statistics.mean(layer.rank for layer in trainers["selora"].adapter.layers.values()), 3)
        if "selora" in trainers
        else None
    )

    # scale probe: twice the latent size, one LoRA step and one SeLoRA test step
    big_latent = 2 * args.latent
    big = {
        k: v.to(DEVICE)
        for k, v in make_batches(1, args.batch_size, big_latent, vocab, args.seed + 1)[0].items()
    }
    with token_counts(probe.parts) as large:
        lora_big = measured_step(partial(probe.step, 10**6, big))
    sel_big = measured_step(partial(trainers["selora"].step, 2 * 10**6 + SELORA.test_interval - 1, big))
    phase("scale_probe")
    small_lora = (
        min(r["peak_mb"] - r["start_mb"] for r in rec["lora"]) if "peak_mb" in lora_big else float("nan")
    )
    act = {
        args.latent: small_lora,
        big_latent: lora_big.get("peak_mb", math.nan) - lora_big.get("start_mb", 0),
    }
    flat = {f"{p}.{n}": r for p, layers in ranks.items() for n, r in layers.items()}
    paper = paper_scale(small, large, args.latent, big_latent, flat, act, args.batch_size)
    paper_r4 = paper_scale(
        small, large, args.latent, big_latent, dict.fromkeys(flat, 4), act, args.batch_size
    )
    measured_extra = per_sample_gradient_mb({k: v[:2] for k, v in small.items()}, flat, args.batch_size)
    result["selora_test_step_extra_mb_at_paper_scale"] = {
        k: v["per_sample_gradients_mb"] for k, v in paper.items() if isinstance(v, dict)
    }
    result["paper_scale_memory"] = {
        "at_selora_ranks": paper,
        "at_rank_4": paper_r4,
        "measured": {
            "lora_step_increment_mb": {str(k): round(v, 1) for k, v in act.items()},
            "selora_test_step_increment_mb_big": round(
                sel_big.get("peak_mb", math.nan) - sel_big.get("start_mb", 0), 1
            ),
            "per_sample_gradients_mb_small_computed": round(measured_extra, 2),
            "big_latent": big_latent,
        },
    }
    del trainers, probe
    gc.collect()

    if "engine" not in args.skip and DEVICE.type == "cpu":  # on a GPU: benchmarks/train.py --sd15
        with tempfile.TemporaryDirectory() as tmp:
            eng = engine_vs_loop(
                base,
                args.params,
                Path(tmp),
                args.batch_size,
                args.engine_steps,
                args.latent * sd15.LATENT_FACTOR,
                args.threads,
                "sampling" not in args.skip,
            )
        phase("engine_and_sampling")
        result["engine_vs_diffusers_loop"] = eng.pop("engine_vs_diffusers_loop")
        result["engine"] = eng
        if "sampling" in eng:
            result["sample_vs_pipeline_call"] = eng["sampling"]["sample_vs_pipeline_call"]
    del base
    gc.collect()
    if "inception" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            result["inception"] = inception_dtypes(Path(tmp), args.inception_images)
        phase("inception")
    result["phase_s"] = phases
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    return result


SUMMARY = (
    "step_time_ratio_vs_lora",
    "selora_test_step_cost_ratio",
    "peak_memory_ratio_vs_lora",
    "engine_vs_diffusers_loop",
    "selora_test_step_extra_mb_at_paper_scale",
    "sample_vs_pipeline_call",
    "wall_s",
)
METHODS = ["lora", "selora", "lora_r4", "adalora", "dylora"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/benchmarks/sd15.json")
    ap.add_argument("--params", default="params.yaml", help="params file (the baselines' method sections)")
    ap.add_argument("--latent", type=int, default=8, help="latent side (8 → 64 px images)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="counted interleaved rounds (plus one warm-up)")
    ap.add_argument("--pairs", type=int, default=2, help="SeLoRA (test, plain) step pairs")
    ap.add_argument("--engine-steps", type=int, default=2, help="steps per engine / loop block (ABBA)")
    ap.add_argument("--inception-images", type=int, default=12)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--skip", nargs="*", default=[], choices=["engine", "sampling", "inception"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (phases 1-4; the engine: train.py --sd15)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype")
    ap.add_argument("--tiny", action="store_true", help="SD 1.5's layout at toy widths (tests)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one SeLoRA test step and one plain step (test_step_profile)")
    args = ap.parse_args(argv)
    if not {"lora", "selora"} <= set(args.methods):
        ap.error("--methods must include lora and selora")
    prov = Provenance("benchmarks/sd15.py", vars(args))
    result = run(args)
    write_json(args.out, {**result, "provenance": prov.as_dict()})
    print(json.dumps({k: result[k] for k in SUMMARY if k in result}, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
