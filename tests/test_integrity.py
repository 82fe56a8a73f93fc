"""Nothing stale or corrupt is trusted: checksums, crash leftovers, checkpoint verification, and a
training run bound to its data, base model and seeds (issue #15). Each rerun must end equal to a
clean run with the new inputs, or fail with a clear error that a retry gets past."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
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
    with atomic_path(out / "logs" / "loss.png", suffix=".png") as tmp:
        tmp.write_bytes(b"png")
        assert tmp.suffix == ".png"  # matplotlib picks the format from it
    assert clean_leftovers(out) == []  # nothing left by writes that finished
    names = sorted(p.name for p in out.rglob("*"))
    assert names == ["a.bin", "adapter", "best", "logs", "loss.png", "steps.csv"]

    # What a SIGKILL inside each write leaves, as named by atomic_path/atomic_dir/export:
    left = [out / "logs" / ".memory.csv.k2j3h4g5.tmp", out / "adapter" / ".last.ab12cd34.tmp",
            out / "logs" / ".loss.png.x1y2z3w4.tmp.png",
            out / "checkpoint" / ".state.pt.zz9yy8xx.tmp", out / "checkpoint" / ".best.old-4242",
            out / "checkpoint" / ".best.q1w2e3r4",  # an older selora's temporary folder
            out / "adapter" / ".last.ab12cd34.tmp" / ".export-xyz"]
    keep = [out / "checkpoint" / "state.pt", out / "logs" / "memory.csv",
            out / "quarantine" / "x" / "state.pt", out / ".hidden-user-file"]
    for p in [left[0], left[2], left[3], *keep]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    for p in (left[1], left[4], left[5], left[6]):
        p.mkdir(parents=True, exist_ok=True)
        (p / "f").write_text("x")
    removed = clean_leftovers(out)
    assert set(removed) == set(left[:6])  # the nested one went with its parent
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


# ----------------------------------------------------------------------------- training runs
SETUP = "synthetic-cxr-32"
DETERMINISTIC = ("adapter/best", "adapter/last", "logs/steps.csv", "logs/validation.csv",
                 "logs/ranks.csv", "logs/parameters.csv")
_TEMP = re.compile(r"^\..+\.(tmp|old-\d+)$")


def overrides(base: Path, results: Path, *extra: str) -> list[str]:
    return [f"base_model.name={base}", f"paths.results={results}", f"setups.{SETUP}.epochs=2",
            f"setups.{SETUP}.batch_size=8", "train.lr=2.0e-3", "train.checkpoint_every=3",
            "train.memory_every=4", *extra]


def outputs_digest(train_dir: Path) -> dict[str, str]:
    """Every byte that must equal a clean run's (not summary.json: it holds wall times)."""
    out = {}
    for rel in DETERMINISTIC:
        path = train_dir / rel
        for f in sorted([path] if path.is_file() else path.rglob("*")):
            out[str(f.relative_to(train_dir))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def drop_outputs(train_dir: Path) -> None:
    """What Snakemake and DVC do before rerunning a job: delete its declared outputs."""
    (train_dir / "summary.json").unlink()
    shutil.rmtree(train_dir / "adapter")
    shutil.rmtree(train_dir / "logs")


@pytest.fixture(scope="module")
def finished(tiny_base, prepared, tmp_path_factory) -> dict:
    """One finished LoRA run (2 epochs, 14 steps, a checkpoint every 3) and its output digests."""
    from selora.config import load_params
    from selora.engine.train import train
    from selora.runlayout import RunId

    results = tmp_path_factory.mktemp("results")
    params = load_params(None, overrides(tiny_base["path"], results))
    run = RunId(SETUP, "lora", "default", 0)
    root = results / "runs" / run.relpath
    summary = train(params, run, data_dir=prepared, progress=False)
    return {"params": params, "run": run, "root": root, "summary": summary,
            "digest": outputs_digest(root / "train")}


def _rerun(finished: dict, prepared: Path, tmp_path: Path, damage) -> Path:
    from selora.engine.train import train

    root = tmp_path / "run"
    shutil.copytree(finished["root"], root)
    damage(root / "train")
    train(finished["params"], finished["run"], data_dir=prepared, out_dir=root, progress=False)
    return root / "train"


def _no_temp_names(train_dir: Path) -> bool:
    return not [p for p in train_dir.rglob("*") if _TEMP.match(p.name)]


def test_a_truncated_summary_is_moved_aside_and_the_run_published_again(finished, prepared, tmp_path):
    def damage(t: Path) -> None:
        (t / "summary.json").write_text((t / "summary.json").read_text()[:100])

    train_dir = _rerun(finished, prepared, tmp_path, damage)
    assert outputs_digest(train_dir) == finished["digest"]
    assert json.loads((train_dir / "summary.json").read_text())["steps"] == 14
    assert len(list((train_dir / "quarantine").rglob("summary.json"))) == 1


def test_leftovers_of_a_kill_in_the_publish_window_are_removed(finished, prepared, tmp_path, capsys):
    left = ["logs/.memory.csv.k2j3h4g5.tmp", "adapter/.last.ab12cd34.tmp/pytorch_lora_weights.safetensors",
            "checkpoint/.state.pt.zz9yy8xx.tmp", "checkpoint/.best.old-4242/adapter.json"]

    def damage(t: Path) -> None:  # killed after adapter/best and before the summary was published
        (t / "summary.json").unlink()
        for rel in left:
            (t / rel).parent.mkdir(parents=True, exist_ok=True)
            (t / rel).write_bytes(b"half a file")

    train_dir = _rerun(finished, prepared, tmp_path, damage)
    assert outputs_digest(train_dir) == finished["digest"]
    assert _no_temp_names(train_dir)
    assert capsys.readouterr().err.count("left by an earlier write that was killed") == 4


def _flip_in_largest_tensor(path: Path) -> None:
    """Flip one byte inside the largest tensor's data (torch.load itself would not notice)."""
    import zipfile

    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw[:-checkpoint._FOOTER_LEN]))) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.file_size // 2] ^= 0x40
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_damaged_state_resumes_from_the_previous_checkpoint(finished, prepared, tmp_path, damage):
    def hurt(t: Path) -> None:
        drop_outputs(t)
        state = t / "checkpoint" / checkpoint.FILENAME
        if damage == "truncated":
            state.write_bytes(state.read_bytes()[:5000])
        else:
            _flip_in_largest_tensor(state)

    train_dir = _rerun(finished, prepared, tmp_path, hurt)
    assert outputs_digest(train_dir) == finished["digest"]
    assert len(list((train_dir / "quarantine").rglob(checkpoint.FILENAME))) == 1


