"""Offline ingredients: SD 1.5's tokenizer from CLIP's merges, wheel files from the pip cache, the
NLM IU X-Ray tree. Tests that need a wheel skip (saying why) without a package index."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from raw_fixtures import IuReport, _nlm_xml

from selora.assets import wheels
from selora.assets.cliptok import BOS, EOS, MAX_LENGTH, VOCAB_SIZE, write_clip_tokenizer
from selora.assets.nlm import PNG_DIR, VIEW_TABLE, XML_DIR, placeholder_png, write_nlm_tree
from selora.errors import AssetUnavailableError


@pytest.fixture(scope="module")
def tok(clip_tokenizer_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(clip_tokenizer_dir, local_files_only=True)


def test_clip_tokenizer_has_sd15_ids_and_limits(tok, clip_tokenizer_dir):
    assert len(tok) == VOCAB_SIZE == 49408
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, EOS)  # SD 1.5 pads with EOS
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert tok.model_max_length == MAX_LENGTH == 77
    # The ids SD 1.5's tokenizer gives this prompt (e.g. in diffusers' docs and issues).
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (clip_tokenizer_dir / "merges.txt").read_text().startswith("#version: 0.2\n")


def test_byte_symbols_fill_the_first_512_ids(tok):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = tok.get_vocab()
    assert [vocab[s] for s in symbols] == list(range(256))
    assert [vocab[s + "</w>"] for s in symbols] == list(range(256, 512))
    assert vocab["a"] == 64 and vocab["!"] == 0  # printable bytes first, as CLIP orders them
    # Any text tokenizes into known ids: an unseen script falls back to its bytes.
    ids = tok("日本 émphysème")["input_ids"]
    assert tok.unk_token_id not in ids[1:-1] and max(ids) < VOCAB_SIZE


def test_round_trip_lowercase_and_77_token_truncation(tok):
    text = "Heart size normal. XXXX lungs are clear, no effusion!"
    ids = tok(text)["input_ids"]
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded == "heart size normal . xxxx lungs are clear , no effusion !"
    assert tok(text.upper())["input_ids"] == ids
    long = " ".join(["lungs"] * 200)
    assert len(tok(long)["input_ids"]) == 202
    cut = tok(long, truncation=True, max_length=tok.model_max_length)["input_ids"]
    assert len(cut) == 77 and cut[0] == 49406 and cut[-1] == 49407
    padded = tok("lungs", padding="max_length", max_length=77)["input_ids"]
    assert len(padded) == 77 and set(padded[3:]) == {49407}


def test_a_file_that_is_not_clip_merges_is_a_clear_error(tmp_path):
    bad = tmp_path / "bpe.txt.gz"
    bad.write_bytes(gzip.compress(b"#version: 0.2\na b\n"))
    with pytest.raises(AssetUnavailableError, match="merge lines"):
        write_clip_tokenizer(tmp_path / "tok", bad)
    (tmp_path / "plain.txt").write_text("not gzip")
    with pytest.raises(AssetUnavailableError, match="gzip merges"):
        write_clip_tokenizer(tmp_path / "tok", tmp_path / "plain.txt")
    assert not (tmp_path / "tok").exists()


# ----------------------------------------------------------------------------- wheel cache
def _fake_wheel(cache: Path, member: str, data: bytes) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "some_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path


def test_wheel_file_comes_from_the_cache_without_pip(tmp_path, monkeypatch):
    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    _fake_wheel(tmp_path, "pkg/data.bin", b"payload")
    got = wheels.find_wheel_file("Some-Pkg", "1.0", "pkg/data.bin", tmp_path)
    assert got.read_bytes() == b"payload" and got.is_relative_to(tmp_path)
    with pytest.raises(AssetUnavailableError, match="no member pkg/other"):
        wheels.find_wheel_file("some.pkg", "1.0", "pkg/other", tmp_path)
    with pytest.raises(AssetUnavailableError, match="expected 00"):
        wheels.find_wheel_file("some_pkg", "1.0", "pkg/data.bin", tmp_path, sha256="00" * 32)
    assert not got.exists()  # a file that fails its checksum is not left for the next call


def test_unreachable_index_says_what_to_put_where(tmp_path, monkeypatch):
    calls = []

    def failing_pip(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for x==1\n")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(AssetUnavailableError) as err:
        wheels.find_wheel_file("x", "1", "x/y", tmp_path)
    assert "No matching distribution" in str(err.value) and f"into {tmp_path}" in str(err.value)
    assert calls and calls[0][-3:] == ["x==1", "-d", str(tmp_path)] and "--no-deps" in calls[0]


def test_parallel_jobs_wait_for_one_download_instead_of_reading_it_half_written(tmp_path, monkeypatch):
    """pip writes the wheel in place: a second job asking meanwhile must wait (file lock), then
    use the finished file, not start a second download or open a truncated zip."""
    import threading
    import time

    whole = _fake_wheel(tmp_path / "built", "pkg/data.bin", b"payload").read_bytes()
    calls = []

    def slow_pip(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[-1]) / "some_pkg-1.0-py3-none-any.whl"
        with open(dest, "wb") as f:  # as pip's copy: half the bytes, a pause, the rest
            f.write(whole[: len(whole) // 2])
            f.flush()
            time.sleep(0.5)
            f.write(whole[len(whole) // 2:])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", slow_pip)
    cache, got, errors = tmp_path / "cache", [], []

    def job() -> None:
        try:
            got.append(wheels.find_wheel_file("some-pkg", "1.0", "pkg/data.bin", cache).read_bytes())
        except Exception as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    threads[0].start()
    time.sleep(0.2)  # the first job is inside pip's write
    threads[1].start()
    for t in threads:
        t.join()
    assert errors == [] and got == [b"payload", b"payload"] and len(calls) == 1


# ----------------------------------------------------------------------------- NLM tree
def _reports_tgz(path: Path, reports: list[IuReport]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for r in reports:
            data = _nlm_xml(r).encode()
            info = tarfile.TarInfo(f"{XML_DIR}/{r.uid}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("../escape.xml")
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    return path


def test_nlm_tree_has_the_official_layout_and_a_placeholder_per_image(tmp_path):
    pair = [("CXR1_1_IM-0001-3001", "Frontal"), ("CXR1_1_IM-0001-4001", "Lateral")]
    reports = [IuReport(1, "Clear lungs.", "", pair), IuReport(2, "No image.", "", [])]
    tgz = _reports_tgz(tmp_path / "r.tgz", reports)
    table = tmp_path / "t.csv.gz"
    table.write_bytes(gzip.compress(b"imageid,View Position\nCXR1_1_IM-0001-3001,PA\n"))
    info = write_nlm_tree(tmp_path / "nlm", tgz, table, size=8)
    root = tmp_path / "nlm"
    assert info == {"raw": root, "views": root / VIEW_TABLE, "tsne_views": None, "reports": 2, "images": 2}
    assert sorted(p.name for p in (tmp_path / "nlm" / XML_DIR).iterdir()) == ["1.xml", "2.xml"]
    pngs = sorted((tmp_path / "nlm" / PNG_DIR).iterdir())
    assert [p.name for p in pngs] == ["CXR1_1_IM-0001-3001.png", "CXR1_1_IM-0001-4001.png"]
    assert not (tmp_path / "escape.xml").exists()
    assert pngs[0].read_bytes() == placeholder_png("CXR1_1_IM-0001-3001", 8) != pngs[1].read_bytes()
    from PIL import Image

    with Image.open(pngs[0]) as im:
        assert (im.mode, im.size) == ("L", (8, 8))


def test_real_sources_hold_the_nlm_reports_and_view_table(nlm_sources):
    reports, table = nlm_sources
    with tarfile.open(reports) as tar:
        names = [m.name for m in tar if m.name.endswith(".xml")]
    assert len(names) == 3955 and all(n.startswith(f"{XML_DIR}/") for n in names)
    with gzip.open(table, "rt") as f:
        header = f.readline()
    assert header.startswith("imageid,") and "View Position" in header
    assert json.dumps(str(reports))  # a plain path the rehearsal can record


def test_a_non_durable_atomic_dir_skips_the_fsyncs_but_stays_all_or_nothing(tmp_path, monkeypatch):
    import selora.io as sio

    synced = []
    monkeypatch.setattr(sio, "fsync_tree", synced.append)
    dest = tmp_path / "tree"
    with sio.atomic_dir(dest, durable=False) as tmp:
        (tmp / "a.png").write_bytes(b"1")
    assert (dest / "a.png").read_bytes() == b"1" and synced == []
    with pytest.raises(RuntimeError), sio.atomic_dir(dest, durable=False) as tmp:
        (tmp / "b.png").write_bytes(b"2")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"] and not (dest / "b.png").exists()
