"""`selora prepare`: output format, determinism, reruns, CLI flags/setups, tokens, pre-processing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from raw_fixtures import write_iu, write_montgomery, write_patchgastric

from selora.cli import main
from selora.data import PrepareOptions, default_splits, parse_splits, prepare
from selora.data.images import preprocess, resize_center_crop
from selora.errors import ConfigError
from selora.imagefolder import SPLITS, file_digest, read_manifest
from selora.splits import split_sizes


def _opts(dataset: str, raw: Path, out: Path, **kw) -> PrepareOptions:
    size = kw.pop("size", 16)
    return PrepareOptions(dataset=dataset, raw=raw, out=out, size=size, seed=kw.pop("seed", 0),
                          splits=kw.pop("splits", default_splits(dataset, size)), **kw)


def _split_digest(root: Path) -> dict[str, str]:
    return {s: file_digest(root / s) for s in SPLITS if (root / s).is_dir()}


# ----------------------------------------------------------------------------- pre-processing
def test_resize_shortest_side_then_centre_crop():
    # 40 wide × 80 high: columns left/right halves differ, rows: top quarter red, bottom quarter blue.
    arr = np.zeros((80, 40, 3), np.uint8)
    arr[:20, :, 0] = 255
    arr[60:, :, 2] = 255
    arr[20:60, :, 1] = 255
    out = np.asarray(resize_center_crop(Image.fromarray(arr), 16))
    assert out.shape == (16, 16, 3)
    assert out[:, :, 1].min() > 200 and out[:, :, 0].max() < 60  # only the green middle survives the crop


def test_sixteen_bit_and_palette_images_become_eight_bit_rgb(tmp_path):
    ramp = (np.linspace(0, 4095, 64 * 48).reshape(48, 64)).astype(np.uint16)  # a 12-bit radiograph
    Image.fromarray(ramp).save(tmp_path / "a.png")
    out = np.asarray(preprocess(str(tmp_path / "a.png"), 32))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out.max() > 200 and out.min() < 60 and 80 < out.mean() < 175  # scaled, not clipped to white
    Image.fromarray(np.arange(48 * 64, dtype=np.uint8).reshape(48, 64) % 7, mode="L").convert("P").save(
        tmp_path / "p.png")
    assert np.asarray(preprocess(str(tmp_path / "p.png"), 16)).shape == (16, 16, 3)


# ----------------------------------------------------------------------------- output format
def test_output_loads_with_hugging_face_imagefolder(tmp_path):
    import datasets

    write_iu(tmp_path / "iu", "kaggle")
    write_montgomery(tmp_path / "mc")
    prepare(_opts("iu-xray", tmp_path / "iu", tmp_path / "iu-out"))
    prepare(_opts("montgomery", tmp_path / "mc", tmp_path / "mc-out"))
    iu = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "iu-out"))
    assert set(iu) == {"train", "validation", "test"}
    assert sum(len(iu[s]) for s in iu) == len(read_manifest(tmp_path / "iu-out"))
    mc = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "mc-out"))
    assert set(mc) == {"train", "test"}  # the data report files are not taken for data
    row = mc["test"][0]
    assert row["image"].size == (16, 16) and row["image"].mode == "RGB"
    assert row["text"].startswith("age:") and set(row["labels"]) == {"tb", "sex", "age", "no_report"}
    report = json.loads((tmp_path / "mc-out" / "data_report.json").read_text())
    assert report["provenance"]["command"] == "selora prepare"


def test_same_seed_same_output_any_worker_count_and_other_seed_differs(tmp_path):
    write_montgomery(tmp_path / "raw", 16, 10)
    a, _ = prepare(_opts("montgomery", tmp_path / "raw", tmp_path / "a", workers=1))
    b, _ = prepare(_opts("montgomery", tmp_path / "raw", tmp_path / "b", workers=2))
    c, _ = prepare(_opts("montgomery", tmp_path / "raw", tmp_path / "c", seed=5))
    assert _split_digest(tmp_path / "a") == _split_digest(tmp_path / "b")
    assert a["split_hash"] == b["split_hash"] != c["split_hash"]
    assert a["counts"] == c["counts"]


def test_rerun_is_a_no_op_until_an_input_changes(tmp_path):
    write_montgomery(tmp_path / "raw", 8, 4, quirks=False)
    opts = _opts("montgomery", tmp_path / "raw", tmp_path / "out")
    first, written = prepare(opts)
    assert written
    stamp = (tmp_path / "out" / "data_report.json").stat().st_mtime_ns
    again, written = prepare(opts)
    assert not written and again["split_hash"] == first["split_hash"]
    assert (tmp_path / "out" / "data_report.json").stat().st_mtime_ns == stamp
    reading = next((tmp_path / "raw" / "MontgomerySet" / "ClinicalReadings").glob("*_1.txt"))
    reading.write_text("Patient's Sex: M\nPatient's Age: 070Y\nnew findings.\n")
    _, written = prepare(opts)
    rows = read_manifest(tmp_path / "out")
    assert written and any(r["text"].endswith("findings:new findings.") for r in rows)


def test_a_failed_run_leaves_nothing_behind(tmp_path):
    write_patchgastric(tmp_path / "raw", quirks=False, corrupt_subtype="Papillary adenocarcinoma")
    opts = _opts("patchgastric", tmp_path / "raw", tmp_path / "out",
                 subtypes=("Papillary adenocarcinoma",), pairs_per_subtype=20)
    with pytest.raises(Exception, match="usable images"):  # half of its 32 patches are corrupt
        prepare(opts)
    assert os.listdir(tmp_path) == ["raw"]


def test_synthetic_set_is_resplit_and_resized_with_its_labels(tmp_path, synthetic_dirs):
    source = {r["source_id"]: r for r in read_manifest(synthetic_dirs["cxr"])}
    report, _ = prepare(_opts("synthetic-cxr", synthetic_dirs["cxr"], tmp_path / "out", size=16, seed=3))
    rows = read_manifest(tmp_path / "out")
    assert report["counts"] == split_sizes(len(source), {"train": 0.7, "validation": 0.1, "test": 0.2})
    for r in rows:
        assert r["labels"] == source[r["source_id"]]["labels"] and r["text"] == source[r["source_id"]]["text"]
    with Image.open(rows[0]["path"]) as im:
        assert im.size == (16, 16)
    assert {r["source_id"] for r in rows if r["split"] == "test"} != \
        {k for k, r in source.items() if r["split"] == "test"}  # re-split, not copied


# ----------------------------------------------------------------------------- prompt lengths
def test_token_counts_with_the_base_tokenizer_and_without_one(tmp_path):
    from selora.tinysd import train_tokenizer

    write_montgomery(tmp_path / "raw", 8, 4, quirks=False)
    long = " ".join(f"finding{i} in zone {i}." for i in range(40))
    (tmp_path / "raw" / "MontgomerySet" / "ClinicalReadings" / "MCUCXR_0012_1.txt").write_text(
        f"Patient's Sex: M\nPatient's Age: 042Y\n{long}\n")
    tok = train_tokenizer(["normal findings cavity lobe"], 400, 77)
    tok.save_pretrained(tmp_path / "model" / "tokenizer")
    raw = tmp_path / "raw"
    report, _ = prepare(_opts("montgomery", raw, tmp_path / "out", tokenizer=str(tmp_path / "model")))
    rows = read_manifest(tmp_path / "out")
    for r in rows:
        assert r["n_tokens"] == len(tok(r["text"])["input_ids"])
    stats = report["prompt_tokens"]["all"]
    assert stats["over_limit"] == sum(r["n_tokens"] > 77 for r in rows) == 1
    assert stats["max"] == max(r["n_tokens"] for r in rows)
    none, _ = prepare(_opts("montgomery", raw, tmp_path / "out2", tokenizer=str(tmp_path / "nope")))
    assert "prompt_tokens" not in none and "cannot load a tokenizer" in none["tokenizer"]["note"]
    assert "n_tokens" not in read_manifest(tmp_path / "out2")[0]
    assert "Token counts unavailable" in (tmp_path / "out2" / "data_report.md").read_text()


@pytest.mark.parametrize("kind", ["uncached hub id", "no model_max_length", "broken vocab"])
def test_a_tokenizer_that_loads_empty_or_without_a_limit_gives_no_counts_and_says_why(tmp_path, capsys, kind):
    """Offline, transformers loads an uncached hub id as an empty tokenizer (2 entries, limit 1e30);
    a folder without model_max_length loads with the same 1e30. Neither may yield token counts."""
    from selora.tinysd import train_tokenizer

    write_montgomery(tmp_path / "raw", 4, 2, quirks=False)
    source = "selora-tests/not-a-cached-model"
    if kind != "uncached hub id":
        source = str(tmp_path / "tok")
        train_tokenizer(["normal findings"], 300, 77).save_pretrained(source)
        config = Path(source) / "tokenizer_config.json"
        if kind == "no model_max_length":
            data = json.loads(config.read_text())
            del data["model_max_length"]
            config.write_text(json.dumps(data))
        else:
            (Path(source) / "vocab.json").write_text("{not json")
            for extra in Path(source).glob("tokenizer.json"):
                extra.unlink()
    why = {"uncached hub id": "", "no model_max_length": "no usable model_max_length (1e+30",
           "broken vocab": "cannot load a tokenizer"}[kind]
    code = main(["prepare", "--dataset", "montgomery", "--raw", str(tmp_path / "raw"), "--out",
                 str(tmp_path / "out"), "--tokenizer", source, "--quiet", "--set", "seed=0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert "prompt_tokens" not in report and report["tokenizer"]["max_length"] is None
    note = report["tokenizer"]["note"]
    assert why in note and (kind != "uncached hub id" or "empty" in note or "cannot load" in note)
    assert f"warning: no token counts: {note}" in out.err and "Traceback" not in out.err
    assert "prompt tokens" not in out.out
    assert "Token counts unavailable" in (tmp_path / "out" / "data_report.md").read_text()


def test_markdown_without_a_token_limit_has_no_over_limit_column():
    from selora.data.report import length_stats, to_markdown

    config = {"dataset": "montgomery", "raw": "r", "size": 16, "seed": 0, "splits": {"train": 1.0}}
    report = {"config": config,
              "layout": "official", "split_hash": "x", "total": 3, "counts": {"train": 3},
              "prompt_tokens": {"all": length_stats([5, 80, 9], None)}, "prompt_words": {},
              "tokenizer": {"source": "t", "max_length": None, "note": ""}, "labels": {}, "notes": [],
              "excluded": {}, "skipped": [], "skip_counts": {}}
    md = to_markdown(report)
    assert "| all | 3 | 5 | 9 |" in md and "> " not in md.split("## Prompt lengths")[1].split("##")[0]


# ----------------------------------------------------------------------------- CLI
def test_cli_setup_from_params_and_flags_override(tmp_path, capsys):
    write_montgomery(tmp_path / "raw", 12, 8, quirks=False)
    params = {
        "seed": 4,
        "datasets": {"montgomery": {"raw": str(tmp_path / "raw")}},
        "setups": {"mc-24": {"dataset": "montgomery", "size": 24, "splits": {"train": 0.8, "test": 0.2},
                             "batch_size": 2, "epochs": 1}},
        "experiment": {"setups": ["mc-24"], "ablation": {"setups": ["mc-24"]}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = main(["prepare", "--params", str(tmp_path / "params.yaml"), "--setup", "mc-24",
                 "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    out = out.out
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert code == 0 and f"split hash: {report['split_hash']}" in out
    assert report["config"]["size"] == 24 and report["config"]["seed"] == 4
    assert report["counts"] == {"train": 16, "test": 4}
    code = main(["prepare", "--params", str(tmp_path / "params.yaml"), "--setup", "mc-24", "--size", "32",
                 "--seed", "1", "--splits", "train=0.5,test=0.5", "--out", str(tmp_path / "o2"), "--quiet"])
    report = json.loads((tmp_path / "o2" / "data_report.json").read_text())
    assert code == 0 and report["config"]["size"] == 32 and report["counts"] == {"train": 10, "test": 10}


@pytest.mark.parametrize(("argv", "message"), [
    (["--dataset", "montgomery", "--size", "20"], "multiple of 8"),
    (["--dataset", "montgomery", "--raw", "{tmp}/none"], "does not exist"),
    (["--dataset", "montgomery", "--splits", "train=0.8,val=0.2"], "unknown split"),
    (["--dataset", "montgomery", "--splits", "train=0.8,test=0.1"], "sum to 1"),
    (["--setup", "nope"], "unknown setup 'nope'"),
    (["--dataset", "iu-xray"], "no raw data folder for iu-xray"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    write_montgomery(tmp_path / "raw", 4, 2, quirks=False)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--raw" not in argv and "iu-xray" not in argv:
        argv += ["--raw", str(tmp_path / "raw")]
    code = main(["prepare", *argv, "--out", str(tmp_path / "out"), "--set", "seed=0"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_paper_splits_by_data_set_and_size():
    assert default_splits("iu-xray", 224) == {"train": 0.8, "validation": 0.16, "test": 0.04}
    assert default_splits("iu-xray", 384) == {"train": 0.7, "validation": 0.1, "test": 0.2}
    assert default_splits("montgomery", 224) == {"train": 0.8, "test": 0.2}
    assert default_splits("patchgastric", 384) == {"train": 0.7, "validation": 0.1, "test": 0.2}
    assert parse_splits("train=0.8, validation=0.16,test=0.04") == default_splits("iu-xray", 224)
    with pytest.raises(ConfigError, match="NAME=FRACTION"):
        parse_splits("train:0.8")
    # IU X-Ray's 3,955 reports would split 3164/633/158 at 224 px.
    assert split_sizes(3955, default_splits("iu-xray", 224)) == \
        {"train": 3164, "validation": 633, "test": 158}