@pytest.mark.parametrize("victim", ["pytorch_lora_weights.safetensors", "adapter.json"])
def test_a_truncated_best_adapter_is_never_published_and_the_run_retrains(finished, prepared, tmp_path,
                                                                          victim, capsys):
    def hurt(t: Path) -> None:
        drop_outputs(t)
        f = t / "checkpoint" / "best" / victim
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    train_dir = _rerun(finished, prepared, tmp_path, hurt)
    assert outputs_digest(train_dir) == finished["digest"]
    assert "training restarts" in capsys.readouterr().err
    moved = list((train_dir / "quarantine").rglob(victim))
    assert len(moved) == 1 and moved[0].parent.name == "best"


def _three_runs(tiny_base_path: Path, data_a: Path, data_b: Path, tmp_path: Path, extra_a=(), extra_b=(),
                between=None) -> tuple[dict, dict, dict, Path, Path]:
    """Train A into one folder, change an input, train B into the same folder (as a workflow
    rerun would) and B into a clean folder; returns (summary A, rerun, clean, rerun dir, clean dir)."""
    from selora.config import load_params
    from selora.engine.train import train
    from selora.runlayout import RunId

    run = RunId(SETUP, "lora", "default", 0)
    short = [f"setups.{SETUP}.max_steps=4"]
    dirty, clean = tmp_path / "rerun", tmp_path / "clean"
    pa = load_params(None, overrides(tiny_base_path, tmp_path, *short, *extra_a))
    pb = load_params(None, overrides(tiny_base_path, tmp_path, *short, *extra_b))
    a = train(pa, run, data_dir=data_a, out_dir=dirty, progress=False)
    if between:
        between()
    b = train(pb, run, data_dir=data_b, out_dir=dirty, progress=False)
    c = train(pb, run, data_dir=data_b, out_dir=clean, progress=False)
    return a, b, c, dirty / "train", clean / "train"


def test_changed_data_retrains_instead_of_republishing_the_old_adapter(tiny_base, prepared, tmp_path, capsys):
    data_b = tmp_path / "prepared-b" / SETUP
    shutil.copytree(prepared, data_b)
    from PIL import Image, ImageOps

    for path in (data_b / "train").glob("*.png"):  # same names and manifest, every image mirrored
        ImageOps.mirror(Image.open(path).convert("RGB")).save(path)

    a, b, c, dirty, clean = _three_runs(tiny_base["path"], prepared, data_b, tmp_path)
    assert outputs_digest(dirty) == outputs_digest(clean)
    assert a["best_val_loss"] != b["best_val_loss"]  # the old adapter would not be equal
    assert a["config_hash"] == b["config_hash"] and a["identity_hash"] != b["identity_hash"]
    assert b["identity"]["data"] != a["identity"]["data"] and b["identity_hash"] == c["identity_hash"]
    assert "data changed" in capsys.readouterr().err


def test_changed_base_model_retrains(tiny_base, prepared, tmp_path):
    from safetensors.torch import load_file, save_file

    base = tmp_path / "tiny-sd"
    shutil.copytree(tiny_base["path"], base)

    def repretrain() -> None:  # the same folder, other weights (as a new `selora pretrain-base`)
        f = base / "unet" / "diffusion_pytorch_model.safetensors"
        w = load_file(f)
        key = sorted(k for k in w if k.endswith("weight"))[0]
        w[key] = w[key] + 0.01
        save_file(w, f)

    a, b, _, dirty, clean = _three_runs(base, prepared, prepared, tmp_path, between=repretrain)
    assert outputs_digest(dirty) == outputs_digest(clean)
    assert b["identity"]["base_model"] != a["identity"]["base_model"]


