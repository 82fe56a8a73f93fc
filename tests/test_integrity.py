"""Nothing stale or corrupt is trusted: checksums, crash leftovers, checkpoint verification, and a
training run bound to its data, base model and seeds (issue #15). Each rerun must end equal to a
clean run with the new inputs, or fail with a clear error that a retry gets past."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from selora.engine import checkpoint
from selora.io import (
    CHECKSUMS,
    atomic_dir,
    atomic_path,
    clean_leftovers,
    verify_checksums,
    write_checksums,
)


# ----------------------------------------------------------------------------- io: checksums
def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "adapter"
    (d / "sub").mkdir(parents=True)
    (d / "weights.safetensors").write_bytes(os.urandom(4096))
    (d / "adapter.json").write_text('{"epoch": 1}\n')
    (d / "sub" / "x.txt").write_text("x")
    write_checksums(d)
    return d


def test_checksums_pass_for_an_intact_folder_and_name_the_damaged_file(tmp_path):
    d = _folder(tmp_path)
    assert verify_checksums(d) is None
    (d / "adapter.json").write_text('{"epo')  # truncated
    problem = verify_checksums(d)
    assert problem and "adapter.json" in problem and "checksum" in problem


@pytest.mark.parametrize("damage", ["truncate-file", "flip-byte", "delete-file", "no-list", "truncate-list"])
def test_checksums_catch_every_kind_of_damage(tmp_path, damage):
    d = _folder(tmp_path)
    w = d / "weights.safetensors"
    if damage == "truncate-file":
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "flip-byte":
        raw = bytearray(w.read_bytes())
        raw[2000] ^= 0x01
        w.write_bytes(bytes(raw))
    elif damage == "delete-file":
        w.unlink()
    elif damage == "no-list":
        (d / CHECKSUMS).unlink()
    else:
        (d / CHECKSUMS).write_text((d / CHECKSUMS).read_text()[:50])
    assert verify_checksums(d) is not None


# ----------------------------------------------------------------------------- io: leftovers
def test_atomic_writes_leave_no_temporary_names_and_killed_ones_are_recognised(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out / "adapter" / "best") as tmp:
        (tmp / "a.bin").write_bytes(b"1")
        assert tmp.name.startswith(".best.") and tmp.name.endswith(".tmp")
    with atomic_path(out / "logs" / "steps.csv") as tmp:
        tmp.write_text("step\n")
        assert tmp.name.startswith(".steps.csv.") and tmp.name.endswith(".tmp")
    assert clean_leftovers(out) == []  # nothing left by writes that finished
    assert sorted(p.name for p in out.rglob("*")) == ["a.bin", "adapter", "best", "logs", "steps.csv"]

    # What a SIGKILL inside each write leaves, as named by atomic_path/atomic_dir/export:
    left = [out / "logs" / ".memory.csv.k2j3h4g5.tmp", out / "adapter" / ".last.ab12cd34.tmp",
            out / "checkpoint" / ".state.pt.zz9yy8xx.tmp", out / "checkpoint" / ".best.old-4242",
            out / "checkpoint" / ".best.q1w2e3r4",  # an older selora's temporary folder
            out / "adapter" / ".last.ab12cd34.tmp" / ".export-xyz"]
    keep = [out / "checkpoint" / "state.pt", out / "logs" / "memory.csv",
            out / "quarantine" / "x" / "state.pt", out / ".hidden-user-file"]
    for p in left[:1] + left[2:3] + keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    for p in (left[1], left[3], left[4], left[5]):
        p.mkdir(parents=True, exist_ok=True)
        (p / "f").write_text("x")
    removed = clean_leftovers(out)
    assert set(removed) == set(left[:5])  # the nested one went with its parent
    assert not any(p.exists() for p in left) and all(p.exists() for p in keep)


def test_leftovers_of_one_output_only_touch_that_output(tmp_path):
    (tmp_path / ".samples.ab12cd34.tmp").mkdir()
    (tmp_path / "train" / "logs").mkdir(parents=True)
    (tmp_path / "train" / "logs" / ".steps.csv.aaaa.tmp").write_text("x")  # another phase's: kept
    assert clean_leftovers(tmp_path, of="samples") == [tmp_path / ".samples.ab12cd34.tmp"]
    assert (tmp_path / "train" / "logs" / ".steps.csv.aaaa.tmp").exists()


# ----------------------------------------------------------------------------- checkpoint files
def _state(step: int) -> dict:
    return {"step": step, "adapter": {"w": torch.arange(1000, dtype=torch.float32) * step}}


def test_checkpoint_keeps_the_previous_one_and_verifies_both(tmp_path):
    ck = tmp_path / "checkpoint"
    checkpoint.save(ck, _state(1))
    checkpoint.save(ck, _state(2))
    assert checkpoint.read(ck / checkpoint.FILENAME)["step"] == 2
    assert checkpoint.read(ck / checkpoint.PREVIOUS)["step"] == 1
    assert checkpoint.load(ck, tmp_path / "q")["step"] == 2
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "legacy"])
def test_a_damaged_checkpoint_is_moved_aside_once_and_the_previous_one_used(tmp_path, capsys, damage):
    ck = tmp_path / "checkpoint"
    checkpoint.save(ck, _state(1))
    checkpoint.save(ck, _state(2))
    path = ck / checkpoint.FILENAME
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":  # inside the tensor data: torch.load alone would not notice
        b = bytearray(raw)
        b[len(raw) // 2] ^= 0x10
        path.write_bytes(bytes(b))
        with pytest.raises(checkpoint.CorruptCheckpoint, match="checksum"):
            checkpoint.read(path)
    else:  # a plain torch file, as selora wrote before checkpoints carried checksums
        torch.save(_state(2), path)
    state = checkpoint.load(ck, tmp_path / "q")
    assert state["step"] == 1
    err = capsys.readouterr().err
    assert err.count("not trusting") == 1 and "state.pt" in err
    moved = list((tmp_path / "q").rglob("state.pt"))
    assert len(moved) == 1 and not path.exists()
    # Both damaged: nothing is trusted, both are kept for inspection, and the run starts afresh.
    (ck / checkpoint.PREVIOUS).write_bytes(b"garbage")
    assert checkpoint.load(ck, tmp_path / "q") is None
    assert len(list((tmp_path / "q").rglob("state*.pt"))) == 2


def test_a_checkpoint_killed_between_its_two_renames_resumes_from_the_previous_one(tmp_path):
    ck = tmp_path / "checkpoint"
    checkpoint.save(ck, _state(1))
    checkpoint.save(ck, _state(2))
    os.replace(ck / checkpoint.FILENAME, tmp_path / "lost")  # as if killed after the first rename
    assert checkpoint.load(ck, tmp_path / "q")["step"] == 1


# ----------------------------------------------------------------------------- CLI
def test_cli_reports_os_errors_in_one_line(tmp_path, capsys, monkeypatch):
    from selora import cli

    def boom(_args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(cli, "build_parser", _parser_with(boom))
    assert cli.main(["fake"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"selora fake: error: {tmp_path / 'x'} Permission denied"


def _parser_with(fn):
    import argparse
    import types

    def build():
        p = argparse.ArgumentParser()
        sub = p.add_subparsers(dest="command")
        sub.add_parser("fake").set_defaults(_module=types.SimpleNamespace(run=fn))
        return p

    return build


# ----------------------------------------------------------------------------- identity
def test_data_identity_follows_image_bytes_not_the_report(tmp_path):
    from selora.config import load_params
    from selora.runlayout import data_identity
    from selora.synthetic import make_cxr

    p = load_params(None, ["synthetic.cxr.n_images=20", "synthetic.cxr.size=32"])
    data = tmp_path / "prepared"
    make_cxr(p.synthetic.cxr, data, seed=5, progress=False)
    before = data_identity(data)
    (data / "data_report.json").write_text(json.dumps({"provenance": "another time"}))
    assert data_identity(data) == before
    img = next((data / "train").glob("*.png"))
    shutil.copy(next(p for p in (data / "train").glob("*.png") if p != img), img)
    assert data_identity(data) != before
