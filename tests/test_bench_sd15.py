"""The SD 1.5 benchmark's building blocks (benchmarks/sd15.py, selora.sd15) on SD 1.5's layout at toy
widths, so the benchmark cannot rot. Nothing here is timed: timings live in the benchmark."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch

from selora import sd15
from selora.adapters.base import linear_modules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sd15 as bench  # benchmarks/sd15.py (a script, not a package)


@pytest.fixture(scope="module")
def base():
    unet_cfg, text_cfg = sd15.scaled()
    return bench.build_base(unet_cfg, text_cfg, seed=0)


def test_the_toy_layout_has_sd15s_linear_layers(base):
    """The paper adapts every nn.Linear: 184 in SD 1.5's U-Net, 72 in its text encoder. The toy
    widths keep the layout, so what the tests check is what the benchmark runs on."""
    assert {p: len(linear_modules(m)) for p, m in base.items()} == sd15.N_LINEAR
    assert not any(p.requires_grad for m in base.values() for p in m.parameters())


def test_published_configs_give_sd15s_widths():
    """The full configs are the published ones (checked on the meta device: no 3.4 GB allocation)."""
    with torch.device("meta"):
        unet, text = sd15.build_unet(), sd15.build_text_encoder()
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(859.5e6, rel=1e-3)
    assert sum(p.numel() for p in text.parameters()) == pytest.approx(123.1e6, rel=1e-3)
    widths = {(m.in_features, m.out_features) for m in linear_modules(unet).values()}
    assert {(320, 2560), (1280, 320), (768, 1280), (1280, 10240)} <= widths
    assert {(768, 3072), (3072, 768)} <= {
        (m.in_features, m.out_features) for m in linear_modules(text).values()
    }
    assert sd15.noise_scheduler().config.clip_sample is False


def test_shared_copies_share_the_base_and_adapt_independently(base):
    a, b = bench.shared_copy(base), bench.shared_copy(base)
    w = {n: p.data_ptr() for n, p in base["unet"].named_parameters()}
    assert {n: p.data_ptr() for n, p in a["unet"].named_parameters()} == w
    ranks = bench.rank_map(base)
    tr = bench.selora_at_ranks(a, ranks, seed=0)
    assert {
        p: {n: layer.rank for (q, n), layer in tr.adapter.layers.items() if q == p} for p in ranks
    } == ranks
    assert not any("lora" in n for n, _ in b["unet"].named_modules())  # the other copy is untouched
    assert not any("lora" in n for n, _ in base["unet"].named_modules())


def test_rank_map_scales_the_embedded_histogram(base):
    ranks = bench.rank_map(base, seed=1)
    flat = [r for layers in ranks.values() for r in layers.values()]
    assert len(flat) == 256
    hist = bench.EMBEDDED_RANK_HISTOGRAM
    embedded_mean = sum(r * c for r, c in hist.items()) / sum(hist.values())
    assert statistics.mean(flat) == pytest.approx(embedded_mean, abs=0.02)
    assert set(flat) == set(hist)
    assert bench.rank_map(base, seed=1) == ranks  # deterministic


def test_per_sample_gradient_memory_and_the_in_backward_reduction(base, one_torch_thread):
    """The paper-scale statement multiplies N·(r·in + out·(r+1)) up: check it against what SeLoRA's
    probes hold when they must keep per-sample gradients (a layer called twice), check that a layer
    called once keeps none of them (reduced in its own backward) with bit-identical scores, and that
    the token counts the hooks record are per sample: latent² for spatial layers, 77 for text."""
    ranks = bench.rank_map(base)
    flat = {f"{p}.{k}": r for p, layers in ranks.items() for k, r in layers.items()}
    n, latent = 2, 8
    batch = bench.make_batches(1, n, latent, 1000, seed=0)[0]
    step = bench.SELORA.test_interval - 1
    scores, held = {}, {}
    for keep in (True, False):
        tr = bench.selora_at_ranks(bench.shared_copy(base), ranks, seed=0)
        tr.adapter.before_forward(step)
        with bench.token_counts(tr.parts) as seen:
            loss = bench.diffusion_loss(tr.parts, batch)
        probes = tr.adapter._armed[1]
        if keep:  # as if every layer had run twice: the probes must keep the per-sample gradients
            for p in probes.values():
                p.forward_calls += 1
        loss.backward()
        held[keep] = (
            sum(t.numel() for p in probes.values() if p.d_a is not None for t in (p.d_a, p.d_bk)) * 4 / 2**20
        )
        scores[keep] = tr.adapter.fisher_scores()
    assert set(seen) == set(flat)
    assert bench.per_sample_gradient_mb({k: v[:2] for k, v in seen.items()}, flat, n) == pytest.approx(
        held[True]
    )
    assert held[False] == 0
    assert scores[False] == scores[True] and len(scores[True]) == 256
    assert next(v for k, v in seen.items() if k.endswith("layers.0.mlp.fc1"))[2] == 77
    assert seen["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"][2] == latent**2
    assert seen["unet.time_embedding.linear_1"][2] == 1


def test_paper_scale_extrapolates_tokens_and_activations():
    small = {"unet.a": (320, 320, 16), "unet.k": (768, 320, 77)}
    big = {"unet.a": (320, 320, 64), "unet.k": (768, 320, 77)}
    out = bench.paper_scale(small, big, 4, 8, {"unet.a": 2, "unet.k": 3}, {4: 100.0, 8: 200.0}, 2)
    s = out["224px_batch8"]  # 28×28 latents
    assert s["per_sample_gradients_mb"] == pytest.approx(
        round(8 * (2 * 320 + 320 * 3 + 3 * 768 + 320 * 4) * 4 / 2**20, 1)
    )
    # linear in samples × latent pixels through (2·16, 100) and (2·64, 200)
    assert s["lora_step_activation_mb_extrapolated"] == pytest.approx(
        100 + 100 / 96 * (8 * 784 - 32), abs=0.1
    )
    assert s["largest_fp16_upcast_mb"] == pytest.approx(8 * 784 * 640 * 4 / 2**20, abs=0.1)
    assert out["spatial_layers"] == 1


def test_the_benchmark_writes_its_keys(tmp_path, one_torch_thread):
    """A whole run on the toy layout (engine, sampling and Inception skipped: their own tests are the
    engine's and the metrics'), with the JSON keys the README reports."""
    out = tmp_path / "sd15.json"
    bench.main(
        [
            "--tiny",
            "--out",
            str(out),
            "--rounds",
            "1",
            "--pairs",
            "1",
            "--latent",
            "8",
            "--skip",
            "engine",
            "sampling",
            "inception",
            "--profile",
        ]
    )
    res = json.loads(out.read_text())
    prof = res["test_step_profile"]
    assert prof["test"]["s"] > 0 and prof["plain"]["s"] > 0 and prof["test"]["device_s"] is None
    # the test step's own backward is among the ops it adds; a plain step never runs it
    added = {r["op"]: r for r in prof["extra_ms_by_op"]}
    assert added["_ProbedLoRABackward"]["plain_calls"] == 0
    assert added["_ProbedLoRABackward"]["test_calls"] == sd15.N_LINEAR["unet"] + sd15.N_LINEAR["text_encoder"]
    assert set(res["step_time_ratio_vs_lora"]) == {"selora", "lora_r4", "adalora", "dylora"}
    assert set(res["peak_memory_ratio_vs_lora"]) == set(res["step_time_ratio_vs_lora"])
    assert all(v > 0 and math.isfinite(v) for v in res["step_time_ratio_vs_lora"].values())
    assert res["selora_test_step_cost_ratio"] > 0
    assert set(res["selora_test_step_extra_mb_at_paper_scale"]) == set(bench.PAPER_SETTINGS)
    assert res["adapted_layers"] == sd15.N_LINEAR
    assert res["provenance"]["command"] == "benchmarks/sd15.py"


def test_engine_and_sampling_run_on_a_fresh_clone_without_the_miniature(tmp_path, monkeypatch,
                                                                      one_torch_thread):
    """`selora train` / `selora sample` run on the in-memory SD 1.5 with no `models/` folder: their
    run identity once named the params' base model (the miniature) and failed where `make repro`
    had not run, i.e. `make bench` on a fresh clone."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sd15.json"
    bench.main(["--tiny", "--params", str(root / "params.yaml"), "--out", str(out), "--rounds", "1",
                "--pairs", "1", "--latent", "8", "--skip", "inception"])
    res = json.loads(out.read_text())
    assert math.isfinite(res["engine_vs_diffusers_loop"]) and res["engine_vs_diffusers_loop"] > 0
    assert math.isfinite(res["sample_vs_pipeline_call"]) and res["sample_vs_pipeline_call"] > 0
    assert not (tmp_path / "models").exists()