def test_changed_top_level_seed_retrains_with_new_validation_draws(tiny_base, prepared, tmp_path):
    import pandas as pd

    first: dict[str, float] = {}

    def remember() -> None:
        val = pd.read_csv(tmp_path / "rerun" / "train" / "logs" / "validation.csv")
        first["base"] = val.loc[val.epoch == -1, "val_loss"].item()

    a, b, _, dirty, clean = _three_runs(tiny_base["path"], prepared, prepared, tmp_path,
                                        extra_a=["seed=1"], extra_b=["seed=2"], between=remember)
    assert outputs_digest(dirty) == outputs_digest(clean)
    assert a["config_hash"] == b["config_hash"] and (a["identity"]["seed"], b["identity"]["seed"]) == (1, 2)
    val = pd.read_csv(dirty / "logs" / "validation.csv")  # epoch -1 from the new draws, not the old
    assert val.loc[val.epoch == -1, "val_loss"].item() != first["base"]


# ----------------------------------------------------------------------------- sampling, evaluation
def test_sampling_refuses_a_damaged_adapter_and_redraws_when_its_inputs_change(finished, prepared, tmp_path):
    from selora.config import load_params
    from selora.engine.sample import sample
    from selora.engine.train import train
    from selora.errors import SeloraError

    root = tmp_path / "run"
    shutil.copytree(finished["root"], root)
    params = load_params(None, [*overrides(Path(finished["params"].base_model.name), tmp_path),
                                "sample.steps=2", "sample.batch_size=16"])
    run = finished["run"]
    first = sample(params, run, data_dir=prepared, out_dir=root, progress=False)
    assert sample(params, run, data_dir=prepared, out_dir=root, progress=False) == first  # reused

    # The test prompts' data changed (same names, other bytes): drawn again, as from scratch.
    data_b = tmp_path / "prepared-b" / SETUP
    shutil.copytree(prepared, data_b)
    tests = sorted((data_b / "test").glob("*.png"))
    shutil.copy(tests[1], tests[0])
    again = sample(params, run, data_dir=data_b, out_dir=root, progress=False)
    assert again["inputs"]["data"] != first["inputs"]["data"]
    assert again["provenance"]["started_utc"] >= first["provenance"]["started_utc"] and again != first

    # A truncated published adapter: a clear error, and `selora train` (the retry) republishes it.
    w = root / "train" / "adapter" / "best" / "pytorch_lora_weights.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(SeloraError, match="not trustworthy"):
        sample(params, run, data_dir=data_b, out_dir=root, progress=False)
    train(finished["params"], run, data_dir=prepared, out_dir=root, progress=False)
    assert outputs_digest(root / "train") == finished["digest"]
    assert sample(params, run, data_dir=data_b, out_dir=root, progress=False)["n_images"] == 16


def test_evaluation_refuses_a_reference_fitted_on_other_image_bytes(tmp_path):
    from selora.config import load_params
    from selora.errors import DatasetFormatError
    from selora.imagefolder import read_manifest
    from selora.metrics.evaluate import evaluate_run
    from selora.metrics.fit_reference import fit_setup
    from selora.synthetic import make_cxr

    params = load_params(None, [f"paths.results={tmp_path / 'results'}", "evaluate.reference_steps=20",
                                "evaluate.min_finding_accuracy=0.0", "evaluate.kid_subset_size=4",
                                "evaluate.kid_subsets=2", "synthetic.cxr.n_images=60",
                                "synthetic.cxr.size=32"])
    data = tmp_path / "prepared" / SETUP
    make_cxr(params.synthetic.cxr, data, seed=3, progress=False)
    fit_setup(params, SETUP, data=data)
    run = tmp_path / "results" / "runs" / SETUP / "lora" / "default" / "seed0"
    (run / "samples" / "images").mkdir(parents=True)
    rows = read_manifest(data, ("test",))
    manifest = []
    for i, r in enumerate(rows):
        shutil.copy(r["path"], run / "samples" / "images" / f"{i:05d}.png")
        manifest.append({"file_name": f"{i:05d}.png", "prompt": r["text"], "source_id": r["source_id"],
                         "real_image": r["path"], "seed": 0, "k": 0})
    (run / "samples" / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    (run / ".metrics.json.ab12cd34.tmp").write_text("{")  # a killed write of metrics.json
    assert evaluate_run(params, run, data=data)["fid"] == pytest.approx(0.0, abs=1e-6)
    assert not (run / ".metrics.json.ab12cd34.tmp").exists()

    tests = sorted((data / "test").glob("*.png"))
    shutil.copy(tests[1], tests[0])  # same split and names, other real test pixels
    with pytest.raises(DatasetFormatError, match="fit-reference"):
        evaluate_run(params, run, data=data)
    fit_setup(params, SETUP, data=data)  # the refit the message asks for
    assert evaluate_run(params, run, data=data)["fid"] > 0  # sample 0 no longer equals its real image
