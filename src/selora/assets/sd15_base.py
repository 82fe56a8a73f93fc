"""SD 1.5 as a diffusers folder: the published architecture (:mod:`selora.sd15`) with seeded random
weights and the real CLIP tokenizer, for ``base_model.name`` on machines without the weights.

Every code path the real weights take runs on it (184 U-Net + 72 text-encoder linear layers,
768-wide text, 4-channel latents, PNDM with SD 1.5's schedule); only the numbers are meaningless.
Weights are stored in float32: measured here, a pipeline loads from float32 safetensors in ~1 s
(memory-mapped), from float16 in 7-9 s (every tensor converted), and transformers then keeps a
float16 text encoder in float16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selora import sd15
from selora.assets.cliptok import write_clip_tokenizer
from selora.assets.marker import is_current, write_marker
from selora.io import atomic_dir, file_sha256

VERSION = 1  # bump when the same spec would give other files


def spec(bpe_gz: Path, seed: int = 0, configs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    configs = configs or {"unet": sd15.UNET, "text_encoder": sd15.TEXT_ENCODER, "vae": sd15.VAE}
    return {"builder": "selora.assets.sd15_base", "version": VERSION, "seed": seed, **configs,
            "scheduler": sd15.SCHEDULER, "tokenizer_bpe_sha256": file_sha256(bpe_gz)}


def write_sd15_base(out: Path, bpe_gz: Path, seed: int = 0,
                    configs: dict[str, dict[str, Any]] | None = None) -> bool:
    """Write the folder atomically; False when it is already there with the same spec (no-op).
    ``configs`` (``unet``, ``text_encoder``, ``vae``) replace SD 1.5's widths: ``sd15.NARROW`` (CI's
    rehearsal) or ``sd15.scaled`` (tests); the marker then says so."""
    out = Path(out)
    want = spec(bpe_gz, seed, configs)
    if is_current(out, want):
        return False
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    with atomic_dir(out) as tmp:
        write_clip_tokenizer(tmp / "tokenizer", bpe_gz)
        with torch.random.fork_rng():
            pipe = StableDiffusionPipeline(
                vae=sd15.build_vae(want["vae"], seed),
                text_encoder=sd15.build_text_encoder(want["text_encoder"], seed + 1),
                tokenizer=CLIPTokenizer.from_pretrained(tmp / "tokenizer", local_files_only=True),
                unet=sd15.build_unet(want["unet"], seed + 2),
                scheduler=PNDMScheduler.from_config(sd15.SCHEDULER),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
        pipe.save_pretrained(tmp, safe_serialization=True)
        # SD 1.5's own tokenizer files (vocab.json, merges.txt), not transformers' tokenizer.json.
        write_clip_tokenizer(tmp / "tokenizer", bpe_gz)
        widths = "" if configs is None else " at narrow widths"
        write_marker(tmp, f"SD 1.5 architecture (U-Net, VAE, CLIP text encoder, PNDM){widths} with "
                          "random weights and CLIP's real tokenizer", want)
    return True
