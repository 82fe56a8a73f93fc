"""params cpu_isa: torch's CPU kernels pinned to one instruction set before any phase computes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (loaded in this process: a pin here comes too late)

from selora import cli, dag
from selora.config import ConfigError, load_params
from selora.cpuisa import PINS, VARIABLES, pin_cpu_isa

ROOT = Path(__file__).resolve().parents[1]


def _has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return platform.machine() in ("x86_64", "AMD64") and " avx2" in flags


@pytest.fixture
def unpinned(monkeypatch):
    for var in VARIABLES:
        monkeypatch.delenv(var, raising=False)


def test_unknown_isa_is_refused_and_null_pins_nothing(unpinned):
    with pytest.raises(ConfigError, match="avx2"):
        pin_cpu_isa("avx512")
    assert pin_cpu_isa(None) == {}
    assert not any(var in os.environ for var in VARIABLES)
    with pytest.raises(ConfigError, match="not one of"):  # the schema refuses it as well
        load_params(ROOT / "params.yaml", ["cpu_isa=avx512"])


def test_a_pin_is_refused_once_torch_is_loaded_unless_the_process_started_with_it(unpinned, monkeypatch):
    assert "torch" in sys.modules  # this module imported it: its kernels may already be chosen
    with pytest.raises(ConfigError, match="too late") as err:
        pin_cpu_isa("avx2")
    assert all(f"{k}={v}" in str(err.value) for k, v in PINS["avx2"].items())  # what to start it with
    for k, v in PINS["avx2"].items():
        monkeypatch.setenv(k, v)
    assert pin_cpu_isa("avx2") == PINS["avx2"]


def test_selora_applies_the_pin_before_the_phase_runs(unpinned, tmp_path, capsys):
    """main() pins first: in this process (torch loaded) the phase is never reached, exit status 2."""
    code = cli.main(["report", "--params", str(ROOT / "params.yaml"), "--set", "cpu_isa=avx2",
                     "--results", str(tmp_path)])
    assert code == 2 and "too late" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # the report never ran


@pytest.mark.skipif(not _has_avx2(), reason="needs an x86-64 CPU with AVX2")
def test_a_fresh_selora_process_runs_torch_on_the_pinned_kernels(tmp_path):
    """From the params alone (no variable set by hand), torch dispatches to AVX2 kernels, and the
    provenance of every result records the pin; without it, neither."""
    probe = (
        "import json, sys\n"
        "from selora import cli\n"
        "cli.pin_cpu_from_args(cli.build_parser().parse_args(sys.argv[1:]))\n"
        "import torch\n"
        "torch.ones(64) @ torch.ones(64)  # a first kernel runs after the pin\n"
        "from selora.io import cpu_info\n"
        "print(json.dumps(cpu_info()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    args = ["pretrain-base", "--params", str(ROOT / "params.yaml")]

    def cpu(*extra: str) -> dict:
        out = subprocess.run([sys.executable, "-c", probe, *args, *extra], env=env, cwd=tmp_path,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    pinned = cpu("--set", "cpu_isa=avx2")
    assert pinned["torch_capability"] == "AVX2" and pinned["isa_pin"] == PINS["avx2"]
    assert "isa_pin" not in cpu()


def test_a_pin_reruns_the_torch_jobs_and_leaves_unpinned_hashes_as_they_were():
    cfg = load_params(ROOT / "params.yaml").raw
    assert cfg["cpu_isa"] is None
    pinned = {**cfg, "cpu_isa": "avx2"}
    w = {"setup": "synthetic-cxr-32", "method": "selora", "variant": "default", "seed": "0"}
    for rule in dag.JOB_CONFIGS:
        unpinned_hash = dag.job_hash(rule, cfg, w)
        assert unpinned_hash == dag.job_hash(rule, {k: v for k, v in cfg.items() if k != "cpu_isa"}, w)
        assert (dag.job_hash(rule, pinned, w) != unpinned_hash) == (rule in dag.TORCH_RULES), rule


def test_a_pinned_run_is_never_reused_for_an_unpinned_one(monkeypatch):
    """`selora train` reuses a finished run of the same identity: a pin must change it, and its
    absence must leave the identity of runs made before the key existed as it was."""
    from selora import runlayout
    from selora.runlayout import RunId

    monkeypatch.setattr(runlayout, "data_identity", lambda _d: "data")
    monkeypatch.setattr(runlayout, "base_model_identity", lambda _p: "base")
    run = RunId("synthetic-cxr-32", "selora", "default", 0)
    plain = runlayout.run_identity(load_params(ROOT / "params.yaml"), run, "unused")
    pinned = runlayout.run_identity(load_params(ROOT / "params.yaml", ["cpu_isa=avx2"]), run, "unused")
    assert set(plain) == {"config", "seed", "data", "base_model"}
    assert pinned == {**plain, "cpu_isa": "avx2"}
