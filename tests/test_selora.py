"""SeLoRA: exact in-step Fisher test, output-preserving growth, optimiser continuity, export, resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from adapter_checks import (
    assert_base_unchanged,
    assert_export_roundtrip,
    base_state,
    diffusion_loss,
    fixed_batch,
    run_steps,
    selora_from_export,
    tiny_parts,
)
from torch import nn

from selora.adapters import create_adapter
from selora.adapters._selora_layer import FisherProbe, SeLoraLinear
from selora.adapters.selora import SeLoraAdapter, SeLoraConfig
from selora.errors import ConfigError


def cfg(**kw) -> SeLoraConfig:
    base = {"init_rank": 1, "threshold": 1.1, "test_interval": 40, "fisher": "per_sample", "max_rank": None,
            "scale": 1.0}
    return SeLoraConfig(**{**base, **kw})


class Toy(nn.Module):
    """A sequence model with what real models have: a conv, a linear called twice (weight sharing),
    a bias-free linear, and a branch whose output reaches the loss only multiplied by zero."""

    def __init__(self, ckpt: str | None = None) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.shared = nn.Linear(8, 8, bias=False)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.out = nn.Linear(8, 3)
        self.dead = nn.Linear(8, 2)
        self.ckpt = ckpt

    def middle(self, h: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(h))
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        return torch.tanh(self.shared(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N, T, 5] -> [N, T, 3]
        h = torch.tanh(self.inp(x))
        if self.ckpt:
            h = torch.utils.checkpoint.checkpoint(self.middle, h, use_reentrant=self.ckpt == "reentrant")
        else:
            h = self.middle(h)
        return self.out(h) + 0.0 * self.dead(h).sum(-1, keepdim=True)


def toy_data(dtype=torch.float64, n: int = 5):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, 5, generator=gen, dtype=dtype), torch.randn(n, 6, 3, generator=gen, dtype=dtype)


def toy_adapter(dtype=torch.float64, ckpt=None, seed=0, **kw):
    torch.manual_seed(0)
    model = Toy(ckpt).to(dtype)
    ad = SeLoraAdapter(cfg(**kw), seed=seed)
    ad.attach({"toy": model})
    with torch.no_grad():  # a non-zero B, so that A gets gradient too
        for layer in ad.layers.values():
            layer.lora_B.normal_(generator=torch.Generator().manual_seed(2))
    return ad, model


def toy_loss(model, x, y):
    return F.mse_loss(model(x), y)


def grown_copy(ad: SeLoraAdapter, parts: dict) -> dict:
    """A deep copy in which every armed layer holds its candidate: A' = [A; k], B' = [B, 0]."""
    out = copy.deepcopy(parts)
    for (part, name), layer in ad.layers.items():
        twin = out[part].get_submodule(name)
        if layer.candidate is not None:
            twin.lora_A, twin.lora_B = twin.grown(layer.candidate)
        twin.disarm()
    return out


def brute_force_fisher(ad, grown_parts, sample_losses, batch_loss):
    """Eq. 3-4 by one backward per sample on the expanded model, and the squared batch gradient.

    Returns {key: (per_sample_orig, per_sample_exp, batch_orig, batch_exp, max |grad of k|)}."""
    layers = {key: grown_parts[key[0]].get_submodule(key[1]) for key in ad.layers}
    acc = {key: [0.0, 0.0] for key in layers}
    zero_k = dict.fromkeys(layers, 0.0)
    n = len(sample_losses)
    for loss_i in sample_losses:
        for m in grown_parts.values():
            m.zero_grad(set_to_none=True)
        loss_i().backward()
        for key, layer in layers.items():
            r = ad.layers[key].rank
            ga, gb = layer.lora_A.grad, layer.lora_B.grad
            acc[key][0] += float((ga[:r] ** 2).sum() + (gb[:, :r] ** 2).sum()) / n
            acc[key][1] += float((ga ** 2).sum() + (gb ** 2).sum()) / n
            zero_k[key] = max(zero_k[key], float(ga[r:].abs().max()))
    for m in grown_parts.values():
        m.zero_grad(set_to_none=True)
    batch_loss().backward()
    out = {}
    for key, layer in layers.items():
        r = ad.layers[key].rank
        ga, gb = layer.lora_A.grad, layer.lora_B.grad
        out[key] = (*acc[key], float((ga[:r] ** 2).sum() + (gb[:, :r] ** 2).sum()),
                    float((ga ** 2).sum() + (gb ** 2).sum()), zero_k[key])
    return out


def assert_close(a: float, b: float, rel: float = 1e-5, what: str = "") -> None:
    assert abs(a - b) <= rel * max(abs(b), 1e-300), f"{what}: {a!r} vs brute force {b!r}"


# ---- the Fisher information: exact, in-step ------------------------------------------------------
@pytest.mark.parametrize("ckpt", [None, "reentrant", "non_reentrant"])
def test_fisher_scores_equal_brute_force_per_sample_gradients(ckpt):
    x, y = toy_data()
    scores = {}
    for mode in ("per_sample", "batch"):
        ad, model = toy_adapter(ckpt=ckpt, fisher=mode, test_interval=3, scale=0.5)
        ad.before_forward(2)  # (2 + 1) % 3 == 0: a test step
        grown = grown_copy(ad, {"toy": model})
        toy_loss(model, x, y).backward()
        scores[mode] = ad.fisher_scores()
        probes = ad._armed[1]
        assert probes[("toy", "shared")].calls == 2  # called twice per forward, recorded once per call
        assert probes[("toy", "inp")].calls == 1
    brute = brute_force_fisher(ad, grown, [lambda i=i: toy_loss(grown["toy"], x[i:i + 1], y[i:i + 1])
                                           for i in range(len(x))], lambda: toy_loss(grown["toy"], x, y))
    for key, (ps_o, ps_e, b_o, b_e, k_grad) in brute.items():
        assert k_grad == 0.0, f"{key}: the candidate column of A got gradient"
        assert_close(scores["per_sample"][key][0], ps_o, what=f"{key} per-sample FI_orig")
        assert_close(scores["per_sample"][key][1], ps_e, what=f"{key} per-sample FI_exp")
        assert_close(scores["batch"][key][0], b_o, what=f"{key} batch FI_orig")
        assert_close(scores["batch"][key][1], b_e, what=f"{key} batch FI_exp")
    live = ("toy", "out")
    assert scores["per_sample"][live][1] > scores["per_sample"][live][0] > 0  # a real, non-trivial ratio
    assert scores["per_sample"][live][0] != pytest.approx(scores["batch"][live][0])  # the modes differ
    assert scores["per_sample"][("toy", "dead")] == (0.0, 0.0)


@pytest.mark.parametrize("mode", ["per_sample", "batch"])
def test_a_test_step_gives_the_plain_step_gradients(mode):
    """On test steps the LoRA branch's backward is SeLoRA's own: it must equal autograd's."""
    x, y = toy_data()
    grads = []
    for step in (0, 2):  # t = 3: step 0 is plain, step 2 a test
        ad, model = toy_adapter(fisher=mode, test_interval=3, scale=0.5)
        xin = x.clone().requires_grad_()
        ad.before_forward(step)
        toy_loss(model, xin, y).backward()
        assert (ad._armed is not None) == (step == 2)
        grads.append([xin.grad] + [p.grad for p in ad.trainable_parameters()])
    for plain, tested in zip(*grads, strict=True):
        torch.testing.assert_close(tested, plain, rtol=1e-12, atol=1e-15)


