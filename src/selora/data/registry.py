"""The registry of data sets: one module per data set registers its name, params section and parser.

Every name list outside the data set's own module (the params schema, ``selora prepare --dataset``,
the report's paper tables and labels) is derived from here. A data set from outside the package
registers the same way from a file named in ``SELORA_PLUGINS`` (:mod:`selora.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from selora.errors import ConfigError

if TYPE_CHECKING:
    from selora.data.common import Candidate, Pool, PrepareOptions, SkipLog


def paper_splits(size: int) -> dict[str, float]:
    """The split most of the paper's sets use (Appendix C): 70/10/20."""
    return {"train": 0.7, "validation": 0.1, "test": 0.2}


@dataclass(frozen=True)
class DatasetSpec:
    """One data set, as everything outside its module sees it."""

    name: str  # the key of params' datasets section and setups.<name>.dataset
    source: type  # frozen dataclass of datasets.<name> (selora.sections declares its schema)
    collect: Callable[[PrepareOptions, SkipLog], tuple[list[Candidate], str]]  # raw → candidate records
    label: str  # the data set's name in the paper (its published results)
    paper_size: int  # image size of `selora prepare --dataset NAME` without --size
    default_splits: Callable[[int], dict[str, float]] = paper_splits  # size → the paper's split
    plan: Callable[[list[Candidate], PrepareOptions, SkipLog], list[Pool]] | None = None  # own sampling
    check: Callable[[PrepareOptions], None] | None = None  # rules on the prepare options
    options: tuple[str, ...] = ()  # PrepareOptions fields the parser reads (they enter the fingerprint)
    paper_tables: Mapping[int, str] = field(default_factory=dict)  # size → the paper's table
    stands_in_for: tuple[str, int] | None = None  # (data set, size) whose paper table this one replaces
    # The finding labels every record carries (label → its classes), which the reference network
    # learns and the report expects scored; None: inferred from the prepared records' labels.
    findings: Mapping[str, Sequence[str]] | None = None


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make a data set available under ``spec.name``."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"data set {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load() -> None:
    """Import every module of :mod:`selora.data` (each data set's registers itself), then plugins."""
    import importlib
    import pkgutil

    import selora.data as pkg
    from selora.plugins import load_plugins

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"selora.data.{info.name}")
    load_plugins()


def dataset_specs() -> list[DatasetSpec]:
    """Every registered data set, by name."""
    _load()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def dataset_names() -> list[str]:
    return [s.name for s in dataset_specs()]


def dataset_spec(name: str) -> DatasetSpec:
    _load()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown data set {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def option_values(spec: DatasetSpec, opts: PrepareOptions) -> dict[str, Any]:
    """The data set's own prepare options as the data report and fingerprint record them."""
    out: dict[str, Any] = {}
    for key in spec.options:
        value = getattr(opts, key)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, PurePath):
            value = str(value)
        out[key] = value
    return out
