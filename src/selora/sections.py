"""Params declared once: frozen dataclasses whose fields carry their JSON-schema keywords.

Every key of params.yaml is one field of a class in :mod:`selora.paramspec` (the sections of the
pipeline) or of a class registered with a method or data set (:func:`selora.adapters.register`,
:func:`selora.data.registry.register_dataset`). The JSON schema Snakemake and the package validate
against — types, bounds, defaults, descriptions — is rendered from these fields
(:func:`params_schema`, written to the committed file by :mod:`selora.schemagen`), and each class's
cross-field rules live in its own ``check(key)``::

    @dataclass(frozen=True)
    class LoraConfig:
        rank: int = param(minimum=1, default=4)
        alpha: float = param("scale = alpha / rank", exclusiveMinimum=0, default=4)

A field without ``default`` is required. Defaults live in the schema (which fills them), so the
dataclass fields declare none.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from selora.errors import ConfigError

JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def param(description: str | None = None, **keywords: Any) -> Any:
    """A dataclass field with its JSON-schema keywords (``default``, ``minimum``, ``enum``...).

    ``registry="methods"`` (or ``"datasets"``) makes the field a :class:`Sections`: one sub-section
    per registered name, each declared by the class registered with it.
    """
    schema = dict(keywords)
    if description:
        schema["description"] = description
    return dataclasses.field(metadata={"schema": schema})


class Registered:
    """A name list the registry fills in when the schema is rendered (``enum=Registered("methods")``),
    so the names of methods and data sets are written only where they are registered."""

    def __init__(self, registry: str) -> None:
        self.registry = registry

    def names(self) -> list[str]:
        return list(registered_classes(self.registry))


NOUNS = {"methods": "method", "datasets": "data set"}  # what a registry's names are called in errors


def registered_classes(registry: str) -> dict[str, type]:
    """Registered name → the class declaring its params section, in registry order."""
    if registry == "methods":
        from selora.adapters.base import method_specs

        return {m.name: m.config for m in method_specs()}
    if registry == "datasets":
        from selora.data.registry import dataset_specs

        return {d.name: d.source for d in dataset_specs()}
    raise ValueError(f"unknown registry {registry!r}")


def _resolve(value: Any) -> Any:
    if isinstance(value, Registered):
        return value.names()
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    return value


def type_schema(tp: Any) -> dict[str, Any]:
    """The JSON schema of an annotation: ``int | None`` → integer or null, ``list[float]``, a nested
    section class, ``dict[str, Section]`` (an object of named sections)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [type_schema(a) for a in args if a is not type(None)]
        if len(inner) != 1 or "items" in inner[0] or inner[0]["type"] == "object":
            raise TypeError(f"unsupported section field type {tp!r}")
        return {"type": [inner[0]["type"], "null"] if type(None) in args else inner[0]["type"]}
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": type_schema(item)}
    if origin is dict:
        key, value = typing.get_args(tp)
        if key is not str:
            raise TypeError(f"unsupported section field type {tp!r}")
        return {"type": "object", "additionalProperties": type_schema(value)}
    if dataclasses.is_dataclass(tp):
        return section_schema(tp)
    if tp not in JSON_TYPES:
        raise TypeError(f"unsupported section field type {tp!r}")
    return {"type": JSON_TYPES[tp]}


def field_schema(tp: Any, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """A field's schema: its type's, then its declared keywords (``items`` keywords merge into the
    item type's; ``registry`` expands to the registered sections)."""
    keywords = dict(keywords)
    registry = keywords.pop("registry", None)
    if registry is not None:
        props = {name: {"type": "object", "default": {}, **section_schema(cls)}  # all keys have defaults
                 for name, cls in registered_classes(registry).items()}
        base = {"type": "object", "additionalProperties": False, "properties": props}
    else:
        base = type_schema(tp)
    out = {"description": keywords.pop("description")} if "description" in keywords else {}
    out.update(base)
    for key, value in keywords.items():
        value = _resolve(value)
        out[key] = {**out["items"], **value} if key == "items" and "items" in out else value
    if out.get("type") == "object":  # description, default... before the sub-keys, for the reader
        for sub in ("required", "properties", "additionalProperties"):
            if isinstance(out.get(sub), (dict, list)):
                out[sub] = out.pop(sub)
    elif "description" in out:  # a leaf reads type, bounds, default, then what it means
        out["description"] = out.pop("description")
    return out


def section_schema(cls: type) -> dict[str, Any]:
    """The JSON schema of a section class: an object of exactly its fields; those without a default
    are required. ``SCHEMA`` (a class attribute) adds class-wide keywords such as a description."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r}: a params section is a dataclass")
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        if "schema" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: declare every params key with param(...)")
        if f.metadata["schema"] is None:  # not a params key (e.g. Params.raw)
            continue
        props[f.name] = field_schema(hints[f.name], f.metadata["schema"])
        if "default" not in props[f.name]:
            required.append(f.name)
    out = {**getattr(cls, "SCHEMA", {}), "type": "object", "additionalProperties": False}
    if required:
        out["required"] = required
    out["properties"] = props
    return out


def params_schema(cls: type, **header: Any) -> dict[str, Any]:
    """The whole params schema, rendered from the top-level class (and the registries)."""
    return {"$schema": SCHEMA_DIALECT, **header, **section_schema(cls)}


def check_tree(node: Any, key: str = "") -> None:
    """Run every section's cross-field ``check(key)``, innermost first, with the key it sits at."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            if f.metadata.get("schema") is not None:
                check_tree(getattr(node, f.name), f"{key}.{f.name}".lstrip("."))
        if hasattr(node, "check"):
            node.check(key)
    elif isinstance(node, Mapping):
        for name, value in node.items():
            check_tree(value, f"{key}.{name}".lstrip("."))


def check_section(cfg: Any, key: str) -> None:
    """Check a section instance against its own declaration — the field rules the schema is rendered
    from, then the class's cross-field ``check(key)`` — so a section built directly (tests,
    benchmarks, a notebook) meets exactly the rules a params file meets, declared once."""
    import jsonschema

    schema = section_schema(type(cfg))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(dataclasses.asdict(cfg)), key=lambda e: list(e.absolute_path))
    if errors:
        where = ".".join([key, *map(str, errors[0].absolute_path)])
        raise ConfigError(f"{where}: {errors[0].message}")
    check_tree(cfg, key)


class Sections(Mapping[str, Any]):
    """A params section with one sub-section per registered name (``methods``, ``datasets``), each
    converted to the class registered with it: ``p.methods["selora"]``, ``p.methods.selora`` or
    ``p.datasets.get("iu-xray")``. An unknown name is a :class:`ConfigError` naming the known ones."""

    def __init__(self, key: str, noun: str, items: Mapping[str, Any]) -> None:
        self.key, self._noun, self._items = key, noun, dict(items)

    def __getitem__(self, name: str) -> Any:
        if name not in self._items:
            raise ConfigError(f"{self.key}: unknown {self._noun} {name!r}; known: {', '.join(self._items)}")
        return self._items[name]

    def get(self, name: str) -> Any:  # type: ignore[override]  # raises instead of a default
        return self[name]

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return self[attr if attr in self._items else attr.replace("_", "-")]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Sections({self.key}: {self._items!r})"
