"""The baselines LoRA, AdaLoRA and DyLoRA behind the adapter interface (paper Section 3.5).

Each method trains on the embedded miniature through the hooks the engine calls, moves only its own
weights, exports a standard LoRA file that a fresh pipeline reproduces, counts its parameters as a
hand count does, resumes bit-identically, and rejects bad settings naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from adapter_checks import (
    assert_base_unchanged,
    assert_export_roundtrip,
    base_state,
    diffusion_loss,
    fixed_batch,
    run_steps,
    tiny_parts,
)
from torch import nn

from selora.adapters import create_adapter, registered_methods
from selora.adapters.adalora import AdaLoraAdapter
from selora.adapters.base import linear_modules
from selora.adapters.dylora import DyLoraAdapter
from selora.adapters.lora import LoraAdapter
from selora.config import load_params
from selora.errors import ConfigError

METHODS = ("lora", "adalora", "dylora")
STEPS = 30
# AdaLoRA starts from E = 0 (ΔW = B·diag(E)·A), so it needs the largest step to move in 30 steps.
LR = {"lora": 1e-3, "adalora": 1e-2, "dylora": 3e-3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def method_cfg(name: str, **changes):
    return dataclasses.replace(load_params(None).methods.get(name), **changes)


def n_layers(adapter) -> int:
    return sum(len(layers) for layers in adapter.rank_map().values())


@pytest.fixture(scope="module")
def batch(tiny_pipeline, synthetic_dirs):
    return fixed_batch(tiny_pipeline, synthetic_dirs["cxr"])


@pytest.fixture(scope="module")
def runs(tiny_pipeline, batch):
    """Train each method once per module (lazily), keeping what the tests inspect."""
    cache: dict[str, SimpleNamespace] = {}

    def get(name: str) -> SimpleNamespace:
        if name not in cache:
            parts = tiny_parts(tiny_pipeline)
            before = base_state(parts)
            adapter = create_adapter(name, method_cfg(name), seed=0)
            adapter.attach(parts, STEPS)
            init = [p.detach().clone() for p in adapter.trainable_parameters()]
            extra0 = adapter.extra_loss()
            losses = run_steps(adapter, tiny_pipeline, parts, batch, STEPS, lr=LR[name])
            cache[name] = SimpleNamespace(adapter=adapter, parts=parts, before=before, init=init,
                                          losses=losses, history=adapter.history(),
                                          extra0=None if extra0 is None else extra0.item())
        return cache[name]

    return get


def test_registry_maps_params_names_to_the_implementations():
    assert set(METHODS) <= set(registered_methods())
    for name, cls in zip(METHODS, (LoraAdapter, AdaLoraAdapter, DyLoraAdapter), strict=True):
        adapter = create_adapter(name, method_cfg(name), seed=0)
        assert type(adapter) is cls and adapter.name == name


@pytest.mark.parametrize("name", METHODS)
def test_training_lowers_the_loss_and_moves_only_adapter_weights(runs, name):
    run = runs(name)
    first, last = run.losses[0], sum(run.losses[-5:]) / 5
    assert last < 0.85 * first, f"{name}: loss {first:.4f} → {last:.4f} on a fixed batch"
    assert_base_unchanged(run.before, run.adapter)
    moved = [not torch.equal(p.detach(), p0) for p, p0 in zip(run.adapter.trainable_parameters(), run.init,
                                                              strict=True)]
    if name == "adalora":  # (A, E, B) per layer; E of a layer pruned to rank 0 is all zero again, as at init
        ranks = [r for layers in run.adapter.rank_map().values() for r in layers.values()]
        moved = [m or (i % 3 == 1 and ranks[i // 3] == 0) for i, m in enumerate(moved)]
    assert all(moved), f"{name}: {moved.count(False)} adapter parameters never moved"


@pytest.mark.parametrize("name", METHODS)
def test_export_loads_in_a_fresh_pipeline_and_reproduces_the_images(runs, name, tiny_pipeline, tiny_base,
                                                                     tmp_path):
    run = runs(name)
    assert_export_roundtrip(run.adapter, tiny_pipeline, run.parts, tiny_base["path"], tmp_path / name)
    ranks = json.loads((tmp_path / name / "ranks.json").read_text())
    assert ranks == run.adapter.rank_map()


def test_adalora_prunes_to_the_target_budget_by_the_end_of_its_schedule(runs):
    run = runs("adalora")
    ada, cfg = run.adapter, method_cfg("adalora")
    n = n_layers(ada)
    ranks = [r for layers in ada.rank_map().values() for r in layers.values()]
    assert sum(ranks) == cfg.target_rank * n
    assert len(set(ranks)) > 1, "one global budget: layers end with different ranks"
    # Budget over time: allocations between tinit and total − tfinal, shrinking to the target.
    assert (ada.tinit, ada.tfinal) == (round(cfg.tinit * STEPS), round(cfg.tfinal * STEPS))  # real schedule
    steps = sorted({row["step"] for row in run.history})
    budgets = [next(r["budget"] for r in run.history if r["step"] == s) for s in steps]
    assert steps[0] > ada.tinit and steps[-1] == STEPS - ada.tfinal
    assert budgets == sorted(budgets, reverse=True) and budgets[0] < cfg.init_rank * n
    assert budgets[-1] == cfg.target_rank * n
    for s, budget in zip(steps, budgets, strict=True):  # each allocation keeps exactly its budget
        assert sum(r["rank"] for r in run.history if r["step"] == s) == budget
    final = {(r["part"], r["module"]): r["rank"] for r in run.history if r["step"] == steps[-1]}
    assert final == {(p, m): r for p, layers in ada.rank_map().items() for m, r in layers.items()}
    # Pruned triplets stay zero through the final phase; the export drops them.
    for (part, name), layer in ada.layers.items():
        e = layer.lora_E["default"].detach().view(-1)
        assert int((e != 0).sum()) == ada.rank_map()[part][name]
        a, b = ada.factors()[part][name]
        assert a.shape[0] == b.shape[1] == ada.rank_map()[part][name]


def test_adalora_is_exportable_only_at_its_final_budget(tiny_pipeline, batch):
    """The engine exports the best *eligible* epoch: every step AdaLoRA allows to be exported holds
    exactly target_rank · n ranks, and the steps it refuses include ones above that budget."""
    from adapter_checks import diffusion_loss as loss_of

    cfg = method_cfg("adalora", delta_t=2)
    parts = tiny_parts(tiny_pipeline)
    dims = {(p, n): m.in_features + m.out_features
            for p, module in parts.items() for n, m in linear_modules(module).items()}
    ada = create_adapter("adalora", cfg, seed=0)
    ada.attach(parts, STEPS)
    opt = torch.optim.Adam(ada.trainable_parameters(), lr=LR["adalora"])
    budget = cfg.target_rank * n_layers(ada)
    seen = []  # (steps done, exportable, total rank in the export, exported parameters)
    for step in range(STEPS):
        total = loss_of(tiny_pipeline, parts, batch) + ada.extra_loss()
        total.backward()
        opt.step()
        ada.after_optimizer_step(step, opt)
        opt.zero_grad(set_to_none=True)
        factors = ada.factors()
        seen.append((step + 1, ada.exportable(step + 1),
                     sum(a.shape[0] for layers in factors.values() for a, _ in layers.values()),
                     sum(a.numel() + b.numel() for layers in factors.values() for a, b in layers.values())))
    final_step = STEPS - ada.tfinal  # peft's final allocation happens at this (0-based) step
    assert [s for s, ok, _, _ in seen if ok] == list(range(final_step + 1, STEPS + 1))  # done after it
    assert all(rank == budget for _, ok, rank, _ in seen if ok)
    assert any(rank > budget for _, ok, rank, _ in seen if not ok)  # the rule matters
    # The exported parameter count is the budget's: Σ r_i · (in_i + out_i) over the final ranks.
    expected = sum(r * dims[(p, n)] for p, layers in ada.rank_map().items() for n, r in layers.items())
    assert seen[-1][3] == expected and sum(sum(v.values()) for v in ada.rank_map().values()) == budget
    # Without a budget to reallocate every epoch may be exported.
    flat = create_adapter("adalora", method_cfg("adalora", init_rank=4, target_rank=4), seed=0)
    flat.attach(tiny_parts(tiny_pipeline), STEPS)
    assert flat.exportable(1) and not ada.exportable(final_step)


def test_adalora_orthogonal_regulariser_is_part_of_the_loss(runs, tiny_pipeline, batch):
    run = runs("adalora")
    ada, weight = run.adapter, method_cfg("adalora").orth_reg_weight
    hand = []  # one Frobenius norm per matrix, as peft writes it
    for layer in ada.layers.values():
        a, b = layer.lora_A["default"], layer.lora_B["default"]
        hand += [torch.linalg.matrix_norm(c - torch.eye(c.shape[0]), ord="fro") for c in (a @ a.T, b.T @ b)]
    reference = weight * torch.stack(hand).mean()
    extra = ada.extra_loss()
    assert extra.requires_grad
    assert extra.item() == pytest.approx(reference.item(), rel=1e-5)
    # The batched norms are the per-matrix ones bit for bit, gradients included (the training path
    # must not change with how the regulariser is computed).
    factors = [w for layer in ada.layers.values() for w in (layer.lora_A["default"], layer.lora_B["default"])]
    assert torch.equal(extra, reference)
    grads = torch.autograd.grad(extra, factors, retain_graph=True)
    assert all(torch.equal(g, r) for g, r in zip(grads, torch.autograd.grad(reference, factors), strict=True))
    # It pulls the factors towards orthonormality during training (the diffusion loss alone does not).
    assert extra.item() < 0.8 * run.extra0
    extra.backward()
    for layer in ada.layers.values():
        assert layer.lora_A["default"].grad.abs().sum() > 0 and layer.lora_B["default"].grad.abs().sum() > 0
        layer.zero_grad(set_to_none=True)
    off = create_adapter("adalora", method_cfg("adalora", orth_reg_weight=0.0), seed=0)
    assert off.extra_loss() is None


def test_adalora_at_its_target_rank_from_the_start_has_nothing_to_allocate(tiny_pipeline, batch):
    parts = tiny_parts(tiny_pipeline)
    ada = create_adapter("adalora", method_cfg("adalora", init_rank=2, target_rank=2, delta_t=1), seed=0)
    ada.attach(parts, 8)
    run_steps(ada, tiny_pipeline, parts, batch, 8, lr=LR["adalora"])  # peft alone fails: nothing to prune
    assert {r for layers in ada.rank_map().values() for r in layers.values()} == {2}
    assert ada.history() == []


def _dylora(tiny_pipeline, mode: str) -> tuple[DyLoraAdapter, dict]:
    parts = tiny_parts(tiny_pipeline)
    adapter = create_adapter("dylora", method_cfg("dylora", mode=mode), seed=3)
    adapter.attach(parts, STEPS)
    with torch.no_grad():  # B ≠ 0 so that every component receives gradient
        for layer in adapter.layers.values():
            layer.lora_B.normal_(std=0.05)
    return adapter, parts


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_dylora_draws_one_rank_per_step_for_every_layer(tiny_pipeline, batch, mode):
    adapter, parts = _dylora(tiny_pipeline, mode)
    r = adapter.rank
    for module in parts.values():
        module.train()
    used: dict[object, int] = {}  # layer -> the rank its latest forward ran at
    for layer in adapter.layers.values():
        layer.register_forward_pre_hook(lambda module, _: used.__setitem__(module, module.current_rank()))
    draws = []
    for step in range(4):
        adapter.before_forward(step)
        b = adapter.draw(step)
        draws.append(b)
        used.clear()
        diffusion_loss(tiny_pipeline, parts, batch).backward()
        assert len(used) == len(adapter.layers)
        for layer in adapter.layers.values():
            assert used[layer] == b
            used_b = layer.lora_B.grad.abs().sum(dim=0) > 0  # [r]: columns that got gradient
            used_a = layer.lora_A.grad.abs().sum(dim=1) > 0  # [r]
            learning = torch.arange(r) == b - 1 if mode == "frozen" else torch.arange(r) < b
            assert torch.equal(used_b, learning) and torch.equal(used_a, learning)
        for p in adapter.trainable_parameters():
            p.grad = None
    assert len(set(draws)) > 1


@pytest.mark.parametrize("reentrant", [False, True])
def test_dylora_frozen_gradients_survive_gradient_checkpointing(tiny_pipeline, batch, reentrant):
    """Frozen mode zeroes the first b − 1 components' gradients in a hook on the sliced factors. Under
    gradient checkpointing (the U-Net's; the text encoder's reentrant or not) the forward runs again
    in the backward, and the gradients must still be those of a run without it: only component b."""
    grads = {}
    for ckpt in (False, True):
        torch.manual_seed(0)  # the same B ≠ 0 in both runs
        adapter, parts = _dylora(tiny_pipeline, "frozen")
        if ckpt:
            parts["unet"].enable_gradient_checkpointing()
            parts["text_encoder"].gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        for m in parts.values():
            m.train()
        step = next(s for s in range(100) if adapter.draw(s) == adapter.rank)  # b = r: r − 1 frozen
        adapter.before_forward(step)
        diffusion_loss(tiny_pipeline, parts, batch).backward()
        grads[ckpt] = [(layer.lora_A.grad, layer.lora_B.grad) for layer in adapter.layers.values()]
    r = adapter.rank
    for (a0, b0), (a1, b1) in zip(grads[False], grads[True], strict=True):
        assert torch.allclose(a0, a1, atol=1e-7) and torch.allclose(b0, b1, atol=1e-7)
        assert not a1[: r - 1].any() and not b1[:, : r - 1].any() and b1[:, r - 1].any()


def test_dylora_evaluation_uses_the_full_rank(tiny_pipeline):
    adapter, parts = _dylora(tiny_pipeline, "frozen")
    step = next(s for s in range(100) if adapter.draw(s) < adapter.rank)
    adapter.before_forward(step)
    layer = next(iter(adapter.layers.values()))
    x = torch.randn(5, layer.in_features)
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    full = layer.base(x) + x @ a.T @ b.T * (adapter.alpha / adapter.rank)
    k = adapter.draw(step)
    truncated = layer.base(x) + x @ a[:k].T @ b[:, :k].T * (adapter.alpha / k)
    with torch.no_grad():
        parts["unet"].train(), parts["text_encoder"].train()
        assert torch.allclose(layer(x), truncated, atol=1e-6)
        parts["unet"].eval(), parts["text_encoder"].eval()
        assert torch.allclose(layer(x), full, atol=1e-6) and not torch.allclose(full, truncated, atol=1e-4)
    fa, fb = adapter.factors()["unet"][next(iter(adapter.layers))[1]]
    assert torch.allclose(layer.base(x) + x @ fa.T @ fb.T, full, atol=1e-6)
    assert set(adapter.rank_map()["unet"].values()) == {adapter.rank}


def test_dylora_rank_sequence_is_a_function_of_the_seed():
    cfg = method_cfg("dylora")
    seq = [DyLoraAdapter(cfg, seed=0).draw(s) for s in range(200)]
    assert seq == [DyLoraAdapter(cfg, seed=0).draw(s) for s in range(200)]
    assert seq != [DyLoraAdapter(cfg, seed=1).draw(s) for s in range(200)]
    assert set(seq) == set(range(1, cfg.rank + 1))  # uniform on 1..r: every rank occurs


def _train(adapter, pipe, parts, batch, opt, start: int, stop: int) -> None:
    """The engine's step (hook order of selora.adapters.base) from ``start`` to ``stop``."""
    for module in parts.values():
        module.train()
    for step in range(start, stop):
        adapter.before_forward(step)
        loss = diffusion_loss(pipe, parts, batch)
        extra = adapter.extra_loss()
        (loss if extra is None else loss + extra).backward()
        opt.step()
        adapter.after_optimizer_step(step, opt)
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", METHODS)
def test_resume_from_state_dict_is_bit_identical(tiny_pipeline, batch, name):
    total, cut = 12, 5
    cfg = method_cfg(name, delta_t=2) if name == "adalora" else method_cfg(name)

    def fresh():
        parts = tiny_parts(tiny_pipeline)
        adapter = create_adapter(name, cfg, seed=0)
        adapter.attach(parts, total)
        return adapter, parts, torch.optim.Adam(adapter.trainable_parameters(), lr=LR[name])

    ref, parts, opt = fresh()
    _train(ref, tiny_pipeline, parts, batch, opt, 0, cut)
    saved, saved_opt = ref.state_dict(), copy.deepcopy(opt.state_dict())  # Adam updates in place
    _train(ref, tiny_pipeline, parts, batch, opt, cut, total)

    resumed, parts2, opt2 = fresh()
    resumed.load_state_dict(saved)
    opt2.load_state_dict(saved_opt)
    _train(resumed, tiny_pipeline, parts2, batch, opt2, cut, total)
    history = ref.history()
    assert resumed.rank_map() == ref.rank_map() and resumed.history() == history
    for p, q in zip(ref.trainable_parameters(), resumed.trainable_parameters(), strict=True):
        assert torch.equal(p, q)
    if name == "adalora":  # the resumed part crossed budget allocations, incl. the final one
        assert {row["step"] for row in history} >= {6, total - ref.tfinal}


