"""The adapter interface the training loop calls, and the registry of methods.

One method = one module that subclasses :class:`Adapter` and registers itself by name with its params
section class and label (``@register("selora", SeLoraConfig, label="SeLoRA")``), as peft's
``register_peft_method`` does; every name list (params schema, Snakemake wildcards, report labels)
is derived from this registry. The training loop never asks
which method it runs; per optimiser step it calls::

    adapter.before_forward(step)                 # DyLoRA: draw this step's rank; SeLoRA: arm hooks
    loss = diffusion_loss + adapter.extra_loss() # AdaLoRA: orthogonal regulariser (else 0)
    loss.backward()
    optimizer.step()
    adapter.after_optimizer_step(step, optimizer)  # AdaLoRA: update_and_allocate; SeLoRA: FI test
    optimizer.zero_grad()

``step`` counts optimiser steps from 0. Contracts:

- ``attach`` injects into the model parts (``{"unet": ..., "text_encoder": ...}``), freezes every
  base weight and leaves convolutions alone.
- ``trainable_parameters()`` has a fixed order; if a method replaces parameters (SeLoRA growing),
  it does so at the same positions in the optimiser's param groups and transfers their state, so
  the loop's optimiser and LR scheduler keep working.
- In ``eval()`` mode every method computes its full, final adapter (DyLoRA: full rank).
- ``factors()`` returns exportable per-layer (A [r, in], B [out, r]) with the scale folded into B;
  ``export`` writes the standard LoRA file every method shares (:mod:`selora.adapters.export`).
- ``exportable(steps_done)`` says whether the current adapter may become the exported "best" epoch
  (the loop never picks an epoch it refuses; the last epoch is always allowed).
- ``state_dict`` / ``load_state_dict`` hold everything needed to resume bit-identically
  (weights, current ranks/masks, method RNG), apart from the optimiser which the loop saves.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from selora.errors import ConfigError


@dataclass(frozen=True)
class MethodSpec:
    """One registered method: everything outside its module that needs it reads it from here."""

    name: str  # the key of params.yaml's methods section, experiment.methods and run folders
    adapter: type[Adapter]
    config: type  # frozen dataclass of methods.<name> (its fields declare the schema: selora.sections)
    label: str  # the name tables, figures and the paper's published results use
    order: int  # position in the default grid and the tables (then by name)
    proposed: bool = False  # the method under study: compared with every other, its params ablated


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, config: type, *, label: str | None = None, order: int = 100,
             proposed: bool = False) -> Callable[[type[Adapter]], type[Adapter]]:
    """Class decorator: make a method available under ``name`` with its params section class
    ``config`` (as peft's ``register_peft_method(name, config_cls, model_cls)``)."""

    def deco(cls: type[Adapter]) -> type[Adapter]:
        if name in _REGISTRY and _REGISTRY[name].adapter is not cls:
            raise ValueError(f"adapter method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = MethodSpec(name, cls, config, label or name, order, proposed)
        return cls

    return deco


def _load_methods() -> None:
    """Import the built-in method modules (each registers itself), then ``SELORA_PLUGINS``."""
    import importlib
    import pkgutil

    import selora.adapters as pkg
    from selora.plugins import load_plugins

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base", "export") and not info.name.startswith("_"):
            importlib.import_module(f"selora.adapters.{info.name}")
    load_plugins()


def method_specs() -> list[MethodSpec]:
    """Every registered method, in table order."""
    _load_methods()
    return sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name))


