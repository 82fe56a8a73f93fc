"""IU X-Ray from both distributions: frontal selection, findings prompts, every quirk reported."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from raw_fixtures import iu_reports, write_iu

from selora.data import PrepareOptions, prepare
from selora.data.iuxray import load_views
from selora.errors import DatasetFormatError
from selora.imagefolder import read_manifest

SPLITS_224 = {"train": 0.8, "validation": 0.16, "test": 0.04}
SPLITS_384 = {"train": 0.7, "validation": 0.1, "test": 0.2}


def _prepare(raw: Path, out: Path, **kw):
    opts = PrepareOptions(dataset="iu-xray", raw=raw, out=out, size=16, seed=0,
                          splits=kw.pop("splits", SPLITS_224), **kw)
    return prepare(opts)[0]


def _entries(root: Path) -> list[dict]:
    """The manifest without the absolute paths (which name the output folder)."""
    return [{k: v for k, v in r.items() if k != "path"} for r in read_manifest(root)]


def _skips(report) -> dict[str, str]:
    return {s["source"]: s["reason"] for s in report["skipped"]}


@pytest.mark.parametrize("layout", ["nlm", "kaggle"])
def test_prompts_frontal_images_and_every_quirk(tmp_path, layout):
    exp = write_iu(tmp_path / "raw", layout)
    views = exp.extra["views"] if layout == "nlm" else None
    report = _prepare(tmp_path / "raw", tmp_path / "out", views=views)
    rows = read_manifest(tmp_path / "out")
    # One record per report: its findings (or the impression when findings are empty), XXXX kept.
    assert {r["source_id"]: r["text"] for r in rows} == exp.kept
    assert all("XXXX" in r["text"] for r in rows)
    by_id = {r["source_id"]: r for r in rows}
    assert by_id[f"CXR{len(iu_reports(30)) + 1}"]["labels"]["text_source"] == "impression"
    assert by_id["CXR1"]["labels"] == {"uid": "CXR1", "projection": "PA" if views else "Frontal",
                                       "text_source": "findings"}
    # The kept image is the report's frontal one, whatever its position in the report.
    for r in rows:
        frontal = exp.extra["frontal"][r["source_id"]]
        assert r["image_id"] == (frontal if layout == "nlm" else frontal.removeprefix("CXR") + ".dcm.png")
    # Every dropped report is one entry keyed by its uid (or its XML file when it has none).
    assert _skips(report) == exp.skipped
    assert len(report["skipped"]) == len(exp.skipped)
    lateral_only = next(s for s in report["skipped"] if s["source"] == exp.extra["lateral_only"])
    assert lateral_only["reason"] == "no frontal image" and len(lateral_only["images"]) == 1
    assert all("images" in s for s in report["skipped"] if s["source"].startswith("CXR"))
    # An unreadable first frontal image falls back to the report's next one (checked above: the
    # kept image is exp.extra["frontal"], the second); the first is counted, not listed.
    assert report["excluded"]["unreadable image; the record's next image was used"] == 1
    assert report["excluded"]["lateral view"] >= 30
    # Images counted in one unit; the views the table lacks are told apart from blank ones.
    if layout == "nlm":
        assert report["excluded"]["view unknown: blank view in the view table"] == 1
        assert report["excluded"]["view unknown: not in the view table"] == 1
    else:
        assert report["excluded"]["view unknown: blank projection"] == 1
        assert report["excluded"]["view unknown: value not recognised"] == 1  # "Oblique"
    assert "Frontal images" in " ".join(report["notes"])
    md = (tmp_path / "out" / "data_report.md").read_text()
    assert f"- {len(exp.skipped)} records skipped" in md
    assert f"- {sum(report['excluded'].values())} further images not used" in md


def test_both_distributions_give_the_same_records_and_splits(tmp_path):
    write_iu(tmp_path / "nlm", "nlm", quirks=False)
    write_iu(tmp_path / "kaggle", "kaggle", quirks=False)
    a = _prepare(tmp_path / "nlm", tmp_path / "a", views=tmp_path / "nlm-views.csv")
    b = _prepare(tmp_path / "kaggle", tmp_path / "b")
    rows_a, rows_b = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert {(r["source_id"], r["split"], r["text"]) for r in rows_a} == \
        {(r["source_id"], r["split"], r["text"]) for r in rows_b}
    assert a["counts"] == b["counts"] == {"train": 24, "validation": 5, "test": 1}


def test_nlm_without_view_table_uses_the_first_image_and_says_so(tmp_path):
    exp = write_iu(tmp_path / "raw", "nlm", quirks=False)
    report = _prepare(tmp_path / "raw", tmp_path / "out")
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 30
    assert all(r["image_id"] == exp.extra["first"][r["source_id"]] for r in rows)
    # Odd reports list the lateral first: the rule's known weakness, stated in the report.
    assert sum(r["image_id"] != exp.extra["frontal"][r["source_id"]] for r in rows) == 15
    assert any("NO VIEW TABLE" in n for n in report["notes"])
    assert "NO VIEW TABLE" in (tmp_path / "out" / "data_report.md").read_text()
    assert report["excluded"] == {"not the first image of its report (first-image rule)": 30}


def test_the_no_view_table_warning_reaches_the_console(tmp_path, capsys):
    from selora.cli import main

    write_iu(tmp_path / "raw", "nlm", n=6, quirks=False)
    code = main(["prepare", "--dataset", "iu-xray", "--raw", str(tmp_path / "raw"), "--size", "16",
                 "--splits", "train=0.5,test=0.5", "--out", str(tmp_path / "out"), "--quiet",
                 "--set", "seed=0"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: Frontal images: NO VIEW TABLE" in err and "torchxrayvision" in err
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert any("NO VIEW TABLE" in w for w in report["warnings"])
    assert "**Warning**: Frontal images: NO VIEW TABLE" in (tmp_path / "out" / "data_report.md").read_text()


def test_a_missing_view_table_says_where_to_get_one(tmp_path):
    write_iu(tmp_path / "raw", "nlm", n=4, quirks=False)
    with pytest.raises(DatasetFormatError, match=r"does not exist.*torchxrayvision.*null"):
        _prepare(tmp_path / "raw", tmp_path / "out", views=tmp_path / "raw" / "nlmcxr_tsne_pa.csv.gz")


def test_view_table_formats(tmp_path):
    # torchxrayvision's t-SNE table (gzip) labels only first images: the other image of a pair whose
    # first is lateral is frontal by elimination.
    tsne = tmp_path / "tsne.csv.gz"
    with gzip.open(tsne, "wt") as f:
        f.write("imageid,tsne-view\nCXR1_a,PA\nCXR2_a,L\n")
    views, _ = load_views(tsne)
    assert views["CXR1_a"] == ("frontal", "PA") and views["CXR2_a"] == ("lateral", "L")
    # Kaggle's projections table keys NLM ids both ways the two distributions name files.
    kaggle = tmp_path / "indiana_projections.csv"
    kaggle.write_text("uid,filename,projection\n1,1_IM-0001-4001.dcm.png,Frontal\n2,2_IM-0652-1001.dcm.png,Lateral\n")
    views, _ = load_views(kaggle)
    assert views["CXR1_1_IM-0001-4001"][0] == "frontal" and views["CXR2_IM-0652-1001"][0] == "lateral"
    bad = tmp_path / "bad.csv"
    bad.write_text("image,view\nx,PA\n")
    with pytest.raises(DatasetFormatError, match="image-id column"):
        load_views(bad)


def test_frontal_by_elimination_with_a_first_image_only_table(tmp_path):
    exp = write_iu(tmp_path / "raw", "nlm", quirks=False)
    table = tmp_path / "tsne.csv"
    frontal = exp.extra["frontal"]
    table.write_text("imageid,tsne-view\n" + "".join(
        f"{first},{'PA' if first == frontal[uid] else 'L'}\n" for uid, first in exp.extra["first"].items()))
    _prepare(tmp_path / "raw", tmp_path / "out", views=table)
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 30 and all(r["image_id"] == exp.extra["frontal"][r["source_id"]] for r in rows)
    assert {r["labels"]["projection"] for r in rows} == {"PA", "frontal by elimination"}


def test_bad_layouts_are_clear_errors(tmp_path):
    with pytest.raises(DatasetFormatError, match="does not exist"):
        _prepare(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match=r"indiana_reports\.csv"):
        _prepare(tmp_path / "empty", tmp_path / "out")
    write_iu(tmp_path / "k", "kaggle", n=4, quirks=False)
    text = (tmp_path / "k" / "indiana_reports.csv").read_text().replace("findings", "finding")
    (tmp_path / "k" / "indiana_reports.csv").write_text(text)
    with pytest.raises(DatasetFormatError, match=r"indiana_reports.csv: missing column\(s\) findings"):
        _prepare(tmp_path / "k", tmp_path / "out")
    (tmp_path / "k" / "indiana_projections.csv").unlink()
    with pytest.raises(DatasetFormatError, match=r"indiana_projections\.csv is not"):
        _prepare(tmp_path / "k", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_takes_raw_and_view_table_from_params_and_the_384_split(tmp_path, capsys):
    from selora.cli import main

    exp = write_iu(tmp_path / "raw", "nlm", quirks=False)
    code = main(["prepare", "--dataset", "iu-xray", "--size", "384", "--out", str(tmp_path / "out"),
                 "--quiet", "--set", f"datasets.iu-xray.raw={tmp_path / 'raw'}",
                 "--set", f"datasets.iu-xray.views={exp.extra['views']}"])
    assert code == 0, capsys.readouterr().err
    rows = read_manifest(tmp_path / "out")
    assert [sum(r["split"] == s for r in rows) for s in ("train", "validation", "test")] == [21, 3, 6]
    assert all(r["image_id"] == exp.extra["frontal"][r["source_id"]] for r in rows)


def test_record_cap_uses_a_seeded_subset_and_reports_every_parsed_records_prompts(tmp_path, capsys):
    """`max_records`: read every report, train on a few. The subset is drawn in a seeded random order
    (not the first ids), counted in records (used + skipped while decoding + left out = parsed), and
    the report keeps the prompt lengths of every parsed record, as an uncapped run gives them."""
    exp = write_iu(tmp_path / "raw", "nlm", quirks=False)
    views = exp.extra["views"]
    full = _prepare(tmp_path / "raw", tmp_path / "full", views=views)
    capped = _prepare(tmp_path / "raw", tmp_path / "a", views=views, max_records=10, splits=SPLITS_384)
    rows = read_manifest(tmp_path / "a")
    assert len(rows) == 10 and sum(capped["counts"].values()) == 10
    assert all(exp.kept[r["source_id"]] == r["text"] for r in rows)
    ids = sorted(int(r["source_id"].removeprefix("CXR")) for r in rows)
    assert ids != list(range(1, 11)), "the cap must not keep just the first reports"
    cap = capped["record_cap"]
    assert (cap["max_records"], cap["parsed_records"], cap["used"]) == (10, 30, 10)
    assert cap["used"] + cap["skipped_while_decoding"] + cap["left_out"] == cap["parsed_records"]
    assert cap["prompt_words"] == full["prompt_words"]["all"]  # every parsed record's, not the 10
    assert capped["prompt_words"]["all"]["n"] == 10
    md = (tmp_path / "a" / "data_report.md").read_text()
    assert "record cap (max_records 10): 10 of 30 parsed records used" in md
    assert "every parsed record (before the cap)" in md
    # Deterministic: the same seed draws the same subset, another seed another one.
    _prepare(tmp_path / "raw", tmp_path / "b", views=views, max_records=10, splits=SPLITS_384)
    assert _entries(tmp_path / "b") == _entries(tmp_path / "a")
    other = PrepareOptions(dataset="iu-xray", raw=tmp_path / "raw", out=tmp_path / "c", size=16, seed=1,
                           splits=SPLITS_384, views=views, max_records=10)
    prepare(other)
    assert {r["source_id"] for r in read_manifest(tmp_path / "c")} != {r["source_id"] for r in rows}
    # A cap at or above the record count changes nothing but the recorded option.
    _prepare(tmp_path / "raw", tmp_path / "d", views=views, max_records=30)
    assert _entries(tmp_path / "d") == _entries(tmp_path / "full")
    assert "record_cap" not in json.loads((tmp_path / "d" / "data_report.json").read_text())


def test_record_cap_from_the_setup_or_the_flag_and_a_clear_error_for_patchgastric(tmp_path, capsys):
    from selora.cli import main

    exp = write_iu(tmp_path / "raw", "nlm", quirks=False)
    base = ["prepare", "--setup", "iu-xray-384", "--params", "params-paper.yaml", "--quiet",
            "--set", f"datasets.iu-xray.raw={tmp_path / 'raw'}",
            "--set", f"datasets.iu-xray.views={exp.extra['views']}",
            "--tokenizer", str(tmp_path / "none")]
    assert main([*base, "--out", str(tmp_path / "a"), "--set", "setups.iu-xray-384.max_records=12"]) == 0
    assert len(read_manifest(tmp_path / "a")) == 12
    out = capsys.readouterr().out
    assert "record cap: 12 of 30 parsed records used (max_records 12)" in out
    assert main([*base, "--out", str(tmp_path / "b"), "--set", "setups.iu-xray-384.max_records=12",
                 "--max-records", "7"]) == 0  # the flag wins
    assert len(read_manifest(tmp_path / "b")) == 7
    capsys.readouterr()
    code = main(["prepare", "--dataset", "patchgastric", "--raw", str(tmp_path / "raw"), "--max-records", "3",
                 "--out", str(tmp_path / "pg"), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "pairs_per_subtype" in err and "Traceback" not in err