def _small_parts() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    unet = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3), nn.Conv2d(3, 3, 1))  # no conv adapter
    return {"unet": unet, "text_encoder": nn.Sequential(nn.Linear(4, 5))}


@pytest.mark.parametrize(("name", "cfg", "unet", "text"), [
    # base: unet 6·10+10 + 10·3+3 + 3·3+3 = 115, text 4·5+5 = 25
    ("lora", {"rank": 2}, (2 * (6 + 10) + 2 * (10 + 3),) * 2, (2 * (4 + 5),) * 2),
    ("dylora", {"rank": 2}, (2 * 16 + 2 * 13,) * 2, (2 * 9,) * 2),
    # AdaLoRA trains A, E, B at the initial rank: r·(in + out + 1); all triplets kept before pruning
    ("adalora", {"init_rank": 3, "target_rank": 1}, (3 * 17 + 3 * 14, 3 * 16 + 3 * 13), (3 * 10, 3 * 9)),
])
def test_parameter_counts_match_a_hand_count(name, cfg, unet, text):
    adapter = create_adapter(name, method_cfg(name, **cfg), seed=0)
    adapter.attach(_small_parts(), total_steps=10)
    rows = {row["part"]: row for row in adapter.parameter_table()}
    for part, base, (trainable, effective) in (("unet", 115, unet), ("text_encoder", 25, text)):
        row = rows[part]
        assert (row["base_parameters"], row["trainable_parameters"], row["effective_parameters"]) == (
            base, trainable, effective)
        assert row["trainable_percent"] == pytest.approx(100 * trainable / base)
        assert row["effective_percent"] == pytest.approx(100 * effective / base)
        assert row["adapted_layers"] == (2 if part == "unet" else 1)


