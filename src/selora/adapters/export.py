"""Every method's result as one standard diffusers/peft LoRA file.

A trained adapter, whatever its method, is a set of per-layer low-rank factors. We save them as
``pytorch_lora_weights.safetensors`` the way diffusers' own LoRA scripts do, so that plain
``StableDiffusionPipeline.load_lora_weights(dir)`` loads any of them:

- per layer ``<part>.<module>.lora_A.weight`` (r × in) and ``.lora_B.weight`` (out × r), with the
  method's scale folded into B, so ``lora_alpha_i = r_i`` and the effective scale is 1;
- per-layer ranks in peft's ``rank_pattern`` / ``alpha_pattern``, keys anchored as ``^name$`` so
  one layer's name never matches another's suffix; stored as the adapter metadata in the
  safetensors header (diffusers ≥ 0.34 loads with it as is; older loaders read the rank from the
  ``lora_B`` shape and are still right because the scale is folded);
- ``target_modules`` is one anchored regex of the exported names (peft matches a list by suffix,
  which would also put a randomly initialised adapter on a left-out layer whose name ends with an
  exported one, e.g. a layer AdaLoRA pruned to rank 0).
- text-encoder keys use the naming of LoRA files in the wild (diffusers under transformers 4,
  kohya-style tools, the hub): ``text_encoder.text_model.encoder.layers.N...``. transformers 5's
  ``CLIPTextModel`` has no ``text_model`` level (diffusers strips the prefix when loading into it);
  the metadata's patterns accept the names with and without it, so either stack resolves the ranks.
- ``README.md`` beside the weights is a model card (:func:`write_model_card`), so a result folder
  can be pushed to a hub as it is.

Files are written to a temporary folder and renamed into place, so a killed export never leaves a
half-written adapter behind.

``load_standard_lora`` reads such a file back into per-layer (A, B) factors, e.g. to check that an
export is lossless (resuming uses the checkpoint, not the export).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from selora.adapters._common import anchored, anchored_any, most_common
from selora.io import ensure_writable_dir

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
RANKS_NAME = "ranks.json"
CARD_NAME = "README.md"
PARTS = ("unet", "text_encoder")
# The level transformers 4's CLIPTextModel (and most LoRA files) put above the encoder's modules.
TEXT_MODEL = "text_model."
# Per part: an optional prefix before a module name in the metadata patterns (both CLIP namings).
OPTIONAL_PREFIX = {"unet": "", "text_encoder": r"(?:text_model\.)?"}


def file_key(part: str, name: str) -> str:
    """The module name as written in the file (``text_model.`` added for the text encoder)."""
    if part == "text_encoder" and not name.startswith(TEXT_MODEL):
        return TEXT_MODEL + name
    return name


def module_name(part: str, key: str) -> str:
    """The module name in this stack's model from a file's name (either naming)."""
    return key.removeprefix(TEXT_MODEL) if part == "text_encoder" else key

# component -> module qualified name (inside that component) -> (A [r, in], B [out, r])
Factors = Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]


def lora_config_dict(layers: Mapping[str, tuple[torch.Tensor, torch.Tensor]], prefix: str = "") -> dict:
    """peft ``LoraConfig`` (as a dict) describing per-layer ranks, alpha = rank (scale 1); ``prefix``
    is a regex allowed (optionally) before each module name."""
    from peft import LoraConfig

    ranks = {name: int(a.shape[0]) for name, (a, _) in layers.items()}
    default = most_common(ranks.values())
    pattern = {anchored(n, prefix): r for n, r in ranks.items() if r != default}
    cfg = LoraConfig(
        r=default,
        lora_alpha=default,
        target_modules=sorted(ranks),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        init_lora_weights=False,
    )
    out = cfg.to_dict()
    out["target_modules"] = anchored_any(sorted(ranks), prefix)  # exact names
    return out


def canonical_header(path: Path) -> None:
    """Sort the ``__metadata__`` keys of a safetensors file in place.

    safetensors serialises the metadata from a hash map, so its key order (and the file's bytes)
    changes from process to process; sorted, the same weights always give the same bytes (DVC
    hashes, bit-identical resumed runs). Layout: 8-byte little-endian header length, the JSON
    header padded with spaces to 8 bytes, then the tensor data, which is left untouched.
    """
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def save_standard_lora(out_dir: str | Path, factors: Factors) -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` (+ ``ranks.json``); returns the file."""
    from diffusers import StableDiffusionPipeline

    unknown = sorted(set(factors) - set(PARTS))
    if unknown:
        raise ValueError(f"cannot export adapter factors of {', '.join(unknown)}: the standard LoRA file "
                         f"holds only {', '.join(PARTS)}")
    out_dir = ensure_writable_dir(out_dir)
    kwargs = {}
    for part in PARTS:
        layers = {n: ab for n, ab in factors.get(part, {}).items() if ab[0].shape[0] > 0}
        if not layers:
            continue
        state = {}
        for name, (a, b) in layers.items():
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(f"{part}.{name}: A {tuple(a.shape)} and B {tuple(b.shape)} do not chain")
            key = file_key(part, name)
            state[f"{key}.lora_A.weight"] = a.detach().to("cpu", torch.float32).contiguous()
            state[f"{key}.lora_B.weight"] = b.detach().to("cpu", torch.float32).contiguous()
        kwargs[f"{part}_lora_layers"] = state
        plain = {module_name(part, n): ab for n, ab in layers.items()}
        kwargs[f"{part}_lora_adapter_metadata"] = lora_config_dict(plain, OPTIONAL_PREFIX[part])
    if not kwargs:
        raise ValueError("nothing to export: every layer has rank 0")
    ranks = {part: {n: int(a.shape[0]) for n, (a, _) in factors.get(part, {}).items()} for part in PARTS}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, safe_serialization=True, **kwargs)
        canonical_header(Path(tmp) / WEIGHT_NAME)
        (Path(tmp) / RANKS_NAME).write_text(json.dumps(ranks, indent=1, sort_keys=True) + "\n")
        for name in (WEIGHT_NAME, RANKS_NAME):
            os.replace(Path(tmp) / name, out_dir / name)
    return out_dir / WEIGHT_NAME


