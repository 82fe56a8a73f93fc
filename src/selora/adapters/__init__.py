"""Adapters: SeLoRA and the baselines behind one interface (:mod:`selora.adapters.base`)."""

from selora.adapters.base import Adapter, create_adapter, register, registered_methods

__all__ = ["Adapter", "create_adapter", "register", "registered_methods"]
