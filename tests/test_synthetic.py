"""The embedded synthetic data: deterministic, manifest = files, HF-loadable, findings visible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selora.config import load_params
from selora.imagefolder import file_digest, read_manifest, split_counts
from selora.splits import assign_group_splits, assign_splits, split_sizes
from selora.synthetic import make_cxr, make_natural
from selora.synthetic.cxr import FINDINGS, sample_findings, write_report


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    p = load_params(None, ["synthetic.cxr.n_images=12", "synthetic.natural.n_images=12"])
    make_cxr(p.synthetic.cxr, tmp_path / "a", seed=3, progress=False)
    make_cxr(p.synthetic.cxr, tmp_path / "b", seed=3, progress=False)
    make_cxr(p.synthetic.cxr, tmp_path / "c", seed=4, progress=False)
    assert file_digest(tmp_path / "a") == file_digest(tmp_path / "b")
    assert file_digest(tmp_path / "a") != file_digest(tmp_path / "c")
    make_natural(p.synthetic.natural, tmp_path / "n1", seed=3, progress=False)
    make_natural(p.synthetic.natural, tmp_path / "n2", seed=3, progress=False)
    assert file_digest(tmp_path / "n1") == file_digest(tmp_path / "n2")


@pytest.mark.parametrize("which", ["natural", "cxr"])
def test_manifest_matches_files_and_split_sizes(synthetic_dirs, small_params, which):
    root = synthetic_dirs[which]
    rows = read_manifest(root)
    cfg = getattr(small_params.synthetic, which)
    assert split_counts(rows) == split_sizes(cfg.n_images, cfg.splits.as_dict())
    listed = {(r["split"], r["file_name"]) for r in rows}
    on_disk = {(p.parent.name, p.name) for p in root.glob("*/*.png")}
    assert listed == on_disk
    assert len({r["source_id"] for r in rows}) == len(rows)
    with Image.open(rows[0]["path"]) as im:
        assert im.mode == "RGB" and im.size == (cfg.size, cfg.size)


def test_loads_with_hugging_face_imagefolder(synthetic_dirs):
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(synthetic_dirs["cxr"]))
    assert set(ds) == {"train", "validation", "test"}
    row = ds["test"][0]
    assert row["split"] == "test" and isinstance(row["text"], str) and row["text"]
    assert set(row["labels"]) == set(FINDINGS)
    assert sum(len(ds[s]) for s in ds) == 120


def test_report_text_states_exactly_the_drawn_findings():
    for i in range(300):
        rng = np.random.default_rng([0, i])
        f = sample_findings(rng)
        text = write_report(f, rng).lower()
        assert ("enlarged" in text or "cardiomegaly" in text) == (f["heart"] == "enlarged")
        assert ("pacemaker" in text) == (f["device"] == "pacemaker")
        has_ptx = "pneumothorax." in text and "no pneumothorax" not in text and "or pneumothorax" not in text
        assert has_ptx == (f["pneumothorax"] != "none"), text
        if f["nodule"] != "none":
            assert f"{f['nodule']} lobe" in text
        if f["effusion"] in ("left", "right"):
            assert f"{f['effusion']} " in text and "effusion" in text
        if f["effusion"] == "none":
            assert "no pleural effusion" in text or "no pneumothorax or pleural effusion" in text


def _region_mean(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> float:
    h, w = img.shape
    return float(img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)].mean())


def test_findings_are_visible_in_the_images(tmp_path):
    """The report decides what is drawn: simple pixel statistics separate each finding."""
    p = load_params(None, ["synthetic.cxr.n_images=240", "synthetic.cxr.size=32"])
    make_cxr(p.synthetic.cxr, tmp_path / "cxr", seed=0, progress=False)
    rows = read_manifest(tmp_path / "cxr")
    imgs = [np.asarray(Image.open(r["path"]).convert("L"), dtype=np.float32) for r in rows]

    def separation(key, match, region):
        pairs = list(zip(imgs, rows, strict=True))
        yes = [_region_mean(i, *region) for i, r in pairs if match(r["labels"][key])]
        no = [_region_mean(i, *region) for i, r in pairs if not match(r["labels"][key])]
        assert len(yes) >= 5 and len(no) >= 5
        return np.mean(yes) - np.mean(no)

    # Patient's left = image right.
    assert separation("heart", lambda v: v == "enlarged", (0.62, 0.78, 0.5, 0.72)) > 15
    assert separation("effusion", lambda v: v in ("left", "bilateral"), (0.6, 0.8, 0.58, 0.72)) > 15
    assert separation("effusion", lambda v: v in ("right", "bilateral"), (0.2, 0.4, 0.58, 0.72)) > 15
    assert separation("device", lambda v: v == "pacemaker", (0.75, 0.9, 0.12, 0.26)) > 15
    assert separation("pneumothorax", lambda v: v == "right", (0.16, 0.26, 0.25, 0.55)) < -5


def test_split_helpers_are_exact_deterministic_and_group_safe():
    assert split_sizes(100, {"train": 0.8, "validation": 0.16, "test": 0.04}) == {
        "train": 80, "validation": 16, "test": 4}
    a = assign_splits(50, {"train": 0.7, "validation": 0.1, "test": 0.2}, seed=1)
    assert a == assign_splits(50, {"train": 0.7, "validation": 0.1, "test": 0.2}, seed=1)
    assert a != assign_splits(50, {"train": 0.7, "validation": 0.1, "test": 0.2}, seed=2)
    assert (a.count("train"), a.count("validation"), a.count("test")) == (35, 5, 10)
    groups = [f"slide{i % 23}" for i in range(400)]
    g = assign_group_splits(groups, {"train": 0.7, "validation": 0.1, "test": 0.2}, seed=0)
    by_group: dict[str, set] = {}
    for grp, s in zip(groups, g, strict=True):
        by_group.setdefault(grp, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    assert abs(g.count("train") / 400 - 0.7) < 0.1


def test_natural_set_holds_its_share_of_generic_radiographs_with_one_label_schema(tmp_path):
    """SD 1.5 saw radiographs among its web images; the miniature's natural set holds
    ``radiographs`` of them, captioned as radiographs but never with a finding, so the base model
    knows what a chest x-ray looks like but not which report words go with which finding."""
    import datasets

    from selora.synthetic import is_radiograph
    from selora.synthetic.cxr import RADIOGRAPH_CAPTIONS

    assert sum(is_radiograph(i, 0.15) for i in range(4000)) == 600
    assert not any(is_radiograph(i, 0.0) for i in range(100))
    p = load_params(None, ["synthetic.natural.n_images=40", "synthetic.natural.radiographs=0.25"])
    make_natural(p.synthetic.natural, tmp_path / "n", seed=0, progress=False)
    rows = read_manifest(tmp_path / "n")
    radiographs = [r for r in rows if r["labels"]["kind"] == "radiograph"]
    assert len(radiographs) == 10
    assert {r["text"] for r in radiographs} <= set(RADIOGRAPH_CAPTIONS)
    for r in radiographs:
        rgb = np.asarray(Image.open(r["path"]), dtype=np.int16)
        assert np.abs(rgb[..., 0] - rgb[..., 2]).max() == 0  # grayscale, stored as RGB like the rest
    scenes = [r for r in rows if r["labels"]["kind"] == "scene"]
    assert all(" on a " in r["text"] and r["labels"]["shape"] != "none" for r in scenes)
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "n"))
    assert sum(len(ds[s]) for s in ds) == 40


def test_the_findings_param_chooses_what_varies_and_a_fixed_style_says_each_finding_one_way(tmp_path):
    """``synthetic.cxr.findings`` decides which findings vary (the rest stay normal, and the
    reader leaves them out: a constant read right would inflate the finding accuracy);
    ``report_style: fixed`` makes the report a function of the findings alone."""
    from selora.metrics.reference import label_schema

    two = ["synthetic.cxr.n_images=60", "synthetic.cxr.size=32",
           "synthetic.cxr.findings={heart: {normal: 0.5, enlarged: 0.5}, "
           "device: {none: 0.4, pacemaker: 0.6}}"]
    texts = {}
    for style in ("fixed", "varied"):
        p = load_params(None, [*two, f"synthetic.cxr.report_style={style}"])
        make_cxr(p.synthetic.cxr, tmp_path / style, seed=0, progress=False)
        rows = read_manifest(tmp_path / style)
        assert all(r["labels"][k] == "none" for r in rows for k in ("effusion", "nodule", "pneumothorax"))
        assert {r["labels"]["heart"] for r in rows} == {"normal", "enlarged"}
        assert {r["labels"]["device"] for r in rows} == {"none", "pacemaker"}
        assert label_schema("synthetic-cxr", rows) == {"heart": ("normal", "enlarged"),
                                                       "device": ("none", "pacemaker")}
        by_case: dict[tuple[str, str], set[str]] = {}
        for r in rows:
            by_case.setdefault((r["labels"]["heart"], r["labels"]["device"]), set()).add(r["text"])
        texts[style] = by_case
    assert all(len(t) == 1 for t in texts["fixed"].values()) and len(texts["fixed"]) == 4
    assert max(len(t) for t in texts["varied"].values()) >= 3
    # The images and labels are the same either way; only the words differ.
    fixed, varied = read_manifest(tmp_path / "fixed"), read_manifest(tmp_path / "varied")
    assert [r["labels"] for r in fixed] == [r["labels"] for r in varied]
    assert all(Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()
               for a, b in zip(fixed, varied, strict=True))
    # The default varies all five (the realistic set).
    assert set(load_params(None).synthetic.cxr.findings) == set(FINDINGS)
