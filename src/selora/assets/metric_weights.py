"""Random-weight stand-ins for the evaluation networks, in the formats the real ones come in.

- :func:`write_fid_inception`: a folder holding ``weights-inception-2015-12-05-6726825d.pth`` in
  torch-fidelity's FID Inception-v3 state-dict format (what ``evaluate.inception_weights`` points
  at); seeded random convolutions whose BatchNorm statistics are set from noise images, so the
  features are well scaled rather than vanishing through 90 layers.
- :func:`write_small_clip`: a small CLIP model folder (``evaluate.clip_model``) with random weights,
  CLIP's real tokenizer and 77-token text context, and an image processor at its input size.

The real files are a GitHub release and a hub download, neither reachable offline.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from selora.assets.cliptok import MAX_LENGTH, VOCAB_SIZE, write_clip_tokenizer
from selora.assets.marker import is_current, write_marker
from selora.io import atomic_dir, file_sha256

VERSION = 1
CALIBRATION_IMAGES = 4


def inception_spec(seed: int = 0) -> dict[str, Any]:
    return {"builder": "selora.assets.metric_weights.inception", "version": VERSION, "seed": seed,
            "calibration_images": CALIBRATION_IMAGES}


def _random_inception(seed: int):
    """torch-fidelity's FID Inception-v3 module with its own (random) initialisation."""
    import tempfile

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)  # torch-fidelity loads a file in __init__; the subclass ignores it
        torch.manual_seed(seed)
        return Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))


def write_fid_inception(out: Path, seed: int = 0) -> bool:
    """Write ``out/<WEIGHTS_FILE>``; False when already there with the same spec."""
    out = Path(out)
    want = inception_spec(seed)
    if is_current(out, want):
        return False
    import torch

    from selora.metrics.inception import WEIGHTS_FILE

    with torch.random.fork_rng():
        net = _random_inception(seed).float()
        # BatchNorm statistics of noise images (one pass in train mode, cumulative average).
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        net.train()
        g = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (CALIBRATION_IMAGES, 3, 299, 299), generator=g, dtype=torch.uint8)
        with torch.no_grad():
            net(images)
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    with atomic_dir(out) as tmp:
        torch.save(state, tmp / WEIGHTS_FILE)
        write_marker(tmp, "torch-fidelity FID Inception-v3 state dict with random weights",
                     want, sha256=file_sha256(tmp / WEIGHTS_FILE))
    return True


CLIP_TEXT = {"vocab_size": VOCAB_SIZE, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": MAX_LENGTH,
             "hidden_act": "quick_gelu", "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
CLIP_VISION = {"image_size": 64, "patch_size": 16, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 2, "hidden_act": "quick_gelu"}


def clip_spec(bpe_gz: Path, seed: int = 0) -> dict[str, Any]:
    return {"builder": "selora.assets.metric_weights.clip", "version": VERSION, "seed": seed,
            "text": CLIP_TEXT, "vision": CLIP_VISION, "projection_dim": 64,
            "tokenizer_bpe_sha256": file_sha256(bpe_gz)}


def write_small_clip(out: Path, bpe_gz: Path, seed: int = 0) -> bool:
    """Write a CLIP model folder (model, tokenizer, processor); False when already current."""
    out = Path(out)
    want = clip_spec(bpe_gz, seed)
    if is_current(out, want):
        return False
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    with atomic_dir(out) as tmp:
        tok_dir = write_clip_tokenizer(tmp / ".tokenizer", bpe_gz)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
        size = CLIP_VISION["image_size"]
        images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        config = CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=64)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = CLIPModel(config)
        model.save_pretrained(tmp, safe_serialization=True)
        CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(tmp)
        shutil.rmtree(tok_dir)
        write_marker(tmp, "small CLIP model (2-layer text and vision towers) with random weights and "
                          "CLIP's real tokenizer", want)
    return True
