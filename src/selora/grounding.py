"""Phrase grounding for the miniature's pre-training: where each phrase is drawn, the U-Net's
cross-attention to the phrase's words should be.

Why: trained on the denoising loss alone, the miniature reads colour words within its 2,000 steps
but never binds a position word to a place (caption probe position 0.11, chance 0.11, through
6,000 steps: benchmarks/README, "The caption probe"). Binding a word to a place is exactly what
cross-attention must learn, and the natural set knows where every object is. A token-level
grounding loss on the cross-attention maps (Wang et al. 2024, "TokenCompose", CVPR: their
L_token) teaches it directly: for every word of an object's phrase, the share of its attention
mass that falls outside the object's box, squared, averaged over words and cross-attention layers.
SD 1.5 learnt the same binding from billions of captioned images; the miniature sees 32,000
captions (2,000 steps of 16).

The boxes travel beside each split's manifest (:func:`selora.imagefolder.write_objects`). Rows
without boxes (the generic radiographs; a natural set without them) get the denoising loss only;
:func:`grounding_targets` counts them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

STOP_WORDS = frozenset({"a", "an", "the", "in", "at", "on", "of", "and"})  # grounded: the other words
MIN_COVER = 0.1  # a latent cell belongs to a box when the box covers at least this share of it


def phrase_tokens(tokenizer, caption: str, phrase: str) -> list[int]:
    """Token positions (after the start token) of ``phrase``'s content words in ``caption``, or []
    when the phrase is not in the caption or lies beyond the tokenizer's context.

    CLIP's pre-tokeniser never merges across whitespace, so each whitespace-separated word owns the
    tokens it encodes to on its own.
    """
    words, target = caption.split(), phrase.split()
    starts = [i for i in range(len(words) - len(target) + 1) if words[i:i + len(target)] == target]
    if not starts:
        return []
    first = starts[0]
    position, out = 1, []  # 0 is <|startoftext|>
    for i, word in enumerate(words[:first + len(target)]):
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        if i >= first and word.lower() not in STOP_WORDS:
            out.extend(range(position, position + n))
        position += n
    last = tokenizer.model_max_length - 1  # the end token takes the last place
    return [t for t in out if t < last]


def box_mask(box: Sequence[float], side: int) -> torch.Tensor:
    """[side·side] 1 where the box (x0, y0, x1, y1 in [0, 1]) covers ≥ MIN_COVER of a cell of a
    side × side grid, else 0; the best-covered cell at least, so a small box is never empty."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cover = _cover(y0, y1, side)[:, None] * _cover(x0, x1, side)[None, :]  # [side (y), side (x)]
    mask = cover >= MIN_COVER
    mask.view(-1)[cover.argmax()] = True
    return mask.reshape(-1).float()


def _cover(lo: float, hi: float, side: int) -> torch.Tensor:
    """[side] share of each of ``side`` equal cells of [0, 1] that [lo, hi] covers."""
    edges = torch.arange(side + 1, dtype=torch.float64) / side
    return (torch.clamp(edges[1:], max=hi) - torch.clamp(edges[:-1], min=lo)).clamp(min=0) * side


@dataclass
class RowTargets:
    """One caption's grounded tokens and, per attention resolution, each token's mask."""

    tokens: torch.Tensor  # [n] long
    masks: dict[int, torch.Tensor]  # side -> [n, side·side]


