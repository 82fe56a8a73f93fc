"""params.yaml → validated, typed configuration.

params.yaml is the single source of truth. It is validated against the JSON schema in
``selora/schemas/params.schema.yaml`` (also ``workflow/schemas/`` for Snakemake), which fills the
defaults, then turned into frozen dataclasses that reject unknown keys. Defaults live only in the
schema, so the dataclasses declare none. The ``methods`` and ``datasets`` sections hold one
sub-section per registered method / data set, each the class registered with it (its fields
declare that part of the schema: :mod:`selora.sections`, :mod:`selora.schemagen`).

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
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from selora.errors import ConfigError


def method_names() -> list[str]:
    """The registered methods (:mod:`selora.adapters.base`), in table order."""
    from selora.adapters.base import method_specs

    return [m.name for m in method_specs()]


def dataset_names() -> list[str]:
    """The registered data sets (:mod:`selora.data.registry`)."""
    from selora.data.registry import dataset_names as names

    return names()


def _section_classes() -> dict[str, tuple[str, dict[str, type]]]:
    """params key → (noun, registered name → its section class) for the registry-keyed sections."""
    from selora.adapters.base import method_specs
    from selora.data.registry import dataset_specs

    return {"methods": ("method", {m.name: m.config for m in method_specs()}),
            "datasets": ("data set", {d.name: d.source for d in dataset_specs()})}


# ----------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class Splits:
    train: float
    validation: float
    test: float

    def as_dict(self) -> dict[str, float]:
        """Only the splits that get records, in train/validation/test order."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v > 0}


@dataclass(frozen=True)
class Paths:
    data: str
    models: str
    results: str


@dataclass(frozen=True)
class TinyConfig:
    image_size: int
    vae_channels: list[int]
    latent_channels: int
    unet_channels: list[int]
    unet_layers_per_block: int
    attention_head_dim: int
    norm_num_groups: int
    text_hidden_size: int
    text_layers: int
    text_heads: int
    text_intermediate_size: int
    vocab_size: int
    max_length: int
    vae_steps: int
    vae_lr: float
    vae_batch_size: int
    unet_steps: int
    unet_lr: float
    batch_size: int
    caption_dropout: float
    snr_gamma: float | None
    offset_noise: float
    threads: int | None

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


@dataclass(frozen=True)
class BaseModelConfig:
    name: str
    revision: str | None
    tiny: TinyConfig


@dataclass(frozen=True)
class ImageSetConfig:
    n_images: int
    size: int
    splits: Splits


@dataclass(frozen=True)
class NaturalConfig(ImageSetConfig):
    radiographs: float


@dataclass(frozen=True)
class SyntheticConfig:
    natural: NaturalConfig
    cxr: ImageSetConfig


@dataclass(frozen=True)
class Setup:
    dataset: str
    size: int
    splits: Splits
    batch_size: int
    epochs: int
    max_steps: int | None
    max_records: int | None


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


@dataclass(frozen=True)
class TrainConfig:
    lr: float
    weight_decay: float
    betas: list[float]
    mixed_precision: str
    gradient_checkpointing: bool
    device: str
    checkpoint_every: int
    memory_every: int
    val_draws: int
    threads: int | None


@dataclass(frozen=True)
class SampleConfig:
    scheduler: str
    steps: int
    guidance_scale: float
    images_per_prompt: int
    batch_size: int
    seed: int


@dataclass(frozen=True)
class EvaluateConfig:
    feature_space: str
    inception_weights: str | None
    clip_model: str | None
    kid_subsets: int
    kid_subset_size: int
    reference_steps: int
    min_finding_accuracy: float
    natural_reference: str | None


@dataclass(frozen=True)
class AblationConfig:
    setups: list[str]
    seeds: list[int]
    threshold: list[float]
    test_interval: list[int]


@dataclass(frozen=True)
class StatisticsConfig:
    bootstrap_resamples: int
    confidence: float
    seed: int


@dataclass(frozen=True)
class ExperimentConfig:
    setups: list[str]
    methods: list[str]
    seeds: list[int]
    ablation: AblationConfig
    no_adapter: bool
    statistics: StatisticsConfig


