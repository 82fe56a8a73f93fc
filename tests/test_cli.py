"""The ``selora`` console script: phases listed, bad input → one clear line and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from selora.cli import main


def test_console_script_lists_the_phases():
    out = subprocess.run([sys.executable, "-m", "selora", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for phase in ("make-synthetic", "pretrain-base"):
        assert phase in out


def test_bad_params_fail_with_the_key_and_no_traceback(capsys, tmp_path):
    code = main(["pretrain-base", "--params", "params.yaml", "--set", "base_model.tiny.image_size=30",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "base_model.tiny.image_size" in err and "multiple" in err
    assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_is_a_clear_error(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = main(["make-synthetic", "--set", "synthetic.natural.n_images=4", "--only", "natural",
                 "--natural-out", str(locked / "natural"), "--quiet"])
    assert code == 2 and "cannot create" in capsys.readouterr().err


def test_output_under_a_file_is_a_clear_error(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["make-synthetic", "--set", "synthetic.natural.n_images=4", "--only", "natural",
                 "--natural-out", str(blocker / "natural"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and str(blocker) in err


def test_missing_natural_set_names_the_fix(capsys, tmp_path):
    code = main(["pretrain-base", "--data", str(tmp_path / "none"), "--reports", "",
                 "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err
