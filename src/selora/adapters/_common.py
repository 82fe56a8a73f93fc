"""Plumbing the baseline adapters share: naming layers across model parts, seeded injection, and
checked rank settings.

The U-Net and the text encoder are adapted together (one AdaLoRA budget spans both), so the
peft-based methods inject into one :class:`torch.nn.ModuleDict` over the parts, in place: qualified
names there are ``<part>.<module>`` and the parts the loop holds are modified directly.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from selora.adapters.base import linear_modules
from selora.errors import ConfigError


def adaptable_layers(parts: Mapping[str, nn.Module]) -> dict[str, list[str]]:
    """Every linear layer of every part, in module order (the paper adapts all of them)."""
    return {part: list(linear_modules(module)) for part, module in parts.items()}


def qualified(part: str, name: str) -> str:
    return f"{part}.{name}"


def split_qualified(name: str) -> tuple[str, str]:
    part, module = name.split(".", 1)
    return part, module


def anchored(name: str, prefix: str = "") -> str:
    """A peft ``rank_pattern`` key that matches exactly this module and no suffix of it (peft matches
    a bare name by suffix: ``attn.to_q`` would also catch ``x.attn.to_q``); ``prefix`` is a regex
    allowed before the name (the text encoder's optional ``text_model.``)."""
    return f"^{prefix}{re.escape(name)}$"


def anchored_any(names: Iterable[str], prefix: str = "") -> str:
    """One regex matching exactly these module names, for peft's ``target_modules`` (a list would be
    matched by suffix too)."""
    return f"^{prefix}(?:{'|'.join(re.escape(n) for n in names)})$"


def keep_half_inputs(root: nn.Module) -> None:
    """Switch off peft's cast of each adapted layer's input to its adapter weights' dtype.

    Under autocast that cast turns a half input (a previous op's output, which that op often keeps
    for its own backward) into an fp32 copy that autocast's matmul casts straight back into a
    *second* half copy, kept for the adapter's backward beside the first: 146 MiB at SD 1.5's
    224 px / batch 8 (counted in benchmarks/README, "GPU"). SeLoRA's and
    DyLoRA's layers make no such copy, so without this the baselines' memory would not compare
    fairly. The values are the same (half → fp32 → half is exact); without autocast the engine's
    fp32 base already hands the layers inputs in the adapter weights' dtype, so nothing changes."""
    for module in root.modules():
        if hasattr(module, "_cast_input_dtype"):  # peft's BaseTunerLayer
            module.cast_input_dtype_enabled = False


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global CPU RNG seeded, restoring the caller's RNG afterwards.

    peft initialises adapter weights from the global RNG; seeding it here makes ``attach``
    deterministic without disturbing the training loop's own random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_rank(value: int, key: str, *, minimum: int = 1) -> int:
    """A rank from params, checked even when the params bypassed the schema (direct construction)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: rank must be an integer ≥ {minimum}, got {value!r}")
    return value


def check_positive(value: float, key: str) -> float:
    if not value > 0:
        raise ConfigError(f"{key}: must be > 0, got {value!r}")
    return float(value)


def freeze(parts: Mapping[str, nn.Module]) -> None:
    for module in parts.values():
        module.requires_grad_(False)


def require_attached(parts: Mapping[str, nn.Module], method: str) -> None:
    if not parts:
        raise RuntimeError(f"{method}: call attach(parts, total_steps) first")


def most_common(values: Iterable[int]) -> int:
    """The most frequent rank, the config's default, so per-layer patterns list only the exceptions.

    Ties go to the tied value met first in ``set`` iteration order: CPython places an int by its value
    modulo the table size, so that is the smallest rank when the ranks are below the table size, but
    not always otherwise ({1: 2, 8: 2} gives 8). Exported files were written with this choice (their
    metadata's ``r`` and ``rank_pattern``), so keeping it keeps exports byte-identical; any choice
    loads as the same adapter.
    """
    values = list(values)
    return max(set(values), key=values.count)


def copy_tensors(targets: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy a saved adapter state into live tensors, refusing a state of another shape or layout."""
    missing, extra = sorted(set(targets) - set(saved)), sorted(set(saved) - set(targets))
    if missing or extra:
        raise ValueError(f"{what}: saved state does not match the attached adapter "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for key, tensor in targets.items():
            value = saved[key]
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"{what}: {key} has shape {tuple(value.shape)} in the saved state, "
                                 f"{tuple(tensor.shape)} here")
            tensor.copy_(value)
