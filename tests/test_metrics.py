"""FID / KID maths, the Inception taps and the CLIP-score truncation."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch

from selora.errors import MissingWeightsError
from selora.metrics import frechet


def _features(n: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix) * scale  # correlated [n, d]


def _numpy_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """The Fréchet distance written out with numpy/scipy (Heusel et al. 2017), as pytorch-fid does."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_known_perturbation():
    x = _features(300, 12, 0)
    assert abs(frechet.fid(x, x)) < 1e-8
    # A pure mean shift c leaves both covariances equal: FID = ||c||² exactly.
    shifts = [0.1, 0.5, 1.0, 2.0]
    values = [frechet.fid(x, x + s) for s in shifts]
    assert values == pytest.approx([12 * s**2 for s in shifts], rel=1e-6)
    # Scaling the features by a grows the covariance term: FID = (a - 1)² tr(Σ) for a shared mean of 0.
    centred = x - x.mean(0)
    trace = float(torch.trace(torch.cov(centred.T)))
    for a in (1.5, 3.0):
        assert frechet.fid(centred, centred * a) == pytest.approx((a - 1) ** 2 * trace, rel=1e-6)


def test_fid_matches_a_direct_numpy_scipy_computation():
    x, y = _features(400, 10, 1), _features(350, 10, 2, scale=1.7) + 0.3
    ours = frechet.fid(x, y)
    assert ours == pytest.approx(_numpy_frechet(x.numpy(), y.numpy()), rel=1e-6)
    assert ours > 1.0


def test_kid_is_about_zero_for_identical_sets_and_positive_for_different_ones():
    both = _features(400, 16, 3)
    x, y = both[:200], both[200:]  # two draws of one distribution
    shifted = frechet.kid(x, x + 0.5, subsets=20, subset_size=50)
    same = frechet.kid(x, x, subsets=20, subset_size=200)
    # The unbiased MMD² of a set with itself is -2 (mean k(x,x) - mean k(x,x')) / (m - 1): O(1/m), ~0.
    k = (x @ x.T / 16 + 1) ** 3
    exact = -2 * float(k.diagonal().mean() - k.mean()) / 199
    assert same["kid_mean"] == pytest.approx(exact, rel=1e-6)
    assert abs(same["kid_mean"]) < 0.1 * shifted["kid_mean"]
    assert abs(frechet.kid(x, y, subsets=20, subset_size=100)["kid_mean"]) < 0.1 * shifted["kid_mean"]
    assert shifted["kid_mean"] > 5 * shifted["kid_std"] / 20**0.5
    # Reproducible (seeded subsets) and the subset size is capped at the smaller set.
    assert frechet.kid(x, x + 0.5, subsets=20, subset_size=50) == shifted
    small = frechet.kid(x, x[:30] + 0.5, subsets=5, subset_size=1000)
    assert small["kid_subset_size"] == 30


def test_fid_and_kid_are_the_same_bits_on_any_thread_count():
    """`dvc repro` gives a stage every core, Snakemake's evaluate rule one: the scores must not move.
    Unpinned, two threads moved this FID in its tenth digit (128 x 176 features, as the embedded default)."""
    real, fake = _features(128, 176, 4), _features(128, 176, 5, scale=1.1) + 0.2
    before = torch.get_num_threads()
    scores = []
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            scores.append((frechet.fid(real, fake), frechet.kid(real, fake, subsets=10, subset_size=100)))
            assert torch.get_num_threads() == threads  # the caller's count comes back
    finally:
        torch.set_num_threads(before)
    assert scores[0] == scores[1] == scores[2]


def test_fewer_than_two_feature_rows_is_a_clear_error():
    from selora.metrics.samples import SampleError

    with pytest.raises(SampleError, match="at least 2"):
        frechet.fid(_features(5, 4, 0), _features(1, 4, 1))


