"""CLIP score (torchmetrics ``CLIPScore``) with prompts truncated by the tokenizer.

torchmetrics truncates long captions by slicing ``input_ids[..., :77]``, which cuts off the end
token; CLIP pools the text at its end token, so every long report then scores as garbage
(torchmetrics issue 2883). Radiology findings often exceed 77 tokens. Here the processor is
wrapped so the tokenizer itself truncates (``truncation=True, max_length=77``), which keeps the end
token, and torchmetrics' slicing never triggers. The paper's text encoder truncates the same way.

transformers 5 returns ``BaseModelOutputWithPooling`` (projected embedding in ``pooler_output``)
from ``get_text_features`` / ``get_image_features`` where torchmetrics 1.9 expects a tensor
(torchmetrics issue 3407, fixed after 1.9.0); :class:`FeatureTensors` unwraps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from selora.errors import MissingWeightsError


class TruncatingProcessor:
    """A CLIP processor whose text encoding truncates to ``max_length`` keeping the end token."""

    def __init__(self, processor: Any, max_length: int) -> None:
        self.processor = processor
        self.max_length = max_length

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("text") is not None:
            kwargs.setdefault("truncation", True)
            kwargs.setdefault("max_length", self.max_length)
        return self.processor(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)


class FeatureTensors(torch.nn.Module):
    """A CLIP model whose ``get_*_features`` return the projected embeddings as tensors [N, d]."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))


def text_max_length(model: Any) -> int:
    return int(model.config.text_config.max_position_embeddings)


def load_clip(name_or_path: str) -> tuple[Any, Any]:
    """A local CLIP folder or a hub id (from the local cache when offline)."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(name_or_path)
        processor = CLIPProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise MissingWeightsError(
            f"evaluate.clip_model: cannot load CLIP model {name_or_path!r} ({type(exc).__name__}): "
            "put a CLIP model folder (config.json, model.safetensors, tokenizer and preprocessor "
            "files, e.g. a snapshot of openai/clip-vit-large-patch14) at "
            f"{Path(name_or_path).expanduser()} (or, for a hub id, into the "
            "hub cache on a machine with internet), or set evaluate.clip_model: null to skip CLIP score"
        ) from exc
    model.eval()
    return model, processor


@torch.no_grad()
def clip_score(
    images: torch.Tensor, prompts: Sequence[str], model: Any, processor: Any, batch_size: int = 32
) -> float:
    """Mean over images of max(100 · cos(image, prompt), 0); images uint8 [N, 3, H, W]."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    wrapped = TruncatingProcessor(processor, text_max_length(model))
    metric = CLIPScore(model_name_or_path=lambda: (FeatureTensors(model), wrapped))
    for i in range(0, len(images), batch_size):
        metric.update(list(images[i : i + batch_size]), list(prompts[i : i + batch_size]))
    return float(metric.compute())
