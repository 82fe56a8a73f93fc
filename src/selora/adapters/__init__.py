"""Adapters: SeLoRA and the baselines behind one interface (:mod:`selora.adapters.base`)."""

from selora.adapters.base import (
    Adapter,
    MethodSpec,
    create_adapter,
    method_spec,
    method_specs,
    register,
    registered_methods,
)

__all__ = ["Adapter", "MethodSpec", "create_adapter", "method_spec", "method_specs", "register",
           "registered_methods"]