@dataclass
class GroundingTargets:
    weight: float
    sides: tuple[int, ...]  # the U-Net's attention resolutions (latent side, then halved per level)
    rows: list[RowTargets | None]  # per training row; None: nothing to ground
    counts: dict[str, int] = field(default_factory=dict)

    def batch(self, idx: torch.Tensor, keep: torch.Tensor,
              length: int) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Token weights [B, L] (1 = grounded) and masks {side: [B, L, side·side]} of a batch;
        rows whose caption was dropped (``keep`` False) get none."""
        sides = self.sides
        weights = torch.zeros(len(idx), length)
        masks = {s: torch.zeros(len(idx), length, s * s) for s in sides}
        for b, (i, k) in enumerate(zip(idx.tolist(), keep.tolist(), strict=True)):
            row = self.rows[i]
            if row is None or not k:
                continue
            weights[b, row.tokens] = 1.0
            for s in sides:
                masks[s][b, row.tokens] = row.masks[s]
        return weights, masks


def attention_sides(latent_side: int, levels: int) -> tuple[int, ...]:
    """The side of the U-Net's feature maps at each of its ``levels`` (halved by every down block
    but the last), where its cross-attention layers sit."""
    return tuple(latent_side // 2 ** k for k in range(levels))


def grounding_targets(tokenizer, rows: Sequence[dict[str, Any]], sides: Sequence[int],
                      weight: float) -> GroundingTargets:
    """The grounded tokens and masks of every row (its ``objects``: ``{"phrase", "box"}``).

    Counts rows with boxes, without, and phrases not found in their caption (or truncated away),
    so a natural set without boxes is reported rather than silently ungrounded.
    """
    out: list[RowTargets | None] = []
    counts = {"rows_grounded": 0, "rows_without_objects": 0, "phrases_not_in_caption": 0}
    for row in rows:
        tokens, masks = [], {s: [] for s in sides}
        for obj in row.get("objects") or []:
            found = phrase_tokens(tokenizer, row["text"], obj["phrase"])
            if not found:
                counts["phrases_not_in_caption"] += 1
                continue
            tokens += found
            for s in sides:
                masks[s] += [box_mask(obj["box"], s)] * len(found)
        if not tokens:
            counts["rows_without_objects"] += not row.get("objects")
            out.append(None)
            continue
        counts["rows_grounded"] += 1
        out.append(RowTargets(torch.tensor(tokens), {s: torch.stack(m) for s, m in masks.items()}))
    return GroundingTargets(weight, tuple(sides), out, counts)


class RecordingAttnProcessor:
    """Cross-attention as diffusers' ``AttnProcessor`` computes it, keeping the head-averaged
    attention probabilities [B, HW, L] in ``maps`` while ``maps`` is a list."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] | None = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is None or hidden_states.ndim != 3 or attention_mask is not None:
            raise ValueError("RecordingAttnProcessor handles the U-Net's cross-attention only")
        residual = hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # [B·h, HW, d]
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # [B·h, L, d]
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)  # [B·h, HW, L]
        if self.maps is not None:
            batch = hidden_states.shape[0]
            self.maps.append(probs.view(batch, attn.heads, *probs.shape[1:]).mean(1))  # [B, HW, L]
        out = attn.batch_to_head_dim(torch.bmm(probs, value))  # [B, HW, h·d]
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def recording_cross_attention(unet) -> Iterator[RecordingAttnProcessor]:
    """Route every cross-attention layer (``attn2``) of ``unet`` through one recorder; the
    processors it had come back afterwards (they are not saved with the model either way)."""
    before = unet.attn_processors
    recorder = RecordingAttnProcessor()
    unet.set_attn_processor({name: recorder if ".attn2." in name else proc for name, proc in before.items()})
    try:
        yield recorder
    finally:
        unet.set_attn_processor(before)


def grounding_loss(maps: Sequence[torch.Tensor], weights: torch.Tensor,
                   masks: dict[int, torch.Tensor]) -> torch.Tensor:
    """TokenCompose's token loss: mean over grounded tokens and layers of (1 − the share of the
    token's attention mass inside its mask)². ``maps``: [B, HW, L] per layer; ``weights`` [B, L];
    ``masks`` {side: [B, L, side·side]}. 0 when nothing in the batch is grounded."""
    total = weights.sum()
    if not maps or total == 0:
        return torch.zeros(())
    terms = []
    for amap in maps:
        side = round(amap.shape[1] ** 0.5)
        inside = torch.einsum("bql,blq->bl", amap, masks[side])  # [B, L]
        share = inside / amap.sum(1).clamp_min(1e-12)  # [B, L]
        terms.append(((1 - share) ** 2 * weights).sum() / total)
    return torch.stack(terms).mean()
