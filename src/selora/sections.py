"""A params section declared once, as a frozen dataclass whose fields carry their JSON-schema keywords.

A method's ``methods.<name>`` section and a data set's ``datasets.<name>`` section are declared by
the class registered with the method or data set (:func:`selora.adapters.register`,
:func:`selora.data.registry.register_dataset`); the schema's sections are rendered from these
classes (:mod:`selora.schemagen`), so adding a method or data set touches no schema by hand::

    @dataclass(frozen=True)
    class LoraConfig:
        rank: int = param(minimum=1, default=4)
        alpha: float = param(exclusiveMinimum=0, default=4, description="scale = alpha / rank")

Defaults live in the schema (which fills them), so the dataclass fields declare none.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def param(description: str | None = None, **keywords: Any) -> Any:
    """A dataclass field with its JSON-schema keywords (``default``, ``minimum``, ``enum``...)."""
    schema = dict(keywords)
    if description:
        schema["description"] = description
    return dataclasses.field(metadata={"schema": schema})


def type_schema(tp: Any) -> dict[str, Any]:
    """The JSON-schema ``type`` (and ``items``) of a field annotation: ``int | None`` → integer or null."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [type_schema(a) for a in args if a is not type(None)]
        if len(inner) != 1 or "items" in inner[0]:
            raise TypeError(f"unsupported section field type {tp!r}")
        return {"type": [inner[0]["type"], "null"] if type(None) in args else inner[0]["type"]}
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": type_schema(item)}
    if tp not in JSON_TYPES:
        raise TypeError(f"unsupported section field type {tp!r}")
    return {"type": JSON_TYPES[tp]}


def section_schema(cls: type) -> dict[str, Any]:
    """The JSON schema of a section class: an object of exactly its fields, each with its default."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r}: a params section is a dataclass")
    hints = typing.get_type_hints(cls)
    props = {}
    for f in dataclasses.fields(cls):
        keywords = dict(f.metadata.get("schema", {}))
        if "default" not in keywords:
            raise TypeError(f"{cls.__name__}.{f.name}: every section key needs param(default=...)")
        props[f.name] = {**type_schema(hints[f.name]), **keywords}
    return {"type": "object", "default": {}, "additionalProperties": False, "properties": props}


def check_section(cfg: Any, key: str) -> None:
    """Check a section instance against its own declaration — the field rules the schema is rendered
    from, then the class's cross-field ``check(key)`` — so a section built directly (tests,
    benchmarks, a notebook) meets exactly the rules a params file meets, declared once."""
    import jsonschema

    from selora.errors import ConfigError

    schema = section_schema(type(cfg))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(dataclasses.asdict(cfg)), key=lambda e: list(e.absolute_path))
    if errors:
        where = ".".join([key, *map(str, errors[0].absolute_path)])
        raise ConfigError(f"{where}: {errors[0].message}")
    if hasattr(cfg, "check"):
        cfg.check(key)
