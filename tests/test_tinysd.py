"""The embedded miniature Stable Diffusion: loads like SD 1.5, reconstructs, follows captions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selora import tinysd
from selora.basemodel import load_pipeline, resolve_base
from selora.config import load_params
from selora.errors import ConfigError, MissingWeightsError
from selora.imagefolder import file_digest, read_manifest
from selora.pretrain import encode, load_images, pretrain_base, psnr


def test_tokenizer_is_clip_style_and_never_unknown(tmp_path):
    from transformers import CLIPTokenizer

    tok = tinysd.train_tokenizer(["a large red circle", "The heart is enlarged."] * 20, 400, 77)
    ids = tok("Pneumothorax XXXX 12 cm, naïve – ünseen").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "pneumothoraxxxxx12cm,naïve–ünseen"
    long = tok(" ".join(["heart"] * 200), truncation=True, max_length=77, padding="max_length").input_ids
    assert len(long) == 77 and long[-1] == tok.eos_token_id  # truncation keeps the end token
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again("a large red circle").input_ids == tok("a large red circle").input_ids


def test_pipeline_folder_loads_through_the_shared_loader(tiny_base, small_params):
    from dataclasses import replace

    params = replace(small_params, paths=replace(small_params.paths, models=str(tiny_base["path"].parent)))
    assert resolve_base(params) == str(tiny_base["path"])
    pipe = load_pipeline(params)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert pipe.scheduler.config.clip_sample is False
    assert sum(isinstance(m, torch.nn.Linear) for m in pipe.unet.modules()) > 50


def test_vae_reconstructs_held_out_images(tiny_base, tiny_pipeline, synthetic_dirs):
    # Stated threshold for the ~1-minute test pre-training; the default budget reaches ≈ 24 dB.
    assert tiny_base["report"]["vae_psnr_db"] >= 18.0
    vae = tiny_pipeline.vae
    rows = [r for r in read_manifest(synthetic_dirs["natural"]) if r["split"] == "test"]
    x = load_images(rows, 32)
    mean, std = encode(vae, x)
    assert float(std.max()) < 0.01  # sample() is a faithful code, as training scripts use it
    with torch.no_grad():
        rec = vae.decode(mean).sample
        noise = vae.decode(torch.randn_like(mean) / vae.config.scaling_factor).sample
    assert psnr(rec, x) >= 18.0
    assert psnr(rec, x) > psnr(noise, x) + 8  # decoding noise is not reconstruction


def test_generated_images_depend_on_the_caption(tiny_pipeline, tiny_base):
    assert tiny_base["report"]["matched_caption_loss"] < tiny_base["report"]["shuffled_caption_loss"]

    def red_minus_blue(colour: str) -> float:
        gen = torch.Generator().manual_seed(0)
        out = tiny_pipeline([f"a large {colour} circle in the center on a black background"] * 4,
                            num_inference_steps=15, guidance_scale=7.5, generator=gen,
                            output_type="np").images
        centre = out[:, 8:24, 8:24]
        return float((centre[..., 0] - centre[..., 2]).mean())

    assert red_minus_blue("red") > red_minus_blue("blue") + 0.1


def test_pretraining_is_deterministic(tmp_path, synthetic_dirs):
    p = load_params(None, ["base_model.tiny.vae_steps=5", "base_model.tiny.unet_steps=5",
                           "base_model.tiny.batch_size=8"])
    for name in ("a", "b"):
        pretrain_base(p, synthetic_dirs["natural"], None, tmp_path / name, progress=False)
        (tmp_path / name / "pretrain_report.json").unlink()  # holds wall times
    assert file_digest(tmp_path / "a") == file_digest(tmp_path / "b")


def test_base_model_names_resolve_or_fail_clearly(tmp_path):
    p = load_params(None, [f"paths.models={tmp_path}"])
    with pytest.raises(MissingWeightsError, match="pretrain-base"):
        resolve_base(p)
    with pytest.raises(ConfigError, match="unknown base model"):
        resolve_base(load_params(None, ["base_model.name=not a model!"]))
    (tmp_path / "sd").mkdir()
    with pytest.raises(MissingWeightsError, match=r"model_index\.json"):
        resolve_base(load_params(None, [f"base_model.name={tmp_path / 'sd'}"]))
    hub = load_params(None, ["base_model.name=stable-diffusion-v1-5/stable-diffusion-v1-5"])
    assert resolve_base(hub) == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_colour_probe_reference_colours_are_distinct():
    from selora.pretrain import COLOUR_PROBES

    refs = np.array(list(COLOUR_PROBES.values()))
    d = ((refs[:, None] - refs[None]) ** 2).sum(-1)
    assert (d + np.eye(len(refs)) * 1e9).min() > 100**2
