"""The embedded miniature Stable Diffusion: SD 1.5's architecture classes at toy size.

Same classes as ``runwayml/stable-diffusion-v1-5`` (diffusers ``AutoencoderKL``,
``UNet2DConditionModel`` with cross-attention in every block, transformers ``CLIPTextModel`` and a
``CLIPTokenizer``), so every later phase treats ``tiny`` and SD 1.5 through one code path. The
tokenizer is a CLIP-style byte-level BPE (same normaliser, pre-tokeniser and ``</w>`` suffix as
CLIP's) learnt from the captions and reports, because CLIP's 49k-token vocabulary cannot be
downloaded here.

The schedulers copy SD 1.5's ``scheduler_config.json`` — in particular ``clip_sample=False``:
latent-diffusion samples must not be clipped to [-1, 1], or every image collapses to one colour.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from typing import Any

from selora import sd15
from selora.config import TinyConfig

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_PATTERN = (  # CLIP's own pre-tokenisation pattern
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

# SD 1.5's noise schedule (scheduler/scheduler_config.json of the hub folder), without the PNDM-only key.
SD15_SCHEDULE: dict[str, Any] = {
    **{k: v for k, v in sd15.SCHEDULER.items() if k != "skip_prk_steps"},
    "prediction_type": "epsilon",
}


def _clip_backend():
    """An empty tokenizers pipeline with CLIP's normaliser and pre-tokeniser."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE(unk_token=EOT, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return tok


def learn_bpe(word_counts: Counter[str], n_merges: int) -> list[tuple[str, str]]:
    """Byte-pair merges, most frequent pair first; ties broken by the pair itself.

    Written out (instead of ``tokenizers``' trainer, whose tie-breaking follows hash-map order and
    changes from run to run) so the same corpus always gives the same tokenizer.
    """
    words = {(*tuple(w[:-1]), w[-1] + "</w>"): c for w, c in word_counts.items() if w}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        new_words = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + count
        words = new_words
    return merges


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int):
    """A ``CLIPTokenizer`` whose BPE merges are learnt from ``texts`` (deterministically).

    Every byte-level symbol is in the vocabulary both inside a word and with the ``</w>`` suffix,
    so any text (unseen words, digits, non-ASCII) encodes without unknown tokens.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    backend = _clip_backend()
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = backend.normalizer.normalize_str(text)
        counts.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalized))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for piece in alphabet + [a + "</w>" for a in alphabet]:
        vocab[piece] = len(vocab)
    merges = learn_bpe(counts, max(vocab_size - len(vocab) - 2, 0))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[SOT] = len(vocab)
    vocab[EOT] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_text_encoder(cfg: TinyConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden_size,
        intermediate_size=cfg.text_intermediate_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        hidden_act="quick_gelu",
        projection_dim=cfg.text_hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae(cfg: TinyConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.image_size,
    )


def build_unet(cfg: TinyConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=cfg.image_size // cfg.vae_factor,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_hidden_size,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def schedule(cfg: TinyConfig | None = None) -> dict[str, Any]:
    """SD 1.5's noise schedule, or the miniature's: with ``cfg.zero_terminal_snr`` the betas are
    rescaled so the last step is pure noise (Lin et al. 2024, "Common diffusion noise schedules and
    sample steps are flawed"), the model predicts v, and samplers start at t = T ("trailing")."""
    out = dict(SD15_SCHEDULE)
    if cfg is not None:
        out["prediction_type"] = cfg.prediction_type
        if cfg.zero_terminal_snr:
            out.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return out


def noise_scheduler(cfg: TinyConfig | None = None):
    """The training scheduler (DDPM with SD 1.5's schedule, or the miniature's: :func:`schedule`)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{k: v for k, v in schedule(cfg).items() if k != "set_alpha_to_one"})


def sampling_scheduler(cfg: TinyConfig | None = None):
    """The scheduler saved with the pipeline (DDIM, same schedule as :func:`noise_scheduler`)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**schedule(cfg))
