"""The standard LoRA file every method exports (selora.adapters.export): per-layer ranks that peft
and diffusers resolve exactly, metadata in the safetensors header, a lossless round trip, and a fresh
``StableDiffusionPipeline`` + ``load_lora_weights`` that reproduces the adapted model."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from adapter_checks import generate
from torch import nn

from selora.adapters.base import linear_modules
from selora.adapters.export import (
    CARD_NAME,
    WEIGHT_NAME,
    load_standard_lora,
    lora_config_dict,
    save_standard_lora,
    write_model_card,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _factors(layers: dict[str, nn.Linear], ranks: dict[str, int], seed: int, std: float = 0.1):
    gen = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(ranks[n], m.in_features, generator=gen) * std,
                torch.randn(m.out_features, ranks[n], generator=gen) * std) for n, m in layers.items()}


class _Nested(nn.Module):
    """Names whose suffixes collide: ``to_q``, ``attn.to_q``, ``x.attn.to_q``; and one more, ``ff``."""

    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.ff = nn.Linear(3, 4), nn.Linear(3, 4)
        self.attn = nn.Module()
        self.attn.to_q = nn.Linear(3, 4)
        self.x = nn.Module()
        self.x.attn = nn.Module()
        self.x.attn.to_q = nn.Linear(3, 4)


def test_per_layer_ranks_resolve_exactly_despite_suffix_collisions():
    from peft import LoraConfig, inject_adapter_in_model

    model = _Nested()
    # "to_q" is the exception to the common rank 2; "x.attn.to_q" is left out (e.g. pruned by AdaLoRA).
    factors = _factors({"to_q": model.to_q, "attn.to_q": model.attn.to_q, "ff": model.ff},
                       {"to_q": 5, "attn.to_q": 2, "ff": 2}, seed=0)
    cfg = lora_config_dict(factors)
    assert (cfg["r"], cfg["lora_alpha"]) == (2, 2)  # scale alpha / r = 1: the scale is folded into B
    assert cfg["rank_pattern"] == cfg["alpha_pattern"] == {r"^to_q$": 5}
    inject_adapter_in_model(LoraConfig(**cfg), model)
    assert model.to_q.r["default"] == 5 and model.to_q.scaling["default"] == 1.0
    assert model.attn.to_q.r["default"] == 2 and model.attn.to_q.scaling["default"] == 1.0
    assert type(model.x.attn.to_q) is nn.Linear, "a left-out layer got an adapter through a suffix match"


def test_rank_ties_resolve_as_exported_files_always_did():
    """The default rank on a tie decides the metadata's ``r`` and ``rank_pattern`` (so the file's
    bytes, not what it loads as): LoRA at given ranks and the export share one rule, pinned here so
    re-exports stay byte-identical. {1, 8}: set order puts 8 first, so 8 wins, not the smallest."""
    from selora.adapters._common import anchored, anchored_any, most_common

    assert most_common([1, 2, 2, 1]) == 1 and most_common([2, 1, 1, 2]) == 1
    assert most_common([1, 8, 8, 1]) == 8 and most_common(iter([8, 1, 3, 1, 8])) == 8
    assert most_common([4, 9, 4]) == 4
    layers = {"to_q": nn.Linear(3, 4), "ff": nn.Linear(3, 4)}
    cfg = lora_config_dict(_factors(layers, {"to_q": 1, "ff": 8}, seed=0))
    assert (cfg["r"], cfg["rank_pattern"]) == (8, {anchored("to_q"): 1})
    assert anchored("a.to_q", r"(?:text_model\.)?") == r"^(?:text_model\.)?a\.to_q$"
    assert cfg["target_modules"] == anchored_any(["ff", "to_q"]) == "^(?:ff|to_q)$"


def test_file_carries_metadata_and_round_trips(tmp_path):
    from safetensors import safe_open

    unet_layers = {"a.to_q": nn.Linear(8, 6), "a.to_k": nn.Linear(8, 6), "b.ff.net.2": nn.Linear(6, 8)}
    text_layers = {"enc.fc1": nn.Linear(4, 7), "enc.fc2": nn.Linear(7, 4)}
    factors = {"unet": _factors(unet_layers, {"a.to_q": 3, "a.to_k": 3, "b.ff.net.2": 0}, seed=1),
               "text_encoder": _factors(text_layers, {"enc.fc1": 1, "enc.fc2": 2}, seed=2)}
    path = save_standard_lora(tmp_path / "adapter", factors)
    assert path == tmp_path / "adapter" / WEIGHT_NAME
    assert sorted(p.name for p in path.parent.iterdir()) == ["pytorch_lora_weights.safetensors", "ranks.json"]
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
        keys = set(f.keys())
    assert meta["unet.r"] == 3 and meta["unet.rank_pattern"] == {}
    # Text-encoder layers are named the way LoRA files in the wild name them (transformers 4):
    assert "text_encoder.text_model.enc.fc1.lora_A.weight" in keys and "unet.a.to_q.lora_A.weight" in keys
    assert not any(k.startswith("text_encoder.enc.") for k in keys)
    # ... and the metadata patterns match the module names with and without text_model.
    opt = r"(?:text_model\.)?"
    assert meta["text_encoder.rank_pattern"] in ({rf"^{opt}enc\.fc1$": 1}, {rf"^{opt}enc\.fc2$": 2})
    assert json.loads((path.parent / "ranks.json").read_text()) == {
        "unet": {"a.to_q": 3, "a.to_k": 3, "b.ff.net.2": 0}, "text_encoder": {"enc.fc1": 1, "enc.fc2": 2}}
    back = load_standard_lora(path.parent)
    assert set(back["unet"]) == {"a.to_q", "a.to_k"}  # rank 0: nothing stored
    for part, layers in back.items():
        for name, (a, b) in layers.items():
            assert torch.equal(a, factors[part][name][0]) and torch.equal(b, factors[part][name][1])


def test_bad_factors_fail_clearly(tmp_path):
    good = (torch.zeros(2, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="do not chain"):
        save_standard_lora(tmp_path, {"unet": {"x": (torch.zeros(2, 3), torch.zeros(4, 3))}})
    with pytest.raises(ValueError, match="every layer has rank 0"):
        save_standard_lora(tmp_path, {"unet": {"x": (torch.zeros(0, 3), torch.zeros(4, 0))}})
    with pytest.raises(ValueError, match="text-encoder"):
        save_standard_lora(tmp_path, {"unet": {"x": good}, "text-encoder": {"y": good}})
    assert not (tmp_path / WEIGHT_NAME).exists()


def test_fresh_pipeline_with_load_lora_weights_reproduces_the_adapted_model(tiny_pipeline, tiny_base,
                                                                             tmp_path):
    """Reference: the factors merged into the weights by hand (W ← W + B A), no adapter code at all."""
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    original = {"unet": tiny_pipeline.unet, "text_encoder": tiny_pipeline.text_encoder}
    parts = {k: copy.deepcopy(m) for k, m in original.items()}
    factors = {}
    for i, (part, module) in enumerate(parts.items()):
        layers = linear_modules(module)
        ranks = {n: k % 5 for k, n in enumerate(layers)}  # ranks 0..4, different per layer
        factors[part] = _factors(layers, ranks, seed=10 + i, std=0.15)
        with torch.no_grad():
            for name, (a, b) in factors[part].items():
                layers[name].weight += b @ a  # [out, r] @ [r, in]
    prompts = ["The heart is enlarged.", "The lungs are clear."]
    with torch.no_grad():
        merged = generate(tiny_pipeline, parts, prompts)
        base = generate(tiny_pipeline, original, prompts)
    save_standard_lora(tmp_path / "adapter", factors)
    fresh = StableDiffusionPipeline.from_pretrained(tiny_base["path"], safety_checker=None,
                                                    requires_safety_checker=False)
    fresh.load_lora_weights(str(tmp_path / "adapter"))
    for part in ("unet", "text_encoder"):  # every layer got exactly its exported rank
        module = getattr(fresh, part)
        loaded = {n: next(iter(m.r.values())) for n, m in module.named_modules()
                  if hasattr(m, "lora_A") and m.r}
        assert loaded == {n: a.shape[0] for n, (a, _) in factors[part].items() if a.shape[0] > 0}
    with torch.no_grad():
        loaded_images = generate(fresh, {"unet": fresh.unet, "text_encoder": fresh.text_encoder}, prompts)
    assert float(np.abs(loaded_images - merged).max()) <= 1e-4
    assert float(np.abs(merged - base).max()) > 0.05, "the factors changed nothing: a vacuous check"
    # The same file with the transformers-5 naming (no text_model. level) loads to identical outputs.
    with safe_open(str(tmp_path / "adapter" / WEIGHT_NAME), "pt") as f:
        names = set(f.keys())
    assert any(k.startswith("text_encoder.text_model.encoder.layers.") for k in names)
    _rename_text_keys(tmp_path / "adapter" / WEIGHT_NAME, tmp_path / "flat", "text_encoder.text_model.",
                      "text_encoder.")
    other = StableDiffusionPipeline.from_pretrained(tiny_base["path"], safety_checker=None,
                                                    requires_safety_checker=False)
    other.load_lora_weights(str(tmp_path / "flat"))
    with torch.no_grad():
        other_images = generate(other, {"unet": other.unet, "text_encoder": other.text_encoder}, prompts)
    assert np.array_equal(other_images, loaded_images)


def _rename_text_keys(src, dest, old: str, new: str) -> None:
    """A copy of an exported file with the text encoder's keys renamed (the other naming)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        names = list(f.keys())
        state = {k.replace(old, new, 1): f.get_tensor(k) for k in names}
    dest.mkdir(parents=True)
    save_file(state, str(dest / WEIGHT_NAME), metadata=meta)


