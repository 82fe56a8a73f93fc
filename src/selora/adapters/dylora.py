"""DyLoRA (Valipour et al. 2023) with the official semantics, as a small module of our own.

Official code (huawei-noah/Efficient-NLP, DyLoRA/loralib): each training step draws one rank
b ∈ {1..r}, shared by **all** layers; the forward pass uses the truncated factors A[:b] and B[:, :b]
with scale alpha / b; in the default ``frozen`` mode the first b − 1 components are detached, so only
component b learns in that step (``full``: all of the first b learn). In ``eval()`` every layer uses
the full rank r with scale alpha / r, which is also what is exported.

lycoris-lora's DyLoRA is not used: it draws per module and per forward with Python's ``random``
(also at evaluation), so layers disagree and runs cannot be resumed.

The rank of step s is drawn from a generator seeded with (seed, s): the sequence depends only on the
seed, and resuming at any step reproduces it without carrying RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selora.adapters._common import (
    adaptable_layers,
    copy_tensors,
    freeze,
    qualified,
    require_attached,
    seeded,
)
from selora.adapters.base import Adapter, register
from selora.sections import check_section, param

MODES = ("frozen", "full")


class SharedRank:
    """The rank drawn for the current step; one instance is shared by every layer of an adapter."""

    def __init__(self) -> None:
        self.value: int | None = None  # None: no draw yet → full rank


class DyLoraLinear(nn.Module):
    """h = x W0ᵀ + (alpha / b) · x A[:b]ᵀ B[:, :b]ᵀ, b = the shared draw in training, r in eval."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, frozen: bool, shared: SharedRank) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.frozen, self.shared = rank, alpha, frozen, shared
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as the official loralib; B = 0

    # nn.Linear's attributes, for code that inspects the layer it adapted
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def current_rank(self) -> int:
        drawn = self.shared.value
        return self.rank if not self.training or drawn is None else drawn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.current_rank()
        a, bb = self.lora_A[:b], self.lora_B[:, :b]  # [b, in], [out, b]
        if self.training and self.frozen and b > 1 and a.requires_grad:
            # only component b learns: the first b − 1 get a zero gradient, as if detached — zeroed on
            # the way back instead of a detached copy concatenated in the forward (the same values;
            # 4 calls a factor instead of 10, which a per-op-bound step pays in every layer)
            a.register_hook(_last_row_only)
            bb.register_hook(_last_column_only)
        return self.base(x) + F.linear(F.linear(x, a), bb) * (self.alpha / b)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, frozen={self.frozen}"


def _last_component_only(grad: torch.Tensor, dim: int) -> torch.Tensor:
    """The gradient with every component but the last along ``dim`` (A's rows, B's columns) zeroed."""
    grad = grad.clone()
    grad.narrow(dim, 0, grad.shape[dim] - 1).zero_()
    return grad


_last_row_only = partial(_last_component_only, dim=0)  # A[:b]: [b, in]
_last_column_only = partial(_last_component_only, dim=1)  # B[:, :b]: [out, b]


@dataclass(frozen=True)
class DyLoraConfig:
    """params ``methods.dylora``."""

    rank: int = param(minimum=1, default=4)
    alpha: float = param(exclusiveMinimum=0, default=4)
    mode: str = param("frozen: only the drawn component learns (official default).", enum=list(MODES),
                      default="frozen")


@register("dylora", DyLoraConfig, label="DyLoRA", order=2)
class DyLoraAdapter(Adapter):
    """DyLoRA on every linear layer; ``before_forward`` draws the step's rank for all layers."""

    def __init__(self, cfg: Any, *, seed: int) -> None:
        super().__init__(cfg, seed=seed)
        check_section(cfg, "methods.dylora")
        self.rank, self.alpha = cfg.rank, float(cfg.alpha)
        self.shared = SharedRank()
        self.layers: dict[tuple[str, str], DyLoraLinear] = {}

    def draw(self, step: int) -> int:
        """The rank of optimiser step ``step``: uniform on {1..r}, a function of (seed, step) only."""
        return int(np.random.default_rng([self.seed, step]).integers(1, self.rank + 1))

    # ---- set-up ------------------------------------------------------------------------------
    def attach(self, parts: Mapping[str, nn.Module], total_steps: int) -> None:
        self.parts = dict(parts)
        freeze(self.parts)
        with seeded(self.seed):
            for part, names in adaptable_layers(self.parts).items():
                module = self.parts[part]
                for name in names:
                    parent_name, _, child = name.rpartition(".")
                    parent = module.get_submodule(parent_name)
                    layer = DyLoraLinear(getattr(parent, child), self.rank, self.alpha,
                                         self.cfg.mode == "frozen", self.shared)
                    setattr(parent, child, layer)
                    self.layers[(part, name)] = layer

    def trainable_parameters(self) -> list[nn.Parameter]:
        require_attached(self.parts, "dylora")
        return [w for layer in self.layers.values() for w in (layer.lora_A, layer.lora_B)]

    # ---- hooks -------------------------------------------------------------------------------
    def before_forward(self, step: int) -> None:
        self.shared.value = self.draw(step)

    # ---- logging and export ------------------------------------------------------------------
    def rank_map(self) -> dict[str, dict[str, int]]:
        """The full rank: what evaluation uses and what is exported."""
        out: dict[str, dict[str, int]] = {p: {} for p in self.parts}
        for part, name in self.layers:
            out[part][name] = self.rank
        return out

    def factors(self) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {p: {} for p in self.parts}
        for (part, name), layer in self.layers.items():
            b = layer.lora_B.detach() * (self.alpha / self.rank)  # [out, r], the eval-time scale folded in
            out[part][name] = (layer.lora_A.detach().clone(), b)
        return out

    # ---- resuming ----------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f"{qualified(p, n)}.{k}": getattr(layer, k)
                for (p, n), layer in self.layers.items() for k in ("lora_A", "lora_B")}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name, "seed": self.seed, "drawn_rank": self.shared.value,
                "tensors": {k: v.detach().clone() for k, v in self._tensors().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        require_attached(self.parts, "dylora")
        if state.get("method") != self.name:
            raise ValueError("dylora: the saved state is from another method")
        copy_tensors(self._tensors(), state["tensors"], "dylora")
        self.seed, self.shared.value = int(state["seed"]), state["drawn_rank"]