# ----------------------------------------------------------------------------- Inception
def _random_inception_weights(path):
    """A randomly initialised FID Inception state dict with the real file's keys (no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None),
    ):
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def test_absent_inception_weights_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    from selora.metrics.inception import WEIGHTS_FILE, resolve_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights(None)
    msg = str(err.value)
    assert WEIGHTS_FILE in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "evaluate.inception_weights" in msg
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "nowhere" / WEIGHTS_FILE)):
        resolve_weights(str(tmp_path / "nowhere" / WEIGHTS_FILE))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MissingWeightsError, match="not a loadable"):
        resolve_weights(str(bad))


def test_inception_taps_give_torchmetrics_fid_with_antialias_off(tmp_path):
    """The FID from our taps equals torchmetrics' own FrechetInceptionDistance(feature=192,
    antialias=False) in float64 on the same images: the same TF-style resize and scaling (the
    192-d tap stops the forward early, so this is cheap; the 2048-d path runs end to end in
    test_metrics_evaluate)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from selora.metrics.inception import InceptionTaps, resolve_weights

    weights = resolve_weights(str(_random_inception_weights(tmp_path / "w.pth")))
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (3, 1, 40, 40), generator=g, dtype=torch.uint8).repeat(1, 3, 1, 1)
    fake = (real.int() + torch.randint(-60, 60, real.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    taps = InceptionTaps(weights, roles=("fid_mid", "fid_low"))
    fr, ff = taps(real), taps(fake)
    assert {k: (v.shape[1], v.dtype) for k, v in fr.items()} == {
        "fid_mid": (192, torch.float64),
        "fid_low": (64, torch.float64),
    }
    for role, dim in (("fid_mid", 192), ("fid_low", 64)):
        ref = FrechetInceptionDistance(
            feature=dim, antialias=False, feature_extractor_weights_path=str(weights)
        )
        ref.set_dtype(torch.float64)
        ref.update(real, real=True)
        ref.update(fake, real=False)
        assert frechet.fid(fr[role], ff[role]) == pytest.approx(float(ref.compute()), rel=1e-6, abs=1e-9)


def test_planned_feature_dims_are_the_widths_the_networks_tap():
    """What a report shows before any run is scored (feature_dims) is what scoring records."""
    from selora.errors import ConfigError
    from selora.metrics.fit_reference import feature_dims
    from selora.metrics.reference import ReferenceNet

    taps, _ = ReferenceNet(channels=1, classes=[2])(torch.rand(3, 1, 32, 32))
    assert {k: v.shape[1] for k, v in taps.items()} == feature_dims("reference")
    assert feature_dims("inception") == {"fid": 2048, "fid_mid": 192, "fid_low": 64}  # as above
    assert set(taps) == set(frechet.TAP_ROLES)  # every space has the taps scoring and the tables name
    feature_dims("reference")["fid"] = 0  # a copy: the caller cannot change the next answer
    assert feature_dims("reference")["fid"] == taps["fid"].shape[1]
    with pytest.raises(ConfigError, match="feature_space"):
        feature_dims("auto")


# ----------------------------------------------------------------------------- CLIP score
@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from selora.tinysd import train_tokenizer

    words = [
        "the",
        "heart",
        "lungs",
        "are",
        "clear",
        "normal",
        "size",
        "no",
        "effusion",
        "pneumothorax",
        "nodule",
        "left",
        "right",
        "lobe",
    ]
    tok = train_tokenizer([" ".join(words)] * 3, vocab_size=700, max_length=77)
    cfg = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=images, tokenizer=tok)


def test_clip_score_truncation_keeps_the_end_token(tiny_clip):
    from selora.metrics.clip import TruncatingProcessor, clip_score

    model, processor = tiny_clip
    eos = processor.tokenizer.eos_token_id
    long = " ".join(["the lungs are clear and the heart is normal in size"] * 12)  # > 77 tokens
    plain = processor(text=[long], return_tensors="pt", padding=True)["input_ids"]
    assert plain.shape[1] > 77 and plain[0, 76] != eos  # torchmetrics' slice [:77] would drop the end token
    ids = TruncatingProcessor(processor, 77)(text=[long, "no effusion"], return_tensors="pt", padding=True)[
        "input_ids"
    ]
    assert ids.shape[1] == 77 and ids[0, -1] == eos and ids[0, 0] == processor.tokenizer.bos_token_id
    assert ids[0, :76].tolist() == plain[0, :76].tolist()

    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    prompts = [long, "no effusion"]
    score = clip_score(images, prompts, model, processor)
    # The same score written out: 100 · cosine of the projected embeddings, tokenizer-truncated text.
    with torch.no_grad():
        text = processor(text=prompts, return_tensors="pt", padding=True, truncation=True, max_length=77)
        t = model.get_text_features(text["input_ids"], text["attention_mask"])
        v = model.get_image_features(processor(images=list(images), return_tensors="pt")["pixel_values"])
    t = t.pooler_output if hasattr(t, "pooler_output") else t
    v = v.pooler_output if hasattr(v, "pooler_output") else v
    cos = torch.nn.functional.cosine_similarity(t, v)
    assert score == pytest.approx(max(float((100 * cos).mean()), 0.0), rel=1e-4, abs=1e-4)


def test_unloadable_clip_model_names_the_fix(tmp_path):
    from selora.metrics.clip import load_clip

    with pytest.raises(MissingWeightsError, match=r"evaluate\.clip_model: null"):
        load_clip(str(tmp_path / "no-clip-here"))


def test_finding_scores_on_hand_made_predictions():
    """Balanced accuracy = mean per-class recall, so always answering the majority class scores
    its chance level, not the majority share; unknown label values (-1) are left out."""
    from selora.metrics.reference import finding_scores

    schema = {"heart": ("normal", "enlarged"), "device": ("none", "pacemaker", "other")}
    target = torch.tensor([[0, 0], [0, 0], [0, 1], [1, -1]])
    always_normal = torch.zeros_like(target)
    s = finding_scores(always_normal, target, schema)
    assert s["per_finding"] == {"heart": 0.75, "device": pytest.approx(2 / 3)}
    assert s["balanced_accuracy"] == pytest.approx(0.5)  # (1 + 0) / 2 for both findings
    assert s["per_finding_balanced"] == {"heart": 0.5, "device": 0.5}
    assert s["majority_baseline"] == pytest.approx((0.75 + 2 / 3) / 2) and s["unscored_labels"] == 1
    perfect = finding_scores(target.clamp(min=0), target, schema)
    assert perfect["accuracy"] == perfect["balanced_accuracy"] == 1.0 and perfect["exact_match"] == 0.75


def test_schema_free_balanced_accuracy_is_finding_scores_own():
    """The report's bootstrap recomputes the balanced accuracy on resampled rows without the schema:
    the same number as ``finding_scores`` on any predictions, with unknown (-1) targets left out."""
    from selora.metrics.reference import balanced_accuracy, finding_scores

    gen = torch.Generator().manual_seed(0)
    schema = {"heart": ("normal", "enlarged"), "effusion": ("none", "left", "bilateral")}
    for _ in range(5):
        target = torch.stack([torch.randint(-1, 2, (50,), generator=gen),
                              torch.randint(-1, 3, (50,), generator=gen)], dim=1)  # [50, 2]
        pred = torch.stack([torch.randint(0, 2, (50,), generator=gen),
                            torch.randint(0, 3, (50,), generator=gen)], dim=1)
        assert balanced_accuracy(pred, target) == finding_scores(pred, target, schema)["balanced_accuracy"]
    assert math.isnan(balanced_accuracy(pred, torch.full_like(target, -1)))


def test_colour_cast_is_zero_for_gray_and_the_mean_red_blue_gap_otherwise():
    from selora.metrics.samples import colour_cast

    gray = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    assert colour_cast(gray) == 0.0 and colour_cast(gray.repeat(1, 3, 1, 1)) == 0.0
    red, blue = torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    red[:, 0], blue[:, 2] = 255, 51  # pure red: |R − B| = 1; dark blue: 0.2
    assert colour_cast(red) == 1.0 and colour_cast(torch.cat([red, blue])) == pytest.approx(0.6)
    # The same images in [-1, 1] (the VAE's range): the same cast.
    assert colour_cast(blue.float() / 127.5 - 1, -1.0, 1.0) == pytest.approx(0.2)
    # Chunked over images (a paper-scale split): the same mean as over one tensor.
    many = torch.randint(0, 256, (600, 3, 4, 4), dtype=torch.uint8)
    whole = (many[:, 0].double() - many[:, 2].double()).abs().mean().item() / 255
    assert colour_cast(many) == pytest.approx(whole, rel=1e-12)
