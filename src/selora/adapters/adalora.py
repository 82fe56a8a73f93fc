"""AdaLoRA (Zhang et al. 2023) through peft, with one rank budget over U-Net and text encoder.

peft's ``add_adapter`` / ``inject_adapter_in_model`` drop the tuner object that owns the budget
(``update_and_allocate``), so we build :class:`peft.AdaLoraModel` on a container of both parts and
keep the handle. Per optimiser step (:mod:`selora.adapters.base` hook order):

- the orthogonal regulariser is added to the diffusion loss (:meth:`extra_loss`; peft only adds it
  when the model output has ``.loss``, which a U-Net's does not);
- ``update_and_allocate(step)`` runs after ``optimizer.step()`` with the gradients still present:
  importance EMAs, the cubic budget from ``init_rank · n`` to ``target_rank · n`` between
  ``tinit`` and ``total − tfinal``, masking of the least important singular triplets.

``tinit`` / ``tfinal`` are fractions of the real number of optimiser steps given to ``attach``.
Each layer computes ΔW = B · diag(E) · A · alpha / (ranknum + 1e-5); the export folds E, the mask and
the scale into the factors and drops pruned triplets, so the standard file has each layer's final rank.
With ``target_rank == init_rank`` there is no budget to reallocate and the allocation is skipped.

Fair budget: the engine exports the best validation epoch, but only among epochs that end after the
final allocation (:meth:`AdaLoraAdapter.exportable`), so the exported adapter has exactly the target
budget of ``target_rank · n`` ranks (fewer only on importance ties) like every other method's r = 4.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selora.adapters._common import (
    adaptable_layers,
    copy_tensors,
    freeze,
    keep_half_inputs,
    qualified,
    require_attached,
    seeded,
)
from selora.adapters.base import Adapter, register
from selora.errors import ConfigError
from selora.sections import check_section, param

ADAPTER = "default"
KEYS = ("lora_A", "lora_E", "lora_B")


def schedule_steps(cfg: Any, total_steps: int) -> tuple[int, int]:
    """(tinit, tfinal) in optimiser steps; tfinal ≥ 1 so the final allocation step is reached."""
    if total_steps < 3:
        raise ConfigError(f"adalora: {total_steps} optimiser steps (setups.*.epochs / max_steps) leave no "
                          "room for budget allocation (need ≥ 3: warm-up, reduction, final)")
    tinit = round(cfg.tinit * total_steps)
    tfinal = max(1, round(cfg.tfinal * total_steps))
    if tinit >= total_steps - tfinal:
        raise ConfigError(
            f"methods.adalora.tinit/tfinal: {cfg.tinit} and {cfg.tfinal} of {total_steps} steps "
            f"({tinit} + {tfinal}) leave no budget-reduction phase")
    return tinit, tfinal


@dataclass(frozen=True)
class AdaLoraConfig:
    """params ``methods.adalora``."""

    init_rank: int = param(minimum=1, default=6)
    target_rank: int = param(minimum=1, default=4)
    alpha: float = param(exclusiveMinimum=0, default=6)
    tinit: float = param("Warm-up before pruning, as a fraction of all steps.", minimum=0, maximum=1,
                         default=0.1)
    tfinal: float = param("Final fine-tuning at the target budget, as a fraction (budget reduction ≈ half "
                          "of training, as the AdaLoRA author advises).", minimum=0, maximum=1, default=0.4)
    delta_t: int = param("Steps between budget allocations.", minimum=1, default=10)
    beta1: float = param("EMA coefficient of the sensitivity, strictly between 0 and 1.", exclusiveMinimum=0,
                         exclusiveMaximum=1, default=0.85)
    beta2: float = param("EMA coefficient of the uncertainty, strictly between 0 and 1.", exclusiveMinimum=0,
                         exclusiveMaximum=1, default=0.85)
    orth_reg_weight: float = param(minimum=0, default=0.5)

    def check(self, key: str) -> None:
        """Cross-field rules the schema cannot express, before any job starts."""
        if self.target_rank > self.init_rank:
            raise ConfigError(f"{key}.target_rank: {self.target_rank} is above {key}.init_rank "
                              f"{self.init_rank}")
        if self.tinit + self.tfinal >= 1:
            raise ConfigError(f"{key}.tinit + tfinal must leave room for budget reduction (< 1)")


@register("adalora", AdaLoraConfig, label="AdaLoRA", order=1)
class AdaLoraAdapter(Adapter):
    """peft AdaLoRA with the tuner handle kept, a global budget and a foldable export."""

    def __init__(self, cfg: Any, *, seed: int) -> None:
        super().__init__(cfg, seed=seed)
        check_section(cfg, "methods.adalora")
        self.init_rank, self.target_rank = cfg.init_rank, cfg.target_rank
        self.tuner: Any = None
        self.layers: dict[tuple[str, str], nn.Module] = {}
        self._rows: list[dict[str, Any]] = []

    # ---- set-up ------------------------------------------------------------------------------
    def attach(self, parts: Mapping[str, nn.Module], total_steps: int) -> None:
        from peft import AdaLoraConfig, AdaLoraModel

        tinit, tfinal = schedule_steps(self.cfg, total_steps)
        self.parts = dict(parts)
        layers = adaptable_layers(self.parts)
        config = AdaLoraConfig(
            init_r=self.init_rank, target_r=self.target_rank, lora_alpha=self.cfg.alpha,
            tinit=tinit, tfinal=tfinal, deltaT=self.cfg.delta_t, beta1=self.cfg.beta1,
            beta2=self.cfg.beta2, orth_reg_weight=self.cfg.orth_reg_weight, total_step=total_steps,
            target_modules=[qualified(p, n) for p, names in layers.items() for n in names], lora_dropout=0.0,
        )
        freeze(self.parts)
        with seeded(self.seed):
            self.tuner = AdaLoraModel(nn.ModuleDict(self.parts), config, ADAPTER)
        keep_half_inputs(self.tuner.model)
        self.layers = {(p, n): self.tuner.model.get_submodule(qualified(p, n))
                       for p, names in layers.items() for n in names}
        self.total_steps, self.tinit, self.tfinal = total_steps, tinit, tfinal

    @property
    def peft_config(self):
        return self.tuner.peft_config[ADAPTER]

    def trainable_parameters(self) -> list[nn.Parameter]:
        require_attached(self.parts, "adalora")
        return [getattr(layer, k)[ADAPTER] for layer in self.layers.values() for k in KEYS]

    def adapter_parameters(self) -> list[nn.Parameter]:
        # ranknum is a frozen peft Parameter of the adapter, not a base weight
        return self.trainable_parameters() + [layer.ranknum[ADAPTER] for layer in self.layers.values()]

    # ---- hooks -------------------------------------------------------------------------------
    def extra_loss(self) -> torch.Tensor | None:
        """orth_reg_weight · mean over all A and B of ‖P Pᵀ − I‖_F (AdaLoRA's regulariser, as peft).

        The Gram matrices are stacked and the identity and the norms taken once per shape (every
        layer's, as they all start at init_rank): the same values and gradients, bit for bit, as a
        norm per matrix, with 4 ops instead of 3 per matrix (SD 1.5's 512 matrices: 1,532 fewer each
        step, half the regulariser's time; benchmarks/README)."""
        weight = self.cfg.orth_reg_weight
        if weight == 0:
            return None
        covs = []
        for layer in self.layers.values():
            a, b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]  # [r, in], [out, r]
            covs += [a @ a.T, b.T @ b]  # [r, r] each
        by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for cov in covs:
            by_shape.setdefault(tuple(cov.shape), []).append(cov)
        terms = []
        for group in by_shape.values():
            stacked = torch.stack(group)  # [G, r, r]
            eye = torch.eye(stacked.shape[-1], dtype=stacked.dtype, device=stacked.device)
            terms.append(torch.linalg.matrix_norm(stacked - eye, ord="fro"))  # [G]
        return weight * torch.cat(terms).mean()

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        if self.init_rank == self.target_rank:
            return  # nothing to allocate (peft would fail ranking zero triplets to prune)
        before = self.peft_config.rank_pattern
        self.tuner.update_and_allocate(step)
        if self.peft_config.rank_pattern is not before:  # a budget allocation happened this step
            budget, _ = self.tuner.rankallocator.budget_schedule(step)
            for part, layers in self.rank_map().items():
                for name, rank in layers.items():
                    self._rows.append({"step": step, "part": part, "module": name, "rank": rank,
                                       "budget": int(budget)})

    def exportable(self, steps_done: int) -> bool:
        """Only after the final allocation (step ``total − tfinal``): before it the adapter holds more
        than ``target_rank · n`` ranks (all ``init_rank`` ones before ``tinit``; and between
        allocations Adam revives masked triplets), so an early "best" epoch would break the budget
        the comparison promises. From then on peft re-applies the final mask after every step."""
        return self.init_rank == self.target_rank or steps_done > self.total_steps - self.tfinal

    def history(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows

    # ---- logging and export ------------------------------------------------------------------
    def _kept(self, part: str, name: str, layer: nn.Module) -> torch.Tensor:
        """Triplets still in use: not masked by the last allocation, or revived since (E ≠ 0)."""
        e = layer.lora_E[ADAPTER].detach().view(-1)  # [r]
        pattern = self.peft_config.rank_pattern
        key = f"{qualified(part, name)}.lora_E.{ADAPTER}"
        if not pattern or key not in pattern:
            return torch.ones_like(e, dtype=torch.bool)
        mask = torch.tensor(pattern[key], dtype=torch.bool, device=e.device)
        return mask | (e != 0)

    def rank_map(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {p: {} for p in self.parts}
        for (part, name), layer in self.layers.items():
            out[part][name] = int(self._kept(part, name, layer).sum())
        return out

    def factors(self) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {p: {} for p in self.parts}
        for (part, name), layer in self.layers.items():
            keep = self._kept(part, name, layer)
            a = layer.lora_A[ADAPTER].detach() * layer.lora_E[ADAPTER].detach()  # [r, in] · [r, 1]
            scale = layer.scaling[ADAPTER] / (layer.ranknum[ADAPTER].detach() + 1e-5)  # [1]
            b = layer.lora_B[ADAPTER].detach() * scale  # [out, r]
            out[part][name] = (a[keep], b[:, keep])
        return out

    # ---- resuming ----------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f"{qualified(p, n)}.{k}": getattr(layer, k)[ADAPTER]
                for (p, n), layer in self.layers.items() for k in (*KEYS, "ranknum")}

    def state_dict(self) -> dict[str, Any]:
        alloc = self.tuner.rankallocator
        pattern = self.peft_config.rank_pattern
        return {
            "method": self.name,
            "schedule": {"total_steps": self.total_steps, "tinit": self.tinit, "tfinal": self.tfinal},
            "tensors": {k: v.detach().clone() for k, v in self._tensors().items()},
            "rank_pattern": None if pattern is None else {k: list(v) for k, v in pattern.items()},
            "importance": {buf: {k: v.clone() for k, v in getattr(alloc, buf).items()}
                           for buf in ("ipt", "exp_avg_ipt", "exp_avg_unc")},
            "history": list(self._rows),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        require_attached(self.parts, "adalora")
        schedule = {"total_steps": self.total_steps, "tinit": self.tinit, "tfinal": self.tfinal}
        if state.get("method") != self.name or state.get("schedule") != schedule:
            raise ValueError(f"adalora: the saved state is from another method or schedule "
                             f"({state.get('schedule')} vs {schedule})")
        copy_tensors(self._tensors(), state["tensors"], "adalora")
        pattern = state["rank_pattern"]
        self.peft_config.rank_pattern = None if pattern is None else {k: list(v) for k, v in pattern.items()}
        alloc = self.tuner.rankallocator
        for buf, values in state["importance"].items():
            setattr(alloc, buf, {k: v.clone() for k, v in values.items()})
        self._rows = list(state["history"])

