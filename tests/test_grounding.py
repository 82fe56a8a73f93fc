"""Phrase grounding of the miniature's pre-training: the boxes, the token positions, the recorded
cross-attention and the loss (selora.grounding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selora import tinysd
from selora.config import load_params
from selora.grounding import (
    attention_sides,
    box_mask,
    grounding_loss,
    grounding_targets,
    phrase_tokens,
    recording_cross_attention,
)
from selora.imagefolder import read_manifest, with_objects
from selora.synthetic.natural import BACKGROUNDS, render_scene

CAPTION = "a large red circle in the upper left and a small blue bar on the right on a gray background"


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [CAPTION, "a small green ring at the top on a black striped background"] * 3
    return tinysd.train_tokenizer(corpus, vocab_size=600, max_length=77)


def test_every_drawn_pixel_lies_in_its_objects_boxes():
    """On plain backgrounds, the pixels that differ from the background are the objects': each lies
    within a box (give or take the 1.5 px the blur and box filter spread an edge), and each box holds
    some of them."""
    checked = 0
    for i in range(300):
        image, caption, _, objects = render_scene(np.random.default_rng([7, i]), 32)
        if "gradient" in caption or "striped" in caption:
            continue
        background = next(name for name in BACKGROUNDS if caption.endswith(f"on a {name} background"))
        diff = np.abs(np.asarray(image, dtype=np.float32) - BACKGROUNDS[background]).max(axis=2)
        drawn = diff > 60  # pixel noise σ 3, blur: far below
        yy, xx = np.mgrid[0:32, 0:32] + 0.5
        inside = np.zeros_like(drawn)
        assert [o["phrase"] for o in objects] == caption.split(" on a ")[0].split(" and ")
        for obj in objects:
            x0, y0, x1, y1 = (v * 32 for v in obj["box"])
            box = (xx >= x0 - 1.5) & (xx <= x1 + 1.5) & (yy >= y0 - 1.5) & (yy <= y1 + 1.5)
            assert (drawn & box).any(), (i, obj)
            inside |= box
        assert not (drawn & ~inside).any(), (i, caption)
        checked += 1
    assert checked > 100


def test_phrase_tokens_are_the_phrase_content_words(tokenizer):
    first = phrase_tokens(tokenizer, CAPTION, "a large red circle in the upper left")
    second = phrase_tokens(tokenizer, CAPTION, "a small blue bar on the right")
    ids = tokenizer(CAPTION).input_ids
    assert tokenizer.decode([ids[t] for t in first]) == "large red circle upper left"
    assert tokenizer.decode([ids[t] for t in second]) == "small blue bar right"
    assert phrase_tokens(tokenizer, CAPTION, "a large green square in the center") == []
    tokenizer.model_max_length = 6  # <sot> a large red circle <eot>: the rest is truncated away
    try:
        assert [ids[t] for t in phrase_tokens(tokenizer, CAPTION, "a large red circle in the upper left")] \
            == ids[2:5]
    finally:
        tokenizer.model_max_length = 77


def test_box_masks_mark_the_covered_cells_rows_first():
    upper_left = box_mask([0.0, 0.0, 0.5, 0.5], 8).view(8, 8)
    assert upper_left[:4, :4].all() and upper_left.sum() == 16
    assert box_mask([0.75, 0.0, 1.0, 0.25], 4).nonzero().flatten().tolist() == [3]  # row 0, column 3
    corner = box_mask([0.49, 0.49, 0.51, 0.51], 4)  # covers < 10 % of each of four cells
    assert corner.sum() == 1
    assert attention_sides(8, 2) == (8, 4)


def _unet_and_inputs():
    cfg = load_params(None).base_model.tiny
    torch.manual_seed(0)
    unet = tinysd.build_unet(cfg).eval()
    x = torch.randn(3, cfg.latent_channels, 8, 8)
    t = torch.tensor([10, 500, 990])
    context = torch.randn(3, 77, cfg.text_hidden_size)
    return unet, x, t, context


def test_recording_keeps_the_unet_output_and_records_every_cross_attention_map():
    unet, x, t, context = _unet_and_inputs()
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context).sample
        with recording_cross_attention(unet) as recorder:
            recorder.maps = []
            recorded = unet(x, t, encoder_hidden_states=context).sample
    assert torch.allclose(plain, recorded, atol=1e-5)
    cross = [name for name in before if ".attn2." in name]
    assert len(recorder.maps) == len(cross) == 7  # down: 8, 4; mid: 4; up: 4, 4, 8, 8
    assert sorted(m.shape[1] for m in recorder.maps) == [16] * 4 + [64] * 3
    for amap in recorder.maps:
        assert amap.shape[0] == 3 and amap.shape[2] == 77
        assert torch.allclose(amap.sum(-1), torch.ones(amap.shape[:2]), atol=1e-5)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before


def test_grounding_loss_is_zero_inside_the_box_one_outside_and_ignores_other_tokens():
    weights = torch.zeros(2, 5)
    weights[0, 1] = weights[1, 3] = 1.0
    masks = {2: torch.zeros(2, 5, 4)}
    masks[2][0, 1, 0] = masks[2][1, 3, 3] = 1.0
    inside = torch.full((2, 4, 5), 1e-9)
    inside[0, 0, 1] = inside[1, 3, 3] = 1.0
    assert grounding_loss([inside], weights, masks) < 1e-6
    outside = torch.full((2, 4, 5), 1e-9)
    outside[0, 2, 1] = outside[1, 0, 3] = 1.0
    outside[:, :, 0] = 5.0  # an ungrounded token counts for nothing
    assert grounding_loss([outside], weights, masks) > 0.999
    half = torch.ones(2, 4, 5, requires_grad=True)
    loss = grounding_loss([half], weights, masks)
    assert abs(loss.item() - 0.75 ** 2) < 1e-6
    loss.backward()
    assert half.grad.abs().sum() > 0
    assert grounding_loss([half], torch.zeros(2, 5), masks) == 0


def test_targets_count_rows_without_boxes_and_phrases_missing_from_their_caption(tokenizer):
    rows = [
        {"text": CAPTION, "objects": [
            {"phrase": "a large red circle in the upper left", "box": [0, 0, .5, .5]},
            {"phrase": "a small blue bar on the right", "box": [.6, .4, 1, .6]}]},
        {"text": "a chest x-ray", "objects": []},
        {"text": "a small green ring at the top on a black background"},
        {"text": CAPTION, "objects": [{"phrase": "a purple square in the center", "box": [0, 0, 1, 1]}]},
    ]
    targets = grounding_targets(tokenizer, rows, (8, 4), weight=0.5)
    assert targets.counts == {"rows_grounded": 1, "rows_without_objects": 2, "phrases_not_in_caption": 1}
    assert targets.rows[1] is None and targets.rows[3] is None
    weights, masks = targets.batch(torch.tensor([0, 1, 0]), torch.tensor([True, True, False]), 77)
    assert weights[0].sum() == 9 and weights[1:].sum() == 0  # 5 + 4 words (one token each here)
    assert masks[8][0, 2].view(8, 8)[:4, :4].all() and masks[4].shape == (3, 77, 16)


def test_the_natural_set_carries_a_box_for_every_phrase(synthetic_dirs):
    rows = with_objects(synthetic_dirs["natural"], read_manifest(synthetic_dirs["natural"]))
    scenes = [r for r in rows if r["labels"]["kind"] == "scene"]
    assert scenes and all(r["objects"] == [] for r in rows if r["labels"]["kind"] == "radiograph")
    for row in scenes:
        assert [o["phrase"] for o in row["objects"]] == row["text"].split(" on a ")[0].split(" and ")
        for obj in row["objects"]:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_pretraining_refuses_a_natural_set_without_boxes(tmp_path, synthetic_dirs):
    """A natural set written before the boxes were (its job hash is the params', not the code's)
    must not pre-train an ungrounded miniature in silence."""
    import shutil

    from selora.errors import DatasetFormatError
    from selora.imagefolder import OBJECTS
    from selora.pretrain import pretrain_base

    old = tmp_path / "natural"
    shutil.copytree(synthetic_dirs["natural"], old)
    for path in old.glob(f"*/{OBJECTS}"):
        path.unlink()
    with pytest.raises(DatasetFormatError, match="grounding_weight"):
        pretrain_base(load_params(None), old, None, tmp_path / "m", progress=False)
