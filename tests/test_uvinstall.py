"""The Makefile's installer: uv under the index settings pip has (src/selora/uvinstall.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selora.uvinstall import command, pip_settings, uv_options

ROOT = Path(__file__).resolve().parents[1]

# What `pip config list` prints on a machine with a mirror in pip.conf and PIP_* variables set.
LISTED = """\
:env:.find-links='/opt/wheels'
:env:.no-index='0'
global.cert='/etc/ssl/certs/ca.crt'
global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'
global.find-links='/global/wheels'
global.index-url='https://mirror.example/simple'
install.index-url='https://install.example/simple'
global.constraint='/etc/pip/constraints.txt'
"""


def test_pip_settings_take_pip_precedence_environment_over_install_over_global():
    settings = pip_settings(LISTED)
    assert settings["find-links"] == "/opt/wheels"  # PIP_FIND_LINKS over pip.conf's
    assert settings["index-url"] == "https://install.example/simple"  # [install] over [global]
    assert settings["extra-index-url"] == "file:///opt/a/simple file:///opt/b/simple"
    assert settings["cert"] == "/etc/ssl/certs/ca.crt"


def test_uv_gets_every_index_pip_has_and_picks_among_them_as_pip_does():
    options = uv_options(pip_settings(LISTED))
    pairs = list(zip(options[::2], options[1::2], strict=True))
    assert ("--index-strategy", "unsafe-best-match") in pairs  # pip weighs all indexes alike
    assert pairs.count(("--extra-index-url", "file:///opt/a/simple")) == 1
    assert ("--extra-index-url", "file:///opt/b/simple") in pairs  # each URL its own option
    assert ("--index-url", "https://install.example/simple") in pairs
    assert ("--find-links", "/opt/wheels") in pairs
    assert ("--constraint", "/etc/pip/constraints.txt") in pairs
    assert "--no-index" not in options  # PIP_NO_INDEX=0 is off
    assert "--no-index" in uv_options({"no-index": "true"})
    assert uv_options({}) == ["--index-strategy", "unsafe-best-match"]  # no pip.conf: PyPI


def test_the_command_installs_into_the_named_interpreter_with_its_bytecode():
    cmd = command(Path("/v/bin/python"), ["-r", "requirements.txt"], {})
    assert cmd[:3] == ["/v/bin/uv", "pip", "install"]
    assert cmd[cmd.index("--python") + 1] == "/v/bin/python"
    assert "--compile-bytecode" in cmd  # jobs import compiled modules (PYTHONDONTWRITEBYTECODE)
    assert cmd[-2:] == ["-r", "requirements.txt"]


@pytest.mark.skipif(
    not (Path(sys.executable).parent / "uv").exists(), reason="no uv beside this interpreter"
)
def test_uv_finds_the_environment_the_makefile_built_complete_under_pip_settings_here():
    """The real thing on the Makefile's .venv: uv, handed this machine's pip settings, reads
    requirements.txt and finds nothing to install or change (a dry run: nothing is written)."""
    done = subprocess.run(
        [sys.executable, "-m", "selora.uvinstall", "--dry-run", "-r", "requirements.txt"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Would make no changes" in done.stderr, done.stderr


def test_without_uv_the_module_says_what_to_install(tmp_path):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.symlink_to(shutil.which("python3") or sys.executable)
    done = subprocess.run(
        [str(python), "-m", "selora.uvinstall", "-r", "requirements.txt"],
        cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert done.returncode == 2
    assert "no uv beside" in done.stderr and "pip install uv" in done.stderr
