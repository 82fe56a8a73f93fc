"""Every method's result as one standard diffusers/peft LoRA file.

A trained adapter, whatever its method, is a set of per-layer low-rank factors. We save them as
``pytorch_lora_weights.safetensors`` the way diffusers' own LoRA scripts do, so that plain
``StableDiffusionPipeline.load_lora_weights(dir)`` loads any of them:

- per layer ``<part>.<module>.lora_A.weight`` (r × in) and ``.lora_B.weight`` (out × r), with the
  method's scale folded into B, so ``lora_alpha_i = r_i`` and the effective scale is 1;
- per-layer ranks in peft's ``rank_pattern`` / ``alpha_pattern``, keys anchored as ``^name$`` so
  one layer's name never matches another's suffix; stored as the adapter metadata in the
  safetensors header (diffusers ≥ 0.34 loads with it as is; older loaders read the rank from the
  ``lora_B`` shape and are still right because the scale is folded).

``load_standard_lora`` reads such a file back into per-layer (A, B) factors (e.g. to resume SeLoRA).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PARTS = ("unet", "text_encoder")

# component -> module qualified name (inside that component) -> (A [r, in], B [out, r])
Factors = Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]


def lora_config_dict(layers: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """peft ``LoraConfig`` (as a dict) describing per-layer ranks, alpha = rank (scale 1)."""
    from peft import LoraConfig

    ranks = {name: int(a.shape[0]) for name, (a, _) in layers.items()}
    default = max(set(ranks.values()), key=list(ranks.values()).count)  # most common rank
    pattern = {f"^{re.escape(n)}$": r for n, r in ranks.items() if r != default}
    cfg = LoraConfig(
        r=default,
        lora_alpha=default,
        target_modules=sorted(ranks),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        init_lora_weights=False,
    )
    out = cfg.to_dict()
    out["target_modules"] = sorted(ranks)  # to_dict gives a set; keep it JSON-friendly
    return out


def save_standard_lora(out_dir: str | Path, factors: Factors) -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` (+ ``ranks.json``); returns the file."""
    from diffusers import StableDiffusionPipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    for part in PARTS:
        layers = {n: ab for n, ab in factors.get(part, {}).items() if ab[0].shape[0] > 0}
        if not layers:
            continue
        state = {}
        for name, (a, b) in layers.items():
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(f"{part}.{name}: A {tuple(a.shape)} and B {tuple(b.shape)} do not chain")
            state[f"{name}.lora_A.weight"] = a.detach().to("cpu", torch.float32).contiguous()
            state[f"{name}.lora_B.weight"] = b.detach().to("cpu", torch.float32).contiguous()
        kwargs[f"{part}_lora_layers"] = state
        kwargs[f"{part}_lora_adapter_metadata"] = lora_config_dict(layers)
    if not kwargs:
        raise ValueError("nothing to export: every layer has rank 0")
    StableDiffusionPipeline.save_lora_weights(out_dir, safe_serialization=True, **kwargs)
    ranks = {part: {n: int(a.shape[0]) for n, (a, _) in factors.get(part, {}).items()} for part in PARTS}
    (out_dir / "ranks.json").write_text(json.dumps(ranks, indent=1, sort_keys=True) + "\n")
    return out_dir / WEIGHT_NAME


def load_standard_lora(path: str | Path) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per-part, per-layer (A, B) from a file written by :func:`save_standard_lora`."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NAME
    state = load_file(str(path))
    out: dict[str, dict[str, list]] = {}
    for key, tensor in state.items():
        part, rest = key.split(".", 1)
        name, which = rest.rsplit(".lora_", 1)
        slot = out.setdefault(part, {}).setdefault(name, [None, None])
        slot[0 if which.startswith("A") else 1] = tensor
    return {p: {n: (ab[0], ab[1]) for n, ab in layers.items()} for p, layers in out.items()}
