"""Methods and data sets from outside the package, registered by importing their files.

``SELORA_PLUGINS`` lists Python files (``path/to/method.py``) or importable modules, separated by
``os.pathsep``; each registers what it defines (``selora.adapters.register``,
``selora.data.registry.register_dataset``) when imported. An environment variable, not a params
key, because every process needs the registry before it can read params: Snakemake's parse, each
job's ``selora`` call and DVC's stages all inherit it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

ENV = "SELORA_PLUGINS"
_loaded: set[str] = set()


def load_plugins() -> None:
    """Import every plugin ``SELORA_PLUGINS`` names that is not imported yet (once per process)."""
    from selora.errors import ConfigError

    for entry in filter(None, os.environ.get(ENV, "").split(os.pathsep)):
        if entry in _loaded:
            continue
        _loaded.add(entry)
        if entry.endswith(".py"):
            path = Path(entry).expanduser().resolve()
            name = f"selora_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise ConfigError(f"{ENV}: {entry} is not a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(entry)
            except ImportError as exc:
                raise ConfigError(f"{ENV}: cannot import {entry!r}: {exc}") from exc
