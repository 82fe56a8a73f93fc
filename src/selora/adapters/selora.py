"""SeLoRA (paper Section 3, Algorithm 1): LoRA in every linear layer, starting at rank 1, each layer
growing one rank at a time when the Fisher information says the extra rank would carry information.

The layer and the exact in-step Fisher computation live in :mod:`selora.adapters._selora_layer`
(read its docstring for the maths: FI-Ratio = FI_exp / FI_orig = 1 + FI_new / FI_orig ≥ 1, Eq. 5 of
the paper is printed upside down). This module injects the layers, schedules the tests, grows the
layers, keeps the optimiser consistent, logs, exports and resumes.

**When the test runs.** ``step`` counts optimiser steps from 0; the test runs on steps with
``(step + 1) % t == 0``, i.e. after every t optimiser steps (t = 40: steps 39, 79, ...; Algorithm 1
tests at s mod t = 0, which would test after the very first update). ``before_forward`` draws one
Kaiming-uniform candidate k per layer and arms the layers; the training step's own forward and
backward fill the Fisher statistics; ``after_optimizer_step`` decides per layer. Both scores are
taken at the parameters of that forward (the optimiser step comes after the backward that computed
them). A layer expands iff its candidate column got gradient (FI_new > 0), FI_exp / FI_orig ≥ λ and
its rank is below the cap; expansion appends *the tested* k to A and a zero column to B **after**
the optimiser step, so the model output does not change. A non-finite score (an fp16 overflow step
that the GradScaler skips) never expands. The engine runs one forward and one backward per
optimiser step; gradient accumulation over micro-batches on a test step would make the per-sample
statistics pair up samples of different micro-batches.

**Optimiser continuity: parameter replacement with state transfer.** On expansion a layer gets new
``nn.Parameter`` objects A' [r+1, in], B' [out, r+1]; in the optimiser's ``param_groups`` each old
parameter is replaced *at its position* by the new one, and every state tensor shaped like the
parameter (Adam's exp_avg, exp_avg_sq, max_exp_avg_sq; SGD's momentum_buffer) is copied into the
leading block of a zero tensor of the new shape; scalar state (Adam's ``step``) is kept. So the
moments of existing entries are bit-identical, new entries start from zero moments, the groups
(and their lr, which LR schedulers drive) are untouched, and the optimiser steps only over the
active rank. We chose this over pre-allocated capacity + rank mask because SeLoRA has no natural
upper bound (``max_rank`` is optional): capacity would have to be guessed, would cost optimiser time
and memory for masked entries every step, and would make the trainable-parameter count (the paper's
efficiency figure) the capacity instead of the rank. The price: anything else holding the old
parameter objects goes stale — build the optimiser from :meth:`SeLoraAdapter.trainable_parameters`
(after :meth:`load_state_dict` when resuming) and nothing else; a mismatch is detected at the next
``after_optimizer_step`` and raised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selora.adapters._selora_layer import FISHER_MODES, FisherProbe, SeLoraLinear, fisher_scores, kaiming_rows
from selora.adapters.base import Adapter, linear_modules, register
from selora.errors import ConfigError
from selora.sections import check_section, param

STATE_VERSION = 1


@dataclass(frozen=True)
class SeLoraConfig:
    """params ``methods.selora``."""

    init_rank: int = param(minimum=1, default=1)
    threshold: float = param("λ: expand when FI_exp / FI_orig ≥ λ.", minimum=1, default=1.1)
    test_interval: int = param("t: optimiser steps between expansion tests.", minimum=1, default=40)
    fisher: str = param(enum=list(FISHER_MODES), default="per_sample")
    max_rank: int | None = param("Optional per-module rank cap.", minimum=1, default=None)
    scale: float = param("The fixed scale s of h = xW0 + s·xAB.", exclusiveMinimum=0, default=1.0)

    def check(self, key: str) -> None:
        """Cross-field rules the schema cannot express, before any job starts."""
        if self.max_rank is not None and self.max_rank < self.init_rank:
            raise ConfigError(f"{key}.max_rank: below {key}.init_rank")


@register("selora", SeLoraConfig, label="SeLoRA", order=3, proposed=True)
class SeLoraAdapter(Adapter):
    """SeLoRA behind the :class:`~selora.adapters.base.Adapter` interface."""

    def __init__(self, cfg: Any, *, seed: int) -> None:
        super().__init__(cfg, seed=seed)
        check_section(cfg, "methods.selora")
        self.layers: dict[tuple[str, str], SeLoraLinear] = {}  # (part, module name) -> layer
        self.generator = torch.Generator().manual_seed(int(seed))
        self._armed: tuple[int, dict[tuple[str, str], FisherProbe]] | None = None
        self._rows: list[dict[str, Any]] = []
        self._check_optimizer = False
        self._bounds: torch.Tensor | None = None  # [Σ in]: 1/√in of each layer's candidate entries

    # ---- set-up ------------------------------------------------------------------------------
    def attach(self, parts: Mapping[str, nn.Module], total_steps: int = 0) -> None:
        """Wrap every ``nn.Linear`` of each part in place, as the paper does (``total_steps`` is not
        needed: SeLoRA has no schedule); freeze every base parameter; convolutions stay as they are."""
        if self.parts:
            raise RuntimeError("SeLoRA adapter is already attached")
        chosen: dict[str, list[str]] = {}
        for part, module in parts.items():
            if any(isinstance(m, SeLoraLinear) for m in module.modules()):
                raise ConfigError(f"{part}: already holds SeLoRA layers; attach to a fresh model")
            chosen[part] = list(linear_modules(module))
        if not any(chosen.values()):
            raise ConfigError(f"selora: no linear layer to adapt in {', '.join(parts)}")
        for part, module in parts.items():
            for p in module.parameters():
                p.requires_grad_(False)
            for name in chosen[part]:
                parent_name, _, child = name.rpartition(".")
                parent = module.get_submodule(parent_name) if parent_name else module
                base = getattr(parent, child)
                a0 = kaiming_rows(self.cfg.init_rank, base.in_features, self.generator, torch.float32)
                layer = SeLoraLinear(base, a0, self.cfg.scale)
                setattr(parent, child, layer)
                self.layers[(part, name)] = layer
        self.parts = dict(parts)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B)]

    # ---- the expansion test ------------------------------------------------------------------
    def is_test_step(self, step: int) -> bool:
        return (step + 1) % self.cfg.test_interval == 0

    def _capped(self, layer: SeLoraLinear) -> bool:
        return self.cfg.max_rank is not None and layer.rank >= self.cfg.max_rank

    def before_forward(self, step: int) -> None:
        self._disarm()
        if not self.is_test_step(step):
            return
        # one Kaiming-uniform candidate per layer and test, capped or not, so that the stream of draws
        # never depends on the ranks; one draw for all layers: U(0,1) → U(-1/√in, 1/√in)
        if self._bounds is None:
            self._bounds = torch.cat([torch.full((layer.in_features,), 1 / math.sqrt(layer.in_features),
                                                 dtype=torch.float64) for layer in self.layers.values()])
        u = torch.rand(self._bounds.shape, generator=self.generator, dtype=torch.float64)
        # converted once, not per layer in arm() (there a no-op then): 256 copies fewer on SD 1.5, and
        # one host-to-device transfer instead of one per layer on a GPU; the same values either way
        first = next(iter(self.layers.values())).lora_A
        ks = torch.split(((u * 2 - 1) * self._bounds).to(first.device, first.dtype),
                         [layer.in_features for layer in self.layers.values()])
        probes = {}
        for (key, layer), k in zip(self.layers.items(), ks, strict=True):
            if not self._capped(layer):
                probes[key] = FisherProbe(self.cfg.fisher, self.cfg.scale)
                layer.arm(k, probes[key])
        self._armed = (step, probes)

    def _disarm(self) -> None:
        for layer in self.layers.values():
            layer.disarm()
        self._armed = None

    def fisher_scores(self) -> dict[tuple[str, str], tuple[float, float]]:
        """(FI_orig, FI_exp) per probed layer of the current test step (after its backward)."""
        if self._armed is None:
            return {}
        keys = [k for k, p in self._armed[1].items() if p.calls]
        scores = fisher_scores([self._armed[1][k] for k in keys])
        return {k: (o, o + n) for k, (o, n) in zip(keys, scores, strict=True)}

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        if self._check_optimizer:
            self._verify_optimizer(optimizer)
        if self._armed is None or self._armed[0] != step:
            self._disarm()
            return
        lam = float(self.cfg.threshold)
        scores = self.fisher_scores()
        grown: dict[int, nn.Parameter] = {}
        for key, layer in self.layers.items():
            ratio, expand = float("nan"), False
            if key in scores:
                orig, exp = scores[key]
                new = exp - orig
                if math.isfinite(orig) and math.isfinite(exp):
                    ratio = exp / orig if orig > 0 else (math.inf if new > 0 else 1.0)
                    expand = new > 0 and ratio >= lam and not self._capped(layer)
            if expand:
                old_a, old_b = layer.lora_A, layer.lora_B
                layer.lora_A, layer.lora_B = layer.grown(layer.candidate)
                grown[id(old_a)], grown[id(old_b)] = layer.lora_A, layer.lora_B
            self._rows.append({"step": step, "part": key[0], "module": key[1], "rank": layer.rank,
                               "fi_ratio": ratio, "expanded": expand})
        self._disarm()
        if grown:
            replace_in_optimizer(optimizer, grown)

    def _verify_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for (part, n), layer in self.layers.items()
                   if id(layer.lora_A) not in held or id(layer.lora_B) not in held]
        if missing:
            raise RuntimeError(
                f"the optimiser does not hold SeLoRA's current parameters ({len(missing)} layers, e.g. "
                f"{missing[0]}): build it from adapter.trainable_parameters() after load_state_dict()"
            )
        self._check_optimizer = False

    # ---- logs and export ---------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows

    def rank_map(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {p: {} for p in self.parts}
        for (part, name), layer in self.layers.items():
            out[part][name] = layer.rank
        return out

    def factors(self) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {p: {} for p in self.parts}
        for (part, name), layer in self.layers.items():
            out[part][name] = (layer.lora_A.detach(), layer.lora_B.detach() * layer.scale)
        return out

    # ---- resuming ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": "selora",
            "version": STATE_VERSION,
            "layers": {f"{p}.{n}": {"A": layer.lora_A.detach().cpu().clone(),
                                    "B": layer.lora_B.detach().cpu().clone()}
                       for (p, n), layer in self.layers.items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("method") != "selora" or state.get("version") != STATE_VERSION:
            raise ConfigError(f"not a SeLoRA state (version {STATE_VERSION}): "
                              f"method={state.get('method')!r}, version={state.get('version')!r}")
        saved = state["layers"]
        unknown = [k for k in saved if k not in {f"{p}.{n}" for p, n in self.layers}]
        if unknown:
            raise ConfigError(f"SeLoRA state has layers this model lacks: {unknown[:3]}")
        missing = sorted(f"{p}.{n}" for p, n in self.layers if f"{p}.{n}" not in saved)
        if missing:
            raise ConfigError(f"SeLoRA state lacks adapted layers of this model: {missing[:3]}")
        for (p, n), layer in self.layers.items():
            layer.set_factors(saved[f"{p}.{n}"]["A"], saved[f"{p}.{n}"]["B"])
        self._check_optimizer = True
        self.generator.set_state(state["generator"])  # a state saved with "tests_done" loads too
        self._disarm()


def replace_in_optimizer(optimizer: torch.optim.Optimizer, new_by_old_id: Mapping[int, nn.Parameter]) -> None:
    """Swap grown parameters into the optimiser at their positions and carry their state over.

    State tensors shaped like the old parameter are zero-padded to the new shape (old entries
    bit-identical, new entries zero); other state (Adam's ``step``) is kept. The new parameters
    start without ``.grad`` (the step's gradient was used; ``zero_grad`` comes next).
    """
    found = 0
    for group in optimizer.param_groups:
        params = group["params"]
        for i, old in enumerate(params):
            new = new_by_old_id.get(id(old))
            if new is None:
                continue
            params[i] = new
            found += 1
            state = optimizer.state.pop(old, None)
            if state:
                optimizer.state[new] = {k: _pad_like(v, old, new) for k, v in state.items()}
    if found != len(new_by_old_id):
        raise RuntimeError(f"{len(new_by_old_id) - found} grown SeLoRA parameters are not in the optimiser: "
                           "build it from adapter.trainable_parameters()")


def _pad_like(value: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    if not torch.is_tensor(value) or value.shape != old.shape:
        return value
    pad = []  # F.pad lists (before, after) from the last dimension backwards
    for n_old, n_new in zip(reversed(value.shape), reversed(new.shape), strict=True):
        pad += [0, n_new - n_old]
    return F.pad(value, pad)