def test_test_step_under_bf16_autocast():
    x, y = toy_data(torch.float32)
    grads, scores = [], None
    for step in (0, 2):
        ad, model = toy_adapter(torch.float32, test_interval=3)
        ad.before_forward(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = toy_loss(model, x, y)
        loss.backward()
        grads.append([p.grad for p in ad.trainable_parameters()])
        if step == 2:
            scores = ad.fisher_scores()
    for plain, tested in zip(*grads, strict=True):
        assert tested.dtype == torch.float32
        assert float((tested - plain).norm()) <= 0.05 * float(plain.norm()) + 1e-6
    assert all(math.isfinite(o) and e >= o for o, e in scores.values())


def test_fisher_scores_on_the_miniature_sd_with_gradient_checkpointing(tiny_pipeline, cxr_batch):
    """Per-sample FI of every U-Net and text-encoder linear == brute force (float64, batch 4), also
    when the U-Net recomputes its forward under (non-reentrant) gradient checkpointing."""
    pipe = tiny_pipeline
    batch = {k: (v[:4].double() if v.is_floating_point() else v[:4]) for k, v in cxr_batch.items()}
    got, calls = {}, {}
    for ckpt in (False, True):
        parts = {k: m.double().train() for k, m in tiny_parts(pipe).items()}
        ad = SeLoraAdapter(cfg(test_interval=1), seed=0)
        ad.attach(parts)
        with torch.no_grad():
            for layer in ad.layers.values():
                layer.lora_B.normal_(std=0.1, generator=ad.generator)
        if ckpt:
            parts["unet"].enable_gradient_checkpointing()
        ad.before_forward(0)
        if not ckpt:
            grown = grown_copy(ad, parts)
        forwards = []
        layer = ad.layers[("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")]
        handle = layer.register_forward_hook(lambda *_, seen=forwards: seen.append(1))
        diffusion_loss(pipe, parts, batch).backward()
        handle.remove()
        assert len(forwards) == (2 if ckpt else 1)  # checkpointing really recomputed the forward
        calls[ckpt] = {p.calls for p in ad._armed[1].values()}
        got[ckpt] = ad.fisher_scores()
    assert calls == {False: {1}, True: {1}}  # one record per layer call, never one per forward
    one = [lambda i=i: diffusion_loss(pipe, grown, {k: v[i:i + 1] for k, v in batch.items()})
           for i in range(4)]
    brute = brute_force_fisher(ad, grown, one, lambda: diffusion_loss(pipe, grown, batch))
    assert len(got[True]) == len(ad.layers) == 92
    for key, (ps_o, ps_e, _, _, k_grad) in brute.items():
        assert k_grad == 0.0
        for ckpt in (False, True):
            assert_close(got[ckpt][key][0], ps_o, what=f"{key} FI_orig ckpt={ckpt}")
            assert_close(got[ckpt][key][1], ps_e, what=f"{key} FI_exp ckpt={ckpt}")


def test_ratio_is_at_least_one_and_lambda_rules():
    x, y = toy_data()

    def train(steps: int, loss_scale: float = 1.0, **kw):
        ad, model = toy_adapter(test_interval=1, **kw)
        opt = torch.optim.Adam(ad.trainable_parameters(), lr=1e-2)
        for step in range(steps):
            ad.before_forward(step)
            (loss_scale * toy_loss(model, x, y)).backward()
            opt.step()
            ad.after_optimizer_step(step, opt)
            opt.zero_grad()
        return ad, ad.history()

    ad, rows = train(1, threshold=1.0)
    ranks = ad.rank_map()["toy"]
    assert ranks == {"inp": 2, "shared": 2, "out": 2, "dead": 1}  # λ = 1: every layer with gradient
    dead = [r for r in rows if r["module"] == "dead"]
    assert dead[0]["fi_ratio"] == 1.0 and not dead[0]["expanded"]
    ad, rows_big = train(4, threshold=1e6)
    assert all(r == 1 for r in ad.rank_map()["toy"].values()) and not any(r["expanded"] for r in rows_big)
    ad, rows_cap = train(4, threshold=1.0, max_rank=3)
    assert ad.rank_map()["toy"] == {"inp": 3, "shared": 3, "out": 3, "dead": 1}
    capped = [r for r in rows_cap if r["step"] == 3 and r["module"] == "out"]
    assert math.isnan(capped[0]["fi_ratio"]) and capped[0]["rank"] == 3  # at the cap: not tested
    for r in rows + rows_big + rows_cap:
        assert set(r) == {"step", "part", "module", "rank", "fi_ratio", "expanded"}
        assert math.isnan(r["fi_ratio"]) or r["fi_ratio"] >= 1.0
    # the FI-Ratio is invariant to a constant loss scale (fp16's GradScaler); compared at the first
    # test, since Adam's eps makes later parameters differ slightly
    _, scaled = train(1, loss_scale=1024.0, threshold=1.3)
    _, plain = train(1, threshold=1.3)
    assert [r["fi_ratio"] for r in scaled] == pytest.approx([r["fi_ratio"] for r in plain], rel=1e-9)


# ---- growth: output preserved, optimiser continuity ----------------------------------------------
def test_expansion_preserves_layer_and_model_outputs(tiny_pipeline, cxr_batch):
    pipe, batch = tiny_pipeline, cxr_batch
    parts = tiny_parts(pipe)
    ad = SeLoraAdapter(cfg(threshold=1.0, test_interval=3), seed=0)
    ad.attach(parts)
    opt = torch.optim.Adam(ad.trainable_parameters(), lr=1e-3)
    outputs: dict[str, torch.Tensor] = {}
    for key, layer in ad.layers.items():
        layer.register_forward_hook(lambda _m, _i, out, key=key: outputs.__setitem__(key, out.detach()))

    def snapshot():
        outputs.clear()
        with torch.no_grad():
            pred = unet_output(parts, batch)
        return pred, dict(outputs)

    for step in range(3):
        ad.before_forward(step)
        diffusion_loss(pipe, parts, batch).backward()
        opt.step()
        if step == 2:
            before_pred, before = snapshot()
            cands = {k: layer.candidate.clone() for k, layer in ad.layers.items()}
        ad.after_optimizer_step(step, opt)
        opt.zero_grad()
    after_pred, after = snapshot()
    assert all(r == 2 for p in ad.rank_map().values() for r in p.values())
    for key, layer in ad.layers.items():
        assert torch.equal(layer.lora_A[-1].detach(), cands[key])  # the tested k, not a new draw
        assert not layer.lora_B[:, -1].any()
        assert_same_up_to_rounding(after[key], before[key], key)
    assert_same_up_to_rounding(after_pred, before_pred, "U-Net output")
    with torch.no_grad():  # the adapter is live, so the comparison is not vacuous
        base_pred = unet_output({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, batch)
    assert float((before_pred - base_pred).abs().max()) > 1e-4


def assert_same_up_to_rounding(got: torch.Tensor, want: torch.Tensor, what) -> None:
    """float32 equality up to a few ulps of the tensor's scale: the grown matmul sums one more (zero)
    term, which may change the rounding of the larger terms of a sum, not just of its result."""
    scale = float(want.abs().max())
    diff = float((got - want).abs().max())
    assert diff <= 1e-5 * scale + 1e-7, f"{what}: output changed by {diff:.2e} (scale {scale:.2e})"


def unet_output(parts, batch) -> torch.Tensor:
    """The whole model's output: the U-Net's noise prediction [N, 4, h, w] given the text encoder's."""
    from selora.tinysd import noise_scheduler

    noisy = noise_scheduler().add_noise(batch["latents"], batch["noise"], batch["timesteps"])
    hidden = parts["text_encoder"](batch["input_ids"])[0]
    return parts["unet"](noisy, batch["timesteps"], encoder_hidden_states=hidden).sample


@pytest.mark.parametrize("fused", [False, True], ids=["per-tensor", "fused"])  # fused: the engine's
@pytest.mark.parametrize("use_scaler", [False, True])
def test_adam_state_survives_growth_bit_identically(use_scaler, fused):
    x, y = toy_data(torch.float32)
    ad, model = toy_adapter(torch.float32, threshold=1.0, test_interval=2)
    opt = torch.optim.Adam(ad.trainable_parameters(), lr=1e-2, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9 ** s)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8) if use_scaler else None
    losses = []
    for step in range(8):
        ad.before_forward(step)
        loss = toy_loss(model, x, y)
        losses.append(loss.item())
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        old = [(p, {k: v.clone() for k, v in opt.state[p].items()}) for p in opt.param_groups[0]["params"]]
        ad.after_optimizer_step(step, opt)
        opt.zero_grad(set_to_none=True)
        sched.step()
        params = opt.param_groups[0]["params"]
        assert len(opt.param_groups) == 1
        assert [id(p) for p in params] == [id(p) for p in ad.trainable_parameters()]
        for (p_old, st_old), p_new in zip(old, params, strict=True):
            st_new = opt.state[p_new]
            assert torch.equal(st_new["step"], st_old["step"])
            block = tuple(slice(0, n) for n in p_old.shape)
            for name in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(st_new[name][block], st_old[name]), f"step {step}: {name} changed"
                rest = st_new[name].clone()
                rest[block] = 0
                assert not rest.any(), "new entries must start from zero moments"
            assert torch.equal(p_new.detach()[block], p_old.detach())
    assert ad.rank_map()["toy"]["out"] == 5  # grew at steps 1, 3, 5, 7
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.9 ** 8)
    assert losses[-1] < losses[3] < losses[0]