@dataclass(frozen=True)
class Params:
    seed: int
    paths: Paths
    base_model: BaseModelConfig
    synthetic: SyntheticConfig
    datasets: Sections
    setups: dict[str, Setup]
    methods: Sections
    train: TrainConfig
    sample: SampleConfig
    evaluate: EvaluateConfig
    experiment: ExperimentConfig
    raw: dict[str, Any] = dataclasses.field(compare=False, repr=False)

    def setup(self, name: str) -> Setup:
        if name not in self.setups:
            known = ", ".join(sorted(self.setups)) or "none"
            raise ConfigError(f"setups: unknown setup {name!r}; known: {known}")
        return self.setups[name]


# ----------------------------------------------------------------------------- loading
def _inline_refs(node: Any, definitions: Mapping[str, Any]) -> Any:
    """Replace ``{"$ref": "#/$defs/x", ...}`` by the definition merged with its siblings."""
    if isinstance(node, dict):
        node = {k: _inline_refs(v, definitions) for k, v in node.items() if k != "$defs"}
        ref = node.pop("$ref", None)
        if ref is not None:
            name = ref.removeprefix("#/$defs/")
            node = {**_inline_refs(definitions[name], definitions), **node}
        return node
    if isinstance(node, list):
        return [_inline_refs(v, definitions) for v in node]
    return node


def load_schema() -> dict[str, Any]:
    """The schema, its registry parts rendered from the registries as they are now (with any
    plugins), with local ``$ref``s inlined (defaults beside a ``$ref`` are kept)."""
    from selora.schemagen import current_schema_text

    return _parse_schema(current_schema_text())


@cache
def _parse_schema(text: str) -> dict[str, Any]:
    schema = yaml.safe_load(text)
    return _inline_refs(schema, schema.get("$defs", {}))


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
    noun, classes = _section_classes()[key]
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    unknown = sorted(k for k in value if k not in classes)
    if unknown:
        raise ConfigError(f"{where}: unknown {noun}(s) {', '.join(map(str, unknown))}")
    return Sections(key, noun, {k: _convert(classes[k], v, f"{where}.{k}") for k, v in value.items()})


def _check_semantics(p: Params) -> None:
    """Cross-field rules a JSON schema cannot express."""
    for name, s in p.setups.items():
        total = s.splits.train + s.splits.validation + s.splits.test
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"setups.{name}.splits: fractions sum to {total:g}, not 1")
    for sect in ("natural", "cxr"):
        sp = getattr(p.synthetic, sect).splits
        total = sp.train + sp.validation + sp.test
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"synthetic.{sect}.splits: fractions sum to {total:g}, not 1")
    for section in (p.methods, p.datasets):  # a registered class's own cross-field rules
        for name, cfg in section.items():
            if hasattr(cfg, "check"):
                cfg.check(f"{section.key}.{name}")
    tiny = p.base_model.tiny
    if tiny.image_size % tiny.vae_factor:
        raise ConfigError(
            f"base_model.tiny.image_size: {tiny.image_size} is not a multiple of the VAE factor "
            f"{tiny.vae_factor}"
        )
    abl = p.experiment.ablation
    if abl.setups and (abl.threshold or abl.test_interval):
        if "selora" not in p.experiment.methods:
            raise ConfigError("experiment.ablation: needs selora in experiment.methods (its base point)")
        for key, main in (("setups", p.experiment.setups), ("seeds", p.experiment.seeds)):
            extra = [v for v in getattr(abl, key) if v not in main]
            if extra:
                raise ConfigError(f"experiment.ablation.{key}: {extra} not in experiment.{key}; the base "
                                  "point of every ablation comes from the main grid")
    used = list(p.experiment.setups) + list(p.experiment.ablation.setups)
    for name in used:
        if name not in p.setups:
            raise ConfigError(f"experiment.setups: {name!r} is not defined under setups")
        dataset = p.setups[name].dataset
        if not p.datasets.get(dataset).raw:
            raise ConfigError(
                f"datasets.{dataset}.raw: setup {name!r} uses {dataset} but no raw-data folder is set"
            )


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
    _check_semantics(params)
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
    if path is None:
        paths: list[str | Path] = []
    elif isinstance(path, (str, Path)):
        paths = [path]
    else:
        paths = list(path)
    data: dict[str, Any] = {}
    for p in paths:
        data = _deep_merge(data, read_params_file(p))
    return params_from_dict(data, overrides)