def load_standard_lora(path: str | Path) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per-part, per-layer (A, B) from a file written by :func:`save_standard_lora` (or with the
    text encoder named without ``text_model.``), keyed by this stack's module names."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NAME
    state = load_file(str(path))
    out: dict[str, dict[str, list]] = {}
    for key, tensor in state.items():
        part, rest = key.split(".", 1)
        name, which = rest.rsplit(".lora_", 1)
        name = module_name(part, name)
        slot = out.setdefault(part, {}).setdefault(name, [None, None])
        slot[0 if which.startswith("A") else 1] = tensor
    return {p: {n: (ab[0], ab[1]) for n, ab in layers.items()} for p, layers in out.items()}


def write_model_card(out_dir: str | Path, *, base_model: str, method: str, hyperparameters: Mapping,
                     dataset: str, setup: Mapping, training: Mapping, metrics: Mapping | None = None,
                     ranks: Mapping[str, Mapping[str, int]] | None = None, base_on_hub: bool = True) -> Path:
    """``README.md`` beside an exported adapter, as diffusers' training scripts write one: hub
    metadata (base model, library, tags) and what the adapter is (method, ranks, data, metrics).
    ``base_on_hub=False`` (a local folder) keeps ``base_model`` out of the hub metadata. Deterministic
    text (no dates), so re-exports give identical bytes."""
    from huggingface_hub import ModelCard, ModelCardData

    from selora.io import write_text

    out_dir = Path(out_dir)
    if ranks is None:
        ranks = json.loads((out_dir / RANKS_NAME).read_text())
    data = ModelCardData(
        base_model=base_model if base_on_hub else None, library_name="diffusers", license=None,
        tags=["text-to-image", "diffusers", "lora", "stable-diffusion", method, "medical-imaging"],
    )
    rank_rows = []
    for part in PARTS:
        values = sorted(r for r in ranks.get(part, {}).values())
        if values:
            kept = [r for r in values if r > 0]
            rank_rows.append(f"| {part} | {len(kept)} of {len(values)} | {values[0]} | "
                             f"{values[len(values) // 2]} | {values[-1]} | {sum(values)} |")

    def table(mapping: Mapping) -> str:
        return "\n".join(f"| `{k}` | {json.dumps(v)} |" for k, v in mapping.items())

    body = [
        f"# {method} adapter for {base_model}", "",
        f"A `{method}` low-rank adapter (U-Net and text encoder) for `{base_model}`, trained on the "
        f"`{dataset}` data set by the `selora` benchmark (its README says how to reproduce it). "
        "It is a standard diffusers LoRA file: every method's scale is folded into `lora_B`, per-layer "
        "ranks are in the file's metadata (`rank_pattern`).", "",
        "## Use", "", "```python", "from diffusers import StableDiffusionPipeline", "",
        f"pipe = StableDiffusionPipeline.from_pretrained({base_model!r})",
        "pipe.load_lora_weights(\"path/to/this/folder\")", "```", "",
        "## Ranks (per adapted layer)", "",
        "| part | layers adapted | min | median | max | total |", "|---|---|---|---|---|---|", *rank_rows,
        "", f"## Method: {method}", "", "| hyper-parameter | value |", "|---|---|", table(hyperparameters),
        "", f"## Data: {dataset}", "", "| setting | value |", "|---|---|", table(setup),
        "", "## Training", "", "| setting | value |", "|---|---|", table(training),
    ]
    if metrics:
        body += ["", "## Metrics", "", "| metric | value |", "|---|---|", table(metrics)]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
    write_text(out_dir / CARD_NAME, str(card))
    return out_dir / CARD_NAME