def test_training_grows_logs_and_keeps_the_base_frozen(trained):
    ad, parts, losses, rows = trained
    assert losses[-1] < losses[6] < losses[3] < losses[0]  # still decreasing after each expansion
    ranks = [r for p in ad.rank_map().values() for r in p.values()]
    assert len(ranks) == 92 and len(set(ranks)) > 1 and max(ranks) > 1
    assert len(rows) == 4 * 92 and {r["step"] for r in rows} == {2, 5, 8, 11}
    final = {(r["part"], r["module"]): r["rank"] for r in rows if r["step"] == 11}
    assert final == {k: layer.rank for k, layer in ad.layers.items()}
    table = {r["part"]: r for r in ad.parameter_table()}
    for part, module in parts.items():
        adapter_params = sum(layer.lora_A.numel() + layer.lora_B.numel()
                             for (p, _), layer in ad.layers.items() if p == part)
        assert table[part]["trainable_parameters"] == table[part]["effective_parameters"] == adapter_params
        base = sum(p.numel() for p in module.parameters()) - adapter_params
        assert table[part]["trainable_percent"] == pytest.approx(100 * adapter_params / base)
    convs = [m for m in parts["unet"].modules() if isinstance(m, nn.Conv2d)]
    assert convs and not any(p.requires_grad for m in convs for p in m.parameters())