def test_both_text_encoder_namings_load_back_to_the_same_factors(tmp_path):
    layers = {"encoder.layers.0.mlp.fc1": nn.Linear(4, 7), "encoder.layers.0.mlp.fc2": nn.Linear(7, 4)}
    factors = {"text_encoder": _factors(layers, {"encoder.layers.0.mlp.fc1": 2,
                                                 "encoder.layers.0.mlp.fc2": 3}, seed=3)}
    path = save_standard_lora(tmp_path / "wild", factors)
    _rename_text_keys(path, tmp_path / "flat", "text_encoder.text_model.", "text_encoder.")
    for folder in ("wild", "flat"):
        back = load_standard_lora(tmp_path / folder)
        assert set(back["text_encoder"]) == set(layers), folder  # this stack's module names
        for name, (a, b) in back["text_encoder"].items():
            assert torch.equal(a, factors["text_encoder"][name][0])
            assert torch.equal(b, factors["text_encoder"][name][1])


def test_model_card_describes_the_adapter_for_a_hub(tmp_path):
    from huggingface_hub import ModelCard

    factors = {"unet": _factors({"a.to_q": nn.Linear(8, 6), "a.to_k": nn.Linear(8, 6)},
                                {"a.to_q": 3, "a.to_k": 1}, seed=4)}
    save_standard_lora(tmp_path / "adapter", factors)
    kwargs = dict(base_model="stable-diffusion-v1-5/stable-diffusion-v1-5", method="selora",
                  hyperparameters={"threshold": 1.1, "test_interval": 40}, dataset="iu-xray",
                  setup={"setup": "iu-xray-224", "size": 224}, training={"lr": 1.0e-4, "seed": 0},
                  metrics={"best_val_loss": 0.125, "best_epoch": 3})
    path = write_model_card(tmp_path / "adapter", **kwargs)
    assert path == tmp_path / "adapter" / CARD_NAME
    card = ModelCard.load(path)  # what huggingface_hub (and a hub upload) reads
    assert card.data.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert card.data.library_name == "diffusers" and {"lora", "selora"} <= set(card.data.tags)
    text = card.text
    assert "| unet | 2 of 2 | 1 | 3 | 3 | 4 |" in text  # ranks from ranks.json: min, median, max, total
    assert "`threshold` | 1.1" in text and "iu-xray" in text and "`best_val_loss` | 0.125" in text
    assert "load_lora_weights" in text
    first = path.read_bytes()
    write_model_card(tmp_path / "adapter", **kwargs)
    assert path.read_bytes() == first  # deterministic: re-exports keep DVC hashes and resumes identical
    local = write_model_card(tmp_path / "adapter", **{**kwargs, "base_model": "models/tiny-sd"},
                             base_on_hub=False)
    assert ModelCard.load(local).data.base_model is None  # not a hub id: not claimed as one
