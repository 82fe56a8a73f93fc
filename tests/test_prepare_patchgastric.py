"""PatchGastricADC22: chosen subtypes, exact pairs per split, no slide in two splits."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_fixtures import PAPER_SUBTYPES, write_patchgastric

from selora.data import PrepareOptions, prepare
from selora.errors import ConfigError, DatasetFormatError
from selora.imagefolder import file_digest, read_manifest

SPLITS = {"train": 0.7, "validation": 0.1, "test": 0.2}


def _prepare(raw: Path, out: Path, **kw):
    opts = PrepareOptions(dataset="patchgastric", raw=raw, out=out, size=16, seed=kw.pop("seed", 0),
                          splits=SPLITS, subtypes=tuple(kw.pop("subtypes", PAPER_SUBTYPES)),
                          pairs_per_subtype=kw.pop("pairs", 10), **kw)
    return prepare(opts)[0]


def test_exact_pairs_per_subtype_and_split_no_slide_leak(tmp_path):
    exp = write_patchgastric(tmp_path / "raw")
    report = _prepare(tmp_path / "raw", tmp_path / "out")
    rows = read_manifest(tmp_path / "out")
    assert report["counts"] == {"train": 35, "validation": 5, "test": 10}
    for subtype in PAPER_SUBTYPES:
        per_split = {s: sum(r["labels"]["subtype"] == subtype for r in rows if r["split"] == s)
                     for s in SPLITS}
        assert per_split == {"train": 7, "validation": 1, "test": 2}
    slides = {s: {r["labels"]["slide"] for r in rows if r["split"] == s} for s in SPLITS}
    assert not (slides["train"] & slides["validation"] or slides["train"] & slides["test"]
                or slides["validation"] & slides["test"])
    for r in rows:  # pair = a patch of the slide + that slide's caption
        assert r["source_id"].split("_")[0] == r["labels"]["slide"]
        assert r["text"] == exp.extra["captions"][r["labels"]["slide"]]
    assert len({r["source_id"] for r in rows}) == len(rows)
    assert {s["source"]: s["reason"] for s in report["skipped"]} == exp.skipped
    assert report["excluded"]["subtype not chosen"] == 4 * 8  # the papillary slides
    assert report["excluded"]["patch of a skipped slide"] == 1
    assert report["excluded"]["not sampled"] == 5 * (4 * 8 - 10)


def test_corrupt_patches_are_listed_and_replaced(tmp_path):
    exp = write_patchgastric(tmp_path / "raw", slides=6, patches=10, quirks=False,
                             corrupt_subtype=PAPER_SUBTYPES[2])
    report = _prepare(tmp_path / "raw", tmp_path / "out", pairs=20)
    unreadable = {s["source"] for s in report["skipped"] if s["reason"] == "unreadable image"}
    assert unreadable and unreadable <= exp.extra["corrupt"]
    assert report["counts"] == {"train": 70, "validation": 10, "test": 20}
    assert not unreadable & {r["source_id"] for r in read_manifest(tmp_path / "out")}


def test_deterministic_per_seed_and_independent_of_other_subtypes(tmp_path):
    write_patchgastric(tmp_path / "raw", quirks=False)
    a = _prepare(tmp_path / "raw", tmp_path / "a")
    b = _prepare(tmp_path / "raw", tmp_path / "b")
    c = _prepare(tmp_path / "raw", tmp_path / "c", seed=1)
    assert a["split_hash"] == b["split_hash"] != c["split_hash"]
    assert file_digest(tmp_path / "a" / "train") == file_digest(tmp_path / "b" / "train")
    # Users may choose other subtypes; one subtype's draw does not depend on the others chosen.
    d = _prepare(tmp_path / "raw", tmp_path / "d", subtypes=[PAPER_SUBTYPES[3], "Papillary adenocarcinoma"])
    assert d["counts"] == {"train": 14, "validation": 2, "test": 4}

    def draw(root: Path, subtype: str) -> set[tuple[str, str]]:
        rows = read_manifest(root)
        return {(r["split"], r["source_id"]) for r in rows if r["labels"]["subtype"] == subtype}

    assert draw(tmp_path / "a", PAPER_SUBTYPES[3]) == draw(tmp_path / "d", PAPER_SUBTYPES[3])


def test_bad_choices_are_clear_errors(tmp_path):
    write_patchgastric(tmp_path / "raw", quirks=False)
    with pytest.raises(ConfigError, match=r"Signet ring cell carcinoma.*Papillary adenocarcinoma"):
        _prepare(tmp_path / "raw", tmp_path / "out", subtypes=["Signet ring cell carcinoma"])
    with pytest.raises(DatasetFormatError, match="too few for 100 pairs"):
        _prepare(tmp_path / "raw", tmp_path / "out", pairs=100)
    # The options' own declaration (datasets.patchgastric) binds values given outside a params file.
    with pytest.raises(ConfigError, match=r"datasets\.patchgastric\.pairs_per_subtype: -1 is less than"):
        _prepare(tmp_path / "raw", tmp_path / "out", pairs=-1)
    with pytest.raises(ConfigError, match=r"datasets\.patchgastric\.subtypes: \[\] should be non-empty"):
        _prepare(tmp_path / "raw", tmp_path / "out", subtypes=[])
    (tmp_path / "raw" / "captions.csv").write_text("id,text\nabc,x\n")
    with pytest.raises(DatasetFormatError, match=r"captions.csv: missing column\(s\) subtype"):
        _prepare(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_subtype_flags(tmp_path, capsys):
    from selora.cli import main

    write_patchgastric(tmp_path / "raw", quirks=False)
    code = main(["prepare", "--dataset", "patchgastric", "--raw", str(tmp_path / "raw"), "--size", "16",
                 "--subtype", PAPER_SUBTYPES[4], "--subtype", "Papillary adenocarcinoma",
                 "--pairs-per-subtype", "10", "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"])
    assert code == 0, capsys.readouterr().err
    rows = read_manifest(tmp_path / "out")
    assert {r["labels"]["subtype"] for r in rows} == {PAPER_SUBTYPES[4], "Papillary adenocarcinoma"}
    assert len(rows) == 20