def test_export_loads_in_diffusers_and_back_into_selora(trained, tiny_pipeline, tiny_base, cxr_batch,
                                                        tmp_path):
    ad, parts, _, _ = trained
    out = tmp_path / "lora"
    assert_export_roundtrip(ad, tiny_pipeline, parts, tiny_base["path"], out)
    from diffusers import StableDiffusionPipeline

    fresh = StableDiffusionPipeline.from_pretrained(tiny_base["path"], safety_checker=None,
                                                    requires_safety_checker=False)
    fresh.load_lora_weights(str(out))
    for (part, name), layer in ad.layers.items():  # per-layer ranks came through rank_pattern
        assert getattr(fresh, part).get_submodule(name).r["default_0"] == layer.rank
    again = tiny_parts(tiny_pipeline)
    ad2 = SeLoraAdapter(cfg(scale=0.5), seed=5)
    ad2.attach(again)
    selora_from_export(ad2, out)
    assert ad2.rank_map() == ad.rank_map()
    for key, layer in ad.layers.items():
        assert torch.equal(ad2.layers[key].lora_A, layer.lora_A)
        assert torch.equal(ad2.layers[key].lora_B, layer.lora_B)
    with torch.no_grad():
        assert float(diffusion_loss(tiny_pipeline, again, cxr_batch)) == float(
            diffusion_loss(tiny_pipeline, parts, cxr_batch))


