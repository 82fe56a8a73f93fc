"""A fifth method registered from outside the package (tests/test_registry.py loads it through
SELORA_PLUGINS): LoRA under its own name, with its own params section, label and schema."""

from __future__ import annotations

from dataclasses import dataclass

from selora.adapters import register
from selora.adapters.lora import LoraAdapter
from selora.sections import param

NAME = "toylora"


@dataclass(frozen=True)
class ToyConfig:
    """params ``methods.toylora``."""

    rank: int = param("The toy's fixed rank.", minimum=1, default=2)
    alpha: float = param(exclusiveMinimum=0, default=2)


@register(NAME, ToyConfig, label="ToyLoRA")
class ToyAdapter(LoraAdapter):
    """LoRA's behaviour; a method of its own for the registry, the grid and the report."""