def test_lora_at_explicit_per_layer_ranks(tiny_pipeline):
    parts = _small_parts()
    adapter = LoraAdapter.at_ranks({"unet": {"0": 3, "2": 0}, "text_encoder": {"0": 1}}, seed=0)
    adapter.attach(parts, total_steps=10)
    assert adapter.rank_map() == {"unet": {"0": 3}, "text_encoder": {"0": 1}}  # rank 0: not adapted
    assert isinstance(parts["unet"][2], nn.Linear)
    for layer in adapter.layers.values():
        assert layer.scaling["default"] == 1.0  # alpha_i = r_i: SeLoRA's fixed scale 1
    rows = {row["part"]: row["trainable_parameters"] for row in adapter.parameter_table()}
    assert rows == {"unet": 3 * (6 + 10), "text_encoder": 1 * (4 + 5)}
    with pytest.raises(ConfigError, match=r"ranks\.unet.*nope"):
        LoraAdapter.at_ranks({"unet": {"nope": 2}}, seed=0).attach(_small_parts(), 10)
    with pytest.raises(ConfigError, match=r"ranks\.unet\.0"):
        LoraAdapter.at_ranks({"unet": {"0": -1}}, seed=0)


def test_lora_at_explicit_ranks_exports_what_it_computes(tiny_pipeline, tiny_base, tmp_path):
    parts = tiny_parts(tiny_pipeline)
    ranks = {p: {n: 1 + k % 4 for k, n in enumerate(linear_modules(m))} for p, m in parts.items()}
    adapter = LoraAdapter.at_ranks(ranks, seed=0)
    adapter.attach(parts, total_steps=1)
    assert adapter.rank_map() == ranks
    with torch.no_grad():  # as if trained: B ≠ 0
        for layer in adapter.layers.values():
            layer.lora_B["default"].weight.normal_(std=0.1)
    assert_export_roundtrip(adapter, tiny_pipeline, parts, tiny_base["path"], tmp_path / "at-ranks")