def test_resume_is_bit_identical_with_grown_shapes():
    x, y = toy_data(torch.float32)

    def steps(ad, model, opt, rng):
        for step in rng:
            ad.before_forward(step)
            toy_loss(model, x, y).backward()
            opt.step()
            ad.after_optimizer_step(step, opt)
            opt.zero_grad()

    ad, model = toy_adapter(torch.float32, threshold=1.05, test_interval=2)
    opt = torch.optim.Adam(ad.trainable_parameters(), lr=1e-2)
    steps(ad, model, opt, range(12))
    ad1, model1 = toy_adapter(torch.float32, threshold=1.05, test_interval=2)
    opt1 = torch.optim.Adam(ad1.trainable_parameters(), lr=1e-2)
    steps(ad1, model1, opt1, range(5))
    saved = copy.deepcopy((ad1.state_dict(), opt1.state_dict()))
    ad2, model2 = toy_adapter(torch.float32, threshold=1.05, test_interval=2, seed=99)
    ad2.load_state_dict(saved[0])
    opt2 = torch.optim.Adam(ad2.trainable_parameters(), lr=1e-2)
    opt2.load_state_dict(saved[1])
    assert ad2.rank_map() == ad1.rank_map() and max(ad2.rank_map()["toy"].values()) > 1
    steps(ad2, model2, opt2, range(5, 12))
    assert ad2.rank_map() == ad.rank_map()
    for key, layer in ad.layers.items():
        assert torch.equal(ad2.layers[key].lora_A, layer.lora_A), key
        assert torch.equal(ad2.layers[key].lora_B, layer.lora_B), key


