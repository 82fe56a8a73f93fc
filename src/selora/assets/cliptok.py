"""SD 1.5's tokenizer (CLIP ViT-L/14's BPE) built from the merges open_clip ships.

SD 1.5's ``tokenizer/`` is a transformers ``CLIPTokenizer`` over CLIP's own vocabulary, which is
fully determined by CLIP's merges file (``bpe_simple_vocab_16e6.txt.gz``, in the open-clip-torch
wheel): the 256 byte symbols (GPT-2's byte → unicode map in its own order: printable bytes
first, so ``a`` is id 64 and ``a</w>`` 320), the same 256 with
``</w>``, one token per merge for the first 49152 − 256 − 2 merges (the file's first line is a
header), then ``<|startoftext|>`` and ``<|endoftext|>``: 49408 ids, the specials at 49406/49407.
Built offline, so prompt lengths in SD 1.5 tokens can be counted without the hub.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from selora.assets.wheels import find_wheel_file
from selora.errors import AssetUnavailableError
from selora.io import atomic_dir

__all__ = ["BOS", "EOS", "MAX_LENGTH", "VOCAB_SIZE", "clip_bpe", "find_wheel_file", "write_clip_tokenizer"]

OPEN_CLIP = ("open-clip-torch", "3.3.0")
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2
MAX_LENGTH = 77


def clip_bpe(cache: Path | None = None) -> Path:
    """CLIP's merges file, read out of the open-clip-torch wheel (downloaded once with pip)."""
    return find_wheel_file(*OPEN_CLIP, BPE_MEMBER, cache, sha256=BPE_SHA256)


def _byte_symbols() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())  # the map's order is the ids' order, not byte order


def clip_vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's token → id map and its merge lines, as CLIP builds them from ``bpe_gz``."""
    try:
        lines = gzip.decompress(Path(bpe_gz).read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise AssetUnavailableError(f"{bpe_gz}: not CLIP's gzip merges file ({exc})") from exc
    merges = lines[1:N_MERGES + 1]
    if len(merges) < N_MERGES or any(len(m.split()) != 2 for m in merges):
        raise AssetUnavailableError(f"{bpe_gz}: expected a header and {N_MERGES} merge lines ('a b')")
    symbols = _byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(m.replace(" ", "") for m in merges), BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise AssetUnavailableError(f"{bpe_gz}: {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def write_clip_tokenizer(out_dir: Path, bpe_gz: Path) -> Path:
    """Write SD 1.5's ``CLIPTokenizer`` folder (vocab.json, merges.txt, configs) atomically."""
    vocab, merges = clip_vocab_and_merges(bpe_gz)
    config = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True,
        "errors": "replace", "add_prefix_space": False,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,  # SD 1.5 pads with EOS
    }
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return out_dir
