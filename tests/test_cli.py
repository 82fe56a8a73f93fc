"""The ``selora`` console script: phases listed, bad input → one clear line and exit status 2."""

from __future__ import annotations

import errno
import gc
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from selora.cli import main


def test_console_script_lists_the_phases():
    out = subprocess.run([sys.executable, "-m", "selora", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for phase in ("make-synthetic", "pretrain-base"):
        assert phase in out


def test_the_console_script_returns_the_phase_status_and_leaves_the_heap_frozen(monkeypatch):
    """`selora` and `python -m selora` run `entry`: main's exit status, with the heap frozen so the
    interpreter's shutdown skips a garbage-collector pass over it (~1 s a job; benchmarks/exit.py)."""
    from importlib.metadata import entry_points

    import selora.cli

    scripts = [e.value for e in entry_points(group="console_scripts") if e.name == "selora"]
    assert scripts == ["selora.cli:entry"], "reinstall the package: pip install -e ."
    assert "entry()" in (Path(selora.cli.__file__).parent / "__main__.py").read_text()
    monkeypatch.setattr(selora.cli, "main", lambda: 3)
    gc.unfreeze()
    try:
        assert selora.cli.entry() == 3
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # the test process collects as before


def test_bad_params_fail_with_the_key_and_no_traceback(capsys, tmp_path):
    code = main(["pretrain-base", "--params", "params.yaml", "--set", "base_model.tiny.image_size=30",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "base_model.tiny.image_size" in err and "multiple" in err
    assert "Traceback" not in err


@pytest.fixture
def mode_bits_enforced(monkeypatch):
    """The kernel's answer to a user without root's override of mode bits. CI runs as root, which may
    write into a 0o500 folder: without this the unwritable-output path would never be exercised there
    (the checks in selora.io go through os.mkdir and os.access, patched here)."""
    real_mkdir, real_access = os.mkdir, os.access

    def read_only(folder: str | os.PathLike) -> bool:
        return Path(folder).is_dir() and not Path(folder).stat().st_mode & stat.S_IWUSR

    def mkdir(path, mode=0o777, *args, **kwargs):
        if read_only(Path(path).parent) and not Path(path).exists():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, mode, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        return not (mode & os.W_OK and read_only(path)) and real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize(
    ("out", "message"),
    [("new/natural", "cannot create output folder {locked}/new: Permission denied"),
     ("natural", "output folder {locked} is not writable")],
    ids=["parent-not-creatable", "parent-not-writable"],
)
def test_unwritable_output_is_a_clear_error(capsys, tmp_path, mode_bits_enforced, out, message):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = main(["make-synthetic", "--set", "synthetic.natural.n_images=4", "--only", "natural",
                 "--natural-out", str(locked / out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"selora make-synthetic: error: {message.format(locked=locked)}\n"
    assert not (locked / out).exists()


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
