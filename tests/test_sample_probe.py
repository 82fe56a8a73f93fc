"""The sample probe (selora.probes.sample_probe): what the miniature draws, read off the pixels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from selora.probes import _phrase, plain_probe_scenes, read_object, sample_probe
from selora.synthetic.natural import BACKGROUNDS

SIZE = 32


def _plain_scenes(n: int, seed: int = 0) -> tuple[np.ndarray, list[dict[str, str]], list[str]]:
    return plain_probe_scenes(n, SIZE, seed)


class _Drawer:
    """A stand-in pipeline that "draws" the real scene of each prompt, or of another prompt."""

    def __init__(self, shift: int = 0):
        self.vae = SimpleNamespace(config=SimpleNamespace(sample_size=SIZE))
        self.shift = shift

    def __call__(self, prompts, **kwargs):
        images, labels, rests = _plain_scenes(len(prompts), seed=kwargs["generator"].initial_seed())
        assert prompts == [_phrase(lab) + rest for lab, rest in zip(labels, rests, strict=True)]
        return SimpleNamespace(images=np.roll(images, self.shift, axis=0) / 255.0)


def test_the_reader_names_what_the_real_scenes_show():
    """On 128 held-out single-object scenes drawn by the natural set's own renderer (position
    jitter, size jitter, blur, pixel noise): measured 0.98–1.00 per attribute; a reader that mixed
    up a coordinate or a colour would fall to chance on that attribute."""
    images, labels, _ = _plain_scenes(128, seed=7)
    reads = [read_object(img / 255.0) for img in images]
    for attribute in ("colour", "shape", "position"):
        acc = np.mean([r is not None and r[attribute] == lab[attribute]
                       for r, lab in zip(reads, labels, strict=True)])
        assert acc >= 0.95, (attribute, acc)


def test_the_reader_finds_nothing_on_a_bare_background():
    bare = np.broadcast_to(np.array(BACKGROUNDS["gray"], dtype=np.float32) / 255, (SIZE, SIZE, 3))
    assert read_object(bare.copy()) is None


def test_a_drawer_that_follows_its_captions_scores_the_readers_ceiling_and_one_that_does_not_chance():
    faithful = sample_probe(_Drawer(), n=64, seed=0)
    assert faithful["reader"]["shape"] >= 0.95
    for attribute in ("colour", "shape", "position"):
        assert faithful[attribute] == faithful["reader"][attribute]
    # Perfect scenes, each for another caption: what a caption-blind model that draws well scores.
    blind = sample_probe(_Drawer(shift=1), n=64, seed=0)
    for attribute in ("colour", "shape", "position"):
        assert blind[attribute] <= blind["chance"][attribute] + 0.25, (attribute, blind)
    assert blind["reader"] == faithful["reader"]


@pytest.mark.parametrize("attribute", ["colour", "shape", "position"])
def test_chance_is_one_over_the_probed_words(attribute):
    probe = sample_probe(_Drawer(), n=8, seed=0)
    words = {"colour": 4, "shape": 5, "position": 9}[attribute]
    assert probe["chance"][attribute] == pytest.approx(1 / words)
