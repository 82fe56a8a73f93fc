"""LoRA (Hu et al. 2022) on every linear layer of the U-Net and text encoder, through peft.

Set up as diffusers' own LoRA training script does it: ``LoraConfig(r, lora_alpha,
init_lora_weights="gaussian")`` (A ~ N(0, 1/r²), B = 0, so training starts at the base model),
scale alpha / r with alpha = r by default (params ``methods.lora``).

:meth:`LoraAdapter.at_ranks` builds LoRA with an explicit rank per layer (peft ``rank_pattern`` /
``alpha_pattern`` with anchored names): the step-time and memory baseline "LoRA at exactly SeLoRA's
final ranks" of ``benchmarks/sd15.py`` (``make bench``), not a params option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selora.adapters._common import (
    adaptable_layers,
    anchored,
    check_positive,
    check_rank,
    copy_tensors,
    freeze,
    keep_half_inputs,
    most_common,
    qualified,
    require_attached,
    seeded,
)
from selora.adapters.base import Adapter, register
from selora.errors import ConfigError
from selora.sections import check_section, param

ADAPTER = "default"


@dataclass(frozen=True)
class LoraConfig:
    """params ``methods.lora``."""

    rank: int = param(minimum=1, default=4)
    alpha: float = param(exclusiveMinimum=0, default=4)


@register("lora", LoraConfig, label="LoRA", order=0)
class LoraAdapter(Adapter):
    """Plain LoRA; no hooks, no extra loss."""

    def __init__(self, cfg: Any, *, seed: int, ranks: Mapping[str, Mapping[str, int]] | None = None,
                 scale: float = 1.0) -> None:
        super().__init__(cfg, seed=seed)
        self.explicit = ranks is not None
        if ranks is None:
            check_section(cfg, "methods.lora")
            self.rank, self.alpha = cfg.rank, float(cfg.alpha)
            self.ranks: dict[str, dict[str, int]] = {}
        else:
            self.ranks = {p: {n: check_rank(r, f"ranks.{p}.{n}", minimum=0) for n, r in layers.items()}
                          for p, layers in ranks.items()}
            self.scale = check_positive(scale, "scale")
        self.layers: dict[tuple[str, str], nn.Module] = {}

    @classmethod
    def at_ranks(cls, ranks: Mapping[str, Mapping[str, int]], *, seed: int,
                 scale: float = 1.0) -> LoraAdapter:
        """LoRA with rank ``ranks[part][module]`` per layer (0 = leave that layer unadapted) and the
        fixed scale ``scale`` (alpha_i = scale · r_i), e.g. at SeLoRA's final ranks."""
        return cls(None, seed=seed, ranks=ranks, scale=scale)

    # ---- set-up ------------------------------------------------------------------------------
    def _peft_config(self, layers: Mapping[str, list[str]]):
        from peft import LoraConfig

        if not self.explicit:
            targets = [qualified(p, n) for p, names in layers.items() for n in names]
            return LoraConfig(r=self.rank, lora_alpha=self.alpha, init_lora_weights="gaussian",
                              target_modules=targets, lora_dropout=0.0)
        for part, given in self.ranks.items():
            unknown = sorted(set(given) - set(layers.get(part, [])))
            if unknown:
                raise ConfigError(f"ranks.{part}: no linear layer named {', '.join(unknown[:3])} "
                                  f"in the {part}")
        wanted = {qualified(p, n): r for p, given in self.ranks.items() for n, r in given.items() if r > 0}
        if not wanted:
            raise ConfigError("ranks: every layer has rank 0; nothing to adapt")
        default = most_common(list(wanted.values()))
        return LoraConfig(
            r=default, lora_alpha=self.scale * default, init_lora_weights="gaussian",
            target_modules=sorted(wanted), lora_dropout=0.0,
            rank_pattern={anchored(q): r for q, r in wanted.items() if r != default},
            alpha_pattern={anchored(q): self.scale * r for q, r in wanted.items() if r != default},
        )

    def attach(self, parts: Mapping[str, nn.Module], total_steps: int) -> None:
        from peft import LoraModel

        self.parts = dict(parts)
        layers = adaptable_layers(self.parts)
        config = self._peft_config(layers)
        freeze(self.parts)
        container = nn.ModuleDict(self.parts)
        with seeded(self.seed):
            LoraModel(container, config, ADAPTER)  # injects in place into the parts
        keep_half_inputs(container)
        self.layers = {(p, n): container.get_submodule(qualified(p, n))
                       for p, names in layers.items() for n in names
                       if hasattr(container.get_submodule(qualified(p, n)), "lora_A")}

    def trainable_parameters(self) -> list[nn.Parameter]:
        require_attached(self.parts, "lora")
        return [w for layer in self.layers.values()
                for w in (layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight)]

    # ---- logging and export ------------------------------------------------------------------
    def rank_map(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {p: {} for p in self.parts}
        for (part, name), layer in self.layers.items():
            out[part][name] = int(layer.r[ADAPTER])
        return out

    def factors(self) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {p: {} for p in self.parts}
        for (part, name), layer in self.layers.items():
            a = layer.lora_A[ADAPTER].weight.detach()  # [r, in]
            b = layer.lora_B[ADAPTER].weight.detach() * layer.scaling[ADAPTER]  # [out, r]
            out[part][name] = (a.clone(), b)
        return out

    # ---- resuming ----------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f"{qualified(p, n)}.{k}": getattr(layer, k)[ADAPTER].weight
                for (p, n), layer in self.layers.items() for k in ("lora_A", "lora_B")}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name, "ranks": self.rank_map(),
                "tensors": {k: v.detach().clone() for k, v in self._tensors().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        require_attached(self.parts, "lora")
        if state.get("method") != self.name or state.get("ranks") != self.rank_map():
            raise ValueError("lora: the saved state is from another method or another rank map")
        copy_tensors(self._tensors(), state["tensors"], "lora")