def method_spec(name: str) -> MethodSpec:
    _load_methods()
    if name not in _REGISTRY:
        raise ConfigError(f"method: unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def proposed_method() -> str:
    """The method the benchmark studies (registered with ``proposed=True``: SeLoRA): the quality
    tables compare every other method with it, and the λ / t ablations vary its params."""
    names = [m.name for m in method_specs() if m.proposed]
    if len(names) != 1:
        raise ConfigError(f"exactly one method must be registered with proposed=True, found {names}")
    return names[0]


def registered_methods() -> list[str]:
    _load_methods()
    return sorted(_REGISTRY)


def create_adapter(name: str, cfg: Any, *, seed: int) -> Adapter:
    """Instantiate the method registered as ``name`` with its params section ``cfg``."""
    return method_spec(name).adapter(cfg, seed=seed)


def linear_modules(module: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of ``module`` by qualified name (convolutions are not linears)."""
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Adapter(abc.ABC):
    """One fine-tuning method behind the interface described in the module docstring."""

    name: ClassVar[str] = ""

    def __init__(self, cfg: Any, *, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.parts: dict[str, nn.Module] = {}

    # ---- set-up ------------------------------------------------------------------------------
    @abc.abstractmethod
    def attach(self, parts: Mapping[str, nn.Module], total_steps: int) -> None:
        """Inject into every linear layer of each part; freeze the base weights."""

    @abc.abstractmethod
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates, in a fixed order."""

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every parameter the method added, trainable or not (AdaLoRA's frozen ``ranknum``), so that
        :meth:`parameter_table` does not count it as a base weight."""
        return self.trainable_parameters()

    # ---- hooks around the optimiser step -----------------------------------------------------
    def before_forward(self, step: int) -> None:  # noqa: B027 - optional hook
        """Called before the forward pass of optimiser step ``step``."""

    def extra_loss(self) -> torch.Tensor | None:
        """A term added to the diffusion loss of this step (None = nothing)."""
        return None

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:  # noqa: B027
        """Called after ``optimizer.step()`` and before ``zero_grad()`` (gradients still there)."""

    # ---- what the loop logs and exports ------------------------------------------------------
    @abc.abstractmethod
    def rank_map(self) -> dict[str, dict[str, int]]:
        """Current effective rank per adapted layer: part → module name → rank."""

    @abc.abstractmethod
    def factors(self) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Exportable (A [r, in], B [out, r]) per layer, scale folded into B, pruned ranks dropped."""

    def exportable(self, steps_done: int) -> bool:
        """May the adapter after ``steps_done`` optimiser steps be exported as the run's best epoch?

        Only when it is the model the comparison promises: AdaLoRA not before its final budget
        allocation (earlier it holds more ranks than its target). Default: every epoch may."""
        return True

    def history(self) -> list[dict[str, Any]]:
        """Rows logged since the last call (e.g. SeLoRA's per-test ranks and FI-Ratios)."""
        return []

    def export(self, out_dir: str | Path) -> Path:
        from selora.adapters.export import save_standard_lora

        return save_standard_lora(out_dir, self.factors())

    def parameter_table(self) -> list[dict[str, Any]]:
        """Per part: base parameters, trainable adapter parameters, and effective (exported) ones.

        ``trainable`` counts what the optimiser holds (AdaLoRA: all init-rank entries);
        ``effective`` counts the exported factors at the current ranks; percentages are of the
        part's base parameters, as the paper reports them (Section 4).
        """
        trainable_ids = {id(p) for p in self.trainable_parameters()}
        adapter_ids = trainable_ids | {id(p) for p in self.adapter_parameters()}
        factors = self.factors()
        rows = []
        for part, module in self.parts.items():
            base = sum(p.numel() for p in module.parameters() if id(p) not in adapter_ids)
            trainable = sum(p.numel() for p in module.parameters() if id(p) in trainable_ids)
            effective = sum(a.numel() + b.numel() for a, b in factors.get(part, {}).values())
            rows.append({
                "part": part,
                "base_parameters": base,
                "trainable_parameters": trainable,
                "effective_parameters": effective,
                "trainable_percent": 100.0 * trainable / base if base else 0.0,
                "effective_percent": 100.0 * effective / base if base else 0.0,
                "adapted_layers": len(factors.get(part, {})),
            })
        return rows

    # ---- resuming ----------------------------------------------------------------------------
    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (tensors, ranks, masks, RNG state)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` into an attached adapter (re-creating grown parameters)."""