@pytest.mark.parametrize(("override", "key"), [
    ("methods.lora.rank=0", "methods.lora.rank"),
    ("methods.dylora.rank=0", "methods.dylora.rank"),
    ("methods.adalora.init_rank=0", "methods.adalora.init_rank"),
    ("methods.adalora.target_rank=0", "methods.adalora.target_rank"),
    ("methods.adalora.target_rank=7", "methods.adalora.target_rank"),
    ("methods.dylora.mode=random", "methods.dylora.mode"),
    ("methods.adalora.beta1=1.0", "methods.adalora.beta1"),  # the adapter's rule: one declaration
    ("methods.bogus.rank=4", "bogus"),
])
def test_bad_params_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_params(None, [override])
    assert key in str(err.value)


@pytest.mark.parametrize(("name", "changes", "key"), [
    ("lora", {"rank": 0}, "methods.lora.rank"),
    ("dylora", {"rank": 0}, "methods.dylora.rank"),
    ("dylora", {"mode": "random"}, "methods.dylora.mode"),
    ("adalora", {"init_rank": 0}, "methods.adalora.init_rank"),
    ("adalora", {"target_rank": 0}, "methods.adalora.target_rank"),
    ("adalora", {"target_rank": 7}, "methods.adalora.target_rank"),
    ("adalora", {"beta1": 1.0}, "methods.adalora.beta1"),
])
def test_adapters_built_without_the_schema_still_reject_bad_settings(name, changes, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        create_adapter(name, method_cfg(name, **changes), seed=0)


def test_unknown_method_and_impossible_schedule_fail_clearly():
    with pytest.raises(ConfigError, match=r"method.*'bogus'.*registered: .*adalora.*dylora.*lora"):
        create_adapter("bogus", None, seed=0)
    with pytest.raises(ConfigError, match=r"methods\.adalora\.tinit \+ tfinal"):  # no fraction left
        create_adapter("adalora", method_cfg("adalora", tinit=0.5, tfinal=0.5), seed=0)
    ada = create_adapter("adalora", method_cfg("adalora", tinit=0.45, tfinal=0.45), seed=0)
    with pytest.raises(ConfigError, match=r"methods\.adalora\.tinit/tfinal"):  # no step left
        ada.attach(_small_parts(), total_steps=4)
    with pytest.raises(ConfigError, match="optimiser steps"):
        create_adapter("adalora", method_cfg("adalora"), seed=0).attach(_small_parts(), total_steps=2)


@pytest.mark.parametrize("name", registered_methods())
def test_under_autocast_every_method_keeps_a_half_input_once(name):
    """A bf16 activation that an op keeps (here tanh's output) and an adapted layer reads under bf16
    autocast is kept once: the adapter branch keeps the same tensor, and the output equals what
    peft's input cast gives. peft casts it to the adapter weights' fp32 first, and autocast's matmul
    casts it back into a second copy (146 MiB at SD 1.5's 224 px / batch 8, benchmarks/README);
    SeLoRA and DyLoRA never made it, so without `keep_half_inputs` the methods' memory would not
    compare fairly."""
    torch.manual_seed(0)
    parts = {"unet": nn.Sequential(nn.Tanh(), nn.Linear(32, 48)),  # tanh keeps its output, x
             "text_encoder": nn.Sequential(nn.Linear(8, 8))}
    adapter = create_adapter(name, load_params(None).methods.get(name), seed=0)
    adapter.attach(parts, 10)
    adapter.before_forward(0)
    leaf = torch.randn(8, 64, 32).requires_grad_()

    def run() -> tuple[int, torch.Tensor]:
        kept: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = (leaf * 1.0).to(torch.bfloat16)  # an activation: autocast caches casts of leaves only
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with hooks, torch.autocast("cpu", dtype=torch.bfloat16):
            out = parts["unet"](x)
        return sum(n == x.numel() * 2 for n in kept.values()), out.detach()

    copies, out = run()
    assert copies == 1
    for module in parts["unet"].modules():  # peft's own behaviour, for the comparison
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = True
    peft_copies, peft_out = run()
    assert torch.equal(out, peft_out)
    assert peft_copies == (2 if name in ("lora", "adalora") else 1)
