"""Montgomery County CXR: the paper's prompt, TB label from the file name, 80/20 without validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_fixtures import write_montgomery

from selora.data import PrepareOptions, prepare
from selora.data.montgomery import build_prompt, parse_reading
from selora.errors import DatasetFormatError
from selora.imagefolder import read_manifest
from selora.splits import split_sizes


def _prepare(raw: Path, out: Path, **kw):
    opts = PrepareOptions(dataset="montgomery", raw=raw, out=out, size=16, seed=0,
                          splits={"train": 0.8, "test": 0.2}, **kw)
    return prepare(opts)[0]


def test_reading_parser_handles_the_real_quirks():
    assert parse_reading("Patient's Sex: F \nPatient's Age: 040Y\nnormal\n") == ("F", "040Y", "normal")
    text = "Patient's Sex: O\r\nPatient's Age: 007Y\r\n  bilateral\n\n infiltrates. \n"
    sex, age, findings = parse_reading(text)
    assert (sex, age, findings) == ("O", "007Y", "bilateral infiltrates.")
    assert build_prompt(32, "Male", "extensive infiltrates bilaterally.") == \
        "age:32, gender:Male, findings:extensive infiltrates bilaterally."


def test_prompts_labels_split_and_every_skip(tmp_path):
    exp = write_montgomery(tmp_path / "raw")
    report = _prepare(tmp_path / "raw", tmp_path / "out")
    rows = read_manifest(tmp_path / "out")
    assert {r["source_id"]: r["text"] for r in rows} == exp.kept
    for r in rows:
        assert r["labels"]["tb"] == int(r["source_id"][-1])
        assert r["labels"]["sex"] in {"Male", "Female", "Other"}
        assert r["text"].startswith(f"age:{r['labels']['age']}, gender:{r['labels']['sex']}, findings:")
    no_report = next(r for r in rows if r["source_id"] == exp.extra["no_report"])
    assert no_report["labels"]["no_report"] is True and no_report["same_patient_as"] == "MCUCXR_0001_0"
    # 80/20 exactly, and no validation split at all.
    assert report["counts"] == split_sizes(len(exp.kept), {"train": 0.8, "test": 0.2})
    assert not (tmp_path / "out" / "validation").exists()
    assert {s["source"]: s["reason"] for s in report["skipped"]} == exp.skipped
    md = (tmp_path / "out" / "data_report.md").read_text()
    assert all(source in md for source in exp.skipped)


def test_missing_folders_are_clear_errors(tmp_path):
    write_montgomery(tmp_path / "raw", 4, 2, quirks=False)
    for sub in ("ClinicalReadings", "CXR_png"):
        (tmp_path / "raw" / "MontgomerySet" / sub).rename(tmp_path / "away")
        with pytest.raises(DatasetFormatError, match=sub):
            _prepare(tmp_path / "raw", tmp_path / "out")
        (tmp_path / "away").rename(tmp_path / "raw" / "MontgomerySet" / sub)
    with pytest.raises(DatasetFormatError, match="too few"):  # 6 records, 80/20 → fine; 1 is not
        opts = PrepareOptions(dataset="montgomery", raw=tmp_path / "raw", out=tmp_path / "out", size=16,
                              seed=0, splits={"train": 0.99, "test": 0.01})
        prepare(opts)
    assert not (tmp_path / "out").exists()