def test_a_state_of_other_layers_is_refused_and_an_older_state_still_loads():
    ad, _ = toy_adapter(torch.float32)
    state = ad.state_dict()
    for change, match in ((lambda st: st["layers"].pop("toy.out"), r"lacks adapted layers .*toy\.out"),
                          (lambda st: st["layers"].update(extra=st["layers"]["toy.out"]), "model lacks")):
        bad = copy.deepcopy(state)
        change(bad)
        with pytest.raises(ConfigError, match=match):
            ad.load_state_dict(bad)
    older = {**copy.deepcopy(state), "tests_done": 3}  # written before the counter was dropped
    older["layers"]["toy.out"] = {"A": torch.ones(2, 8), "B": torch.ones(3, 2)}
    ad.load_state_dict(older)
    assert ad.rank_map()["toy"]["out"] == 2
    assert torch.equal(ad.layers[("toy", "out")].lora_B, torch.ones(3, 2))


def test_stale_optimizer_is_detected():
    x, y = toy_data(torch.float32)
    ad, model = toy_adapter(torch.float32)
    stale = torch.optim.Adam(ad.trainable_parameters(), lr=1e-2)
    state = ad.state_dict()
    state["layers"]["toy.out"] = {"A": torch.zeros(2, 8), "B": torch.zeros(3, 2)}
    ad.load_state_dict(state)
    ad.before_forward(0)
    toy_loss(model, x, y).backward()
    stale.step()
    with pytest.raises(RuntimeError, match="after load_state_dict"):
        ad.after_optimizer_step(0, stale)


# ---- injection and configuration -----------------------------------------------------------------
def sd15_parts() -> dict[str, nn.Module]:
    """SD 1.5's U-Net and CLIP text encoder from their published configs, on the meta device."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        ))
    return {"unet": unet, "text_encoder": text}


def test_every_linear_of_sd15_is_wrapped_and_counted():
    parts = sd15_parts()
    n_conv = sum(isinstance(m, nn.Conv2d) for m in parts["unet"].modules())
    ad = create_adapter("selora", cfg(init_rank=4), seed=0)
    ad.attach(parts)
    ranks = ad.rank_map()
    assert {p: len(m) for p, m in ranks.items()} == {"unet": 184, "text_encoder": 72}
    # the layers the public ports skipped (they matched only the last name component)
    assert {"time_embedding.linear_1", "time_embedding.linear_2", "mid_block.resnets.0.time_emb_proj",
            "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
            "mid_block.attentions.0.transformer_blocks.0.ff.net.2"} <= set(ranks["unet"])
    for module in parts.values():
        assert not any(isinstance(m, nn.Linear) and not isinstance(p, SeLoraLinear)
                       for name, m in module.named_modules() for p in [_parent(module, name)])
    assert sum(isinstance(m, nn.Conv2d) for m in parts["unet"].modules()) == n_conv
    frozen = [p.requires_grad for m in parts.values() for n, p in m.named_parameters() if "lora_" not in n]
    assert frozen and not any(frozen)
    table = {r["part"]: r for r in ad.parameter_table()}
    # SD 1.5's published sizes: 859.52 M U-Net, 123.06 M CLIP ViT-L/14 text encoder
    assert table["unet"]["base_parameters"] == 859_520_964
    assert table["text_encoder"]["base_parameters"] == 123_060_480
    sums = {p: sum(layer.in_features + layer.out_features for (q, _), layer in ad.layers.items() if q == p)
            for p in parts}
    for part in parts:  # rank 4 everywhere: 4 (in + out) per layer, as % of the component
        assert table[part]["trainable_parameters"] == 4 * sums[part]
        percent = 400 * sums[part] / table[part]["base_parameters"]
        assert table[part]["trainable_percent"] == pytest.approx(percent)


def _parent(module: nn.Module, name: str) -> nn.Module:
    parent = name.rpartition(".")[0]
    return module.get_submodule(parent) if parent else module


@pytest.mark.parametrize(("kw", "match"), [
    ({"threshold": 0.9}, "threshold"),
    ({"test_interval": 0}, "test_interval"),
    ({"max_rank": 0}, "max_rank"),
    ({"init_rank": 2, "max_rank": 1}, "max_rank"),
    ({"init_rank": 0}, "init_rank"),
    ({"fisher": "diagonal"}, "fisher"),
    ({"scale": 0.0}, "scale"),
])
def test_bad_configuration_is_rejected(kw, match):
    with pytest.raises(ConfigError, match=match):
        SeLoraAdapter(cfg(**kw), seed=0)


def test_a_model_without_linear_layers_is_rejected():
    ad = SeLoraAdapter(cfg(), seed=0)
    with pytest.raises(ConfigError, match="no linear layer to adapt in toy, conv"):
        ad.attach({"toy": nn.Sequential(nn.Conv2d(1, 2, 3)), "conv": nn.Conv2d(2, 2, 1)})
    assert not ad.layers and not ad.parts


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cxr_batch(tiny_pipeline, synthetic_dirs):
    return fixed_batch(tiny_pipeline, synthetic_dirs["cxr"])


@pytest.fixture(scope="module")
def trained(tiny_pipeline, cxr_batch):
    """The miniature trained 12 steps on one batch, λ = 1.1, t = 3 (four tests), s = 0.5 (so that the
    export must fold the scale into B)."""
    parts = tiny_parts(tiny_pipeline)
    before = base_state(parts)
    ad = SeLoraAdapter(cfg(test_interval=3, scale=0.5), seed=0)
    ad.attach(parts)
    losses = run_steps(ad, tiny_pipeline, parts, cxr_batch, 12)
    assert_base_unchanged(before, ad)
    return ad, parts, losses, ad.history()


def saved_storages(layer: nn.Module, leaf: torch.Tensor, dtype: torch.dtype, *, tanh: bool = False
                   ) -> dict[int, int]:
    """The distinct storages (pointer → bytes) autograd keeps for the backward of one forward of
    ``layer`` under bf16 autocast, on an activation made from ``leaf`` (autocast caches its casts of
    leaves, not of activations); ``tanh``: through a tanh first, which keeps its output, as many of
    a model's ops keep the activation the next layer reads."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = (leaf * 1.0).to(dtype)
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.tanh(x) if tanh else x).float().square().mean().backward()
    return storages


