"""params.yaml → validated, typed configuration.

params.yaml is the single source of truth. Every key is declared once, as a field of a class in
:mod:`selora.paramspec` (or of the class registered with a method or data set); the JSON schema is
rendered from those fields (:mod:`selora.sections`; the committed copy Snakemake reads,
``workflow/schemas/params.schema.yaml``, is kept current by :mod:`selora.schemagen`). A params
file is validated against it, which fills the defaults, then turned into those frozen
dataclasses, which reject unknown keys; each class's ``check(key)`` applies its cross-field rules.

Errors name the offending key (``methods.selora.threshold: 'abc' is not of type 'number'``) so a
bad grid fails before any job starts.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from selora.errors import ConfigError

# The declarations, re-exported: ``from selora.config import Params, TrainConfig`` keeps working.
from selora.paramspec import (
    AblationConfig,
    BaseModelConfig,
    CxrConfig,
    EvaluateConfig,
    ExperimentConfig,
    ImageSetConfig,
    NaturalConfig,
    Params,
    Paths,
    SampleConfig,
    Setup,
    Splits,
    StatisticsConfig,
    SyntheticConfig,
    TinyConfig,
    TrainConfig,
)
from selora.sections import NOUNS, Sections, check_tree, registered_classes

__all__ = [
    "AblationConfig", "BaseModelConfig", "CxrConfig", "EvaluateConfig", "ExperimentConfig",
    "ImageSetConfig", "NaturalConfig", "Params", "Paths", "SampleConfig", "Sections", "Setup", "Splits",
    "StatisticsConfig", "SyntheticConfig", "TinyConfig", "TrainConfig", "load_params", "params_from_dict",
    "validate_raw",
]


def method_names() -> list[str]:
    """The registered methods (:mod:`selora.adapters.base`), in table order."""
    from selora.adapters.base import method_specs

    return [m.name for m in method_specs()]


def dataset_names() -> list[str]:
    """The registered data sets (:mod:`selora.data.registry`)."""
    from selora.data.registry import dataset_names as names

    return names()


# ----------------------------------------------------------------------------- loading
def load_schema() -> dict[str, Any]:
    """The params schema, rendered from the declarations (:mod:`selora.paramspec`) and the
    registries as they are now (with any plugins): the very schema the committed file holds."""
    from selora.paramspec import HEADER
    from selora.sections import params_schema

    return params_schema(Params, **HEADER)


def _key_path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def _hint(value: Any) -> str:
    """PyYAML (YAML 1.1) reads 1e-4 as text; say so instead of a bare type error."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-4)"
    return ""


YAML11_BOOLS = {"no": False, "off": False, "n": False, "yes": True, "on": True, "y": True}


def _yaml11_words(node: Any, schema: Mapping[str, Any]) -> Any:
    """Undo YAML 1.1's ``no`` → False where the schema wants the word.

    PyYAML (this package, Snakemake) reads a bare ``no`` as a boolean; YAML 1.2 writers leave it
    bare (DVC's ``dvc exp run -S`` rewrites params.yaml so: ``mixed_precision: "no"`` comes back as
    ``mixed_precision: no``). Where the schema's enum holds such a word and the value is the
    boolean it reads as, the word is meant.
    """
    if isinstance(node, bool):
        enum = schema.get("enum", [])
        words = [w for w in enum if isinstance(w, str) and YAML11_BOOLS.get(w.lower()) is node]
        return words[0] if len(words) == 1 else node
    if isinstance(node, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: _yaml11_words(v, props.get(k, extra if isinstance(extra, dict) else {}))
                for k, v in node.items()}
    return node


def validate_raw(data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate against the schema and return a deep copy with every default filled in."""
    import jsonschema

    schema = load_schema()
    base = jsonschema.validators.validator_for(schema)

    def fill_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema_)

    filling = jsonschema.validators.extend(base, {"properties": fill_defaults})
    data = _yaml11_words(copy.deepcopy(dict(data)), schema)
    errors = sorted(filling(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{_key_path(e.absolute_path)}: {e.message}{_hint(e.instance)}" for e in errors]
        raise ConfigError("invalid params:\n  " + "\n  ".join(lines))
    return data


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(k for k in value if str(k).replace("-", "_") not in names)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for key, val in value.items():
            name = str(key).replace("-", "_")
            if name == "raw" and tp is Params:
                kwargs[name] = val  # the validated dict itself, kept for provenance
                continue
            if hints[name] is Sections:
                kwargs[name] = _sections(str(key), val, f"{where}.{key}".lstrip("."))
                continue
            kwargs[name] = _convert(hints[name], val, f"{where}.{key}".lstrip("."))
        missing = sorted(names - set(kwargs))
        if missing:
            raise ConfigError(f"{where or '<top level>'}: missing key(s) {', '.join(missing)}")
        return tp(**kwargs)
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        return {k: _convert(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _sections(key: str, value: Any, where: str) -> Sections:
    """A registry-keyed section: each sub-section converted to the class registered for its name."""
    noun, classes = NOUNS[key], registered_classes(key)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    unknown = sorted(k for k in value if k not in classes)
    if unknown:
        raise ConfigError(f"{where}: unknown {noun}(s) {', '.join(map(str, unknown))}")
    return Sections(key, noun, {k: _convert(classes[k], v, f"{where}.{k}") for k, v in value.items()})


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (['a','b','c'], value); the value is parsed as YAML (numbers, lists...)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE (e.g. methods.selora.threshold=1.3)")
    key, value = text.split("=", 1)
    parts = [k for k in key.strip().split(".") if k]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    parsed = yaml.safe_load(value) if value.strip() else None
    if isinstance(parsed, str):  # `--set train.lr=1e-4`: YAML 1.1 leaves exponents without a dot as text
        with contextlib.suppress(ValueError):
            parsed = float(parsed)
    return parts, parsed


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a mapping")
        node[parts[-1]] = value
    return data


def params_from_dict(data: Mapping[str, Any], overrides: Iterable[str] = ()) -> Params:
    """Validate (filling defaults), apply ``KEY=VALUE`` overrides, and build :class:`Params`."""
    # Overrides apply to the filled-in config, so `setups.<name>.epochs=3` edits a default setup.
    full = validate_raw(data)
    overrides = list(overrides)
    if overrides:
        full = validate_raw(apply_overrides(full, overrides))
    params = _convert(Params, {**full, "raw": full}, "")
    check_tree(params)  # every section's cross-field rules (its check())
    return params


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_params_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist")
    try:
        with path.open() as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_params(
    path: str | Path | Iterable[str | Path] | None = "params.yaml", overrides: Iterable[str] = ()
) -> Params:
    """Read params file(s) and return validated :class:`Params`.

    Several files merge in order (later keys win), as Snakemake merges ``--configfile``s; None means
    the schema defaults only.
    """
    return params_from_dict(_merged(path), overrides)


def raw_params(
    path: str | Path | Iterable[str | Path] | None, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """The params files merged and the overrides applied, neither validated nor filled with defaults:
    a key read before :func:`load_params`, which imports the method registry and with it torch."""
    return apply_overrides(_merged(path), overrides)


def _merged(path: str | Path | Iterable[str | Path] | None) -> dict[str, Any]:
    if path is None:
        paths: list[str | Path] = []
    elif isinstance(path, (str, Path)):
        paths = [path]
    else:
        paths = list(path)
    data: dict[str, Any] = {}
    for p in paths:
        data = _deep_merge(data, read_params_file(p))
    return data
