"""Through the workflow tools, not only the function (issue #15): when a training job's input data
change, a Snakemake rerun and a `dvc repro` retrain on the new data instead of republishing the
adapter of the old data from the checkpoint folder (which is no declared output and survives)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_workflow import BIN, ENV, REDUCED, ROOT, _merge, dvc, job_counts, snakemake, workdir

from selora.config import load_params

SETUP = "synthetic-cxr-32"
RUN = f"results/runs/{SETUP}/lora/default/seed0"
# Over the reduced grid (.test/config-reduced.yaml): not another grid but these tests' step cap, with a
# checkpoint inside it (the checkpoint folder is what survives a data change).
SHORT = {"setups": {SETUP: {"max_steps": 3}}, "train": {"checkpoint_every": 2}}


def _workdir(tmp: Path, synthetic_dirs, tiny_base) -> Path:
    tmp.mkdir()
    wd = workdir(tmp, "dvc.yaml")
    full = load_params(ROOT / "params.yaml").raw
    (wd / "params.yaml").write_text(yaml.safe_dump(_merge(_merge(full, REDUCED), SHORT), sort_keys=False))
    shutil.copytree(synthetic_dirs["natural"], wd / "data" / "synthetic" / "natural")
    shutil.copytree(synthetic_dirs["cxr"], wd / "data" / "raw" / "synthetic-cxr")
    shutil.copytree(tiny_base["path"], wd / "models" / "tiny-sd")
    return wd


def _adapter_digest(run_dir: Path) -> str:
    files = sorted((run_dir / "train" / "adapter").rglob("*.safetensors"))
    assert len(files) == 2
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def _change_the_training_images(wd: Path) -> None:
    """Same file names and manifest, other pixels (a re-preparation from corrected raw data):
    every training image mirrored, so whichever batches the short run draws see the change."""
    from PIL import Image, ImageOps

    prepared = wd / "data" / "prepared" / SETUP
    for path in sorted((prepared / "train").glob("*.png")):
        ImageOps.mirror(Image.open(path).convert("RGB")).save(path)
    for stamp in (prepared / ".snakemake_timestamp", prepared):  # what Snakemake reads as its mtime
        if stamp.exists():
            os.utime(stamp)


def _clean_run(wd: Path, tmp: Path, *extra: str) -> Path:
    out = tmp / "clean"
    res = subprocess.run([str(BIN / "selora"), "train", "--params", "params.yaml", "--setup", SETUP,
                          "--method", "lora", "--seed", "0", "--run-dir", str(out), "--data",
                          f"data/prepared/{SETUP}", "--quiet", *extra],
                         cwd=wd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.slow
def test_snakemake_rerun_after_the_data_changed_retrains(tmp_path, synthetic_dirs, tiny_base):
    wd = _workdir(tmp_path / "wd", synthetic_dirs, tiny_base)
    touched = snakemake("--touch", "--cores", "1", "models/tiny-sd", cwd=wd)
    assert touched.returncode == 0, touched.stderr
    target = f"{RUN}/train/summary.json"
    first = snakemake("--cores", "1", target, cwd=wd, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    old = _adapter_digest(wd / RUN)

    _change_the_training_images(wd)
    again = snakemake("--cores", "1", target, cwd=wd, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert job_counts(f"{again.stdout}\n{again.stderr}").get("train") == 1  # the job list of the run's log
    log = (wd / "results" / "logs" / "train" / SETUP / "lora" / "default" / "seed0.log").read_text()
    assert "discarding" in log and "data changed" in log
    new = _adapter_digest(wd / RUN)
    assert new != old
    (tmp_path / "c").mkdir()
    assert new == _adapter_digest(_clean_run(wd, tmp_path / "c", "--set", "train.threads=1"))


@pytest.mark.slow
def test_dvc_repro_after_the_data_changed_retrains(tmp_path, synthetic_dirs, tiny_base):
    wd = _workdir(tmp_path / "wd", synthetic_dirs, tiny_base)
    stage = f"train-{SETUP}-lora-default-seed0"  # the stage names `selora dvc-yaml` writes
    assert dvc("init", "--no-scm", "-q", cwd=wd).returncode == 0
    adopt = dvc("commit", "--force", "make_synthetic", "pretrain_base", cwd=wd)
    assert adopt.returncode == 0, adopt.stderr
    first = subprocess.run([str(BIN / "dvc"), "repro", stage], cwd=wd, env=ENV, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    old = _adapter_digest(wd / RUN)

    _change_the_training_images(wd)
    adopt = dvc("commit", "--force", f"prepare-{SETUP}", cwd=wd)  # the new preparation, adopted
    assert adopt.returncode == 0, adopt.stderr
    again = subprocess.run([str(BIN / "dvc"), "repro", stage], cwd=wd, env=ENV, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"Running stage '{stage}'" in again.stdout
    assert "data changed" in again.stdout + again.stderr
    new = _adapter_digest(wd / RUN)
    assert new != old
    (tmp_path / "c").mkdir()
    # the stage trains with one thread (its cmd's --set train.threads=1); another count rounds differently
    assert new == _adapter_digest(_clean_run(wd, tmp_path / "c", "--set", "train.threads=1"))
    assert dvc("status", "--quiet", stage, cwd=wd).returncode == 0