def frozen_layer(g: torch.Generator) -> SeLoraLinear:
    layer = SeLoraLinear(nn.Linear(32, 48), torch.randn(3, 32, generator=g), scale=1.0)
    layer.base_layer.requires_grad_(False)  # as in training: the frozen base keeps no input
    return layer


def test_under_autocast_a_half_input_is_kept_once_by_plain_and_test_steps():
    """A half input (a previous op's autocast output, which that op often keeps itself) goes to the
    LoRA branch as it is. Up-cast to fp32 first, it came back from autocast's F.linear as a second
    bf16 copy kept beside the first: 146 MiB of 1.8 GiB saved activations on SD 1.5 at 224 px /
    batch 8 (benchmarks/README). The values are the same either way: bf16 → fp32 → bf16 is exact."""
    g = torch.Generator().manual_seed(0)
    layer = frozen_layer(g)
    leaf = torch.randn(8, 64, 32, generator=g).requires_grad_()
    x_bytes = leaf.numel() * 2
    copies = [sum(n == x_bytes for n in saved_storages(layer, leaf, torch.bfloat16, tanh=True).values())]
    layer.arm(torch.randn(32, generator=g), FisherProbe("per_sample", 1.0))
    copies.append(sum(n == x_bytes for n in saved_storages(layer, leaf, torch.bfloat16, tanh=True).values()))
    assert copies == [1, 1]  # tanh's kept output is the branch's kept input


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_a_test_step_saves_no_more_activations_than_a_plain_step_under_autocast(x_dtype):
    """Under autocast the plain branch keeps x in the autocast dtype (F.linear's cast); the probed
    branch once kept the fp32 x it was handed (or an fp32 up-cast of a half x), 2× that per layer:
    +225 MB, 5 % of a step's activations, on SD 1.5 at 224 px / batch 8 on an H200
    (benchmarks/README, GPU). Now both keep the same; the candidate k [in] is the only extra."""
    g = torch.Generator().manual_seed(0)
    layer = frozen_layer(g)
    leaf = torch.randn(8, 64, 32, generator=g).requires_grad_()
    plain = sum(saved_storages(layer, leaf, x_dtype).values())
    k = torch.randn(32, generator=g)
    layer.arm(k, FisherProbe("per_sample", 1.0))
    tested = sum(saved_storages(layer, leaf, x_dtype).values())
    params = 4 * (layer.lora_A.numel() + layer.lora_B.numel() + k.numel())  # fp32, not bf16 casts
    assert tested <= plain + params, (tested, plain, leaf.numel() * 2)  # an extra x would add 32 kB
    assert layer.probe.norms is not None and torch.isfinite(torch.stack(layer.probe.norms)).all()
