"""Install requirements into the Makefile's .venv with uv, under the settings pip has here:

    PYTHONPATH=src .venv/bin/python -m selora.uvinstall --quiet -r requirements.txt

Why uv: it unpacks the wheels and compiles their bytecode on every core, where pip does both one
file after another; the pinned list (torch's CUDA build and its libraries, 6.5 GB unpacked)
installs in about half pip's time (benchmarks/README, "uv installs it in half the time"). Why this
module: uv reads no pip configuration, and a cluster's or a laptop's package mirror is usually set
up for pip (``pip.conf``, ``PIP_*`` variables). The settings pip would use are read from ``pip
config list`` and handed to uv as its own options, and uv is told to pick among all indexes as pip
does (``--index-strategy unsafe-best-match``). Standard library only: it runs before the
package's dependencies are installed.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

# pip's setting -> uv's option; "many" settings hold several whitespace-separated values, each
# handed to uv as its own option.
OPTIONS: dict[str, tuple[str, bool]] = {
    "index-url": ("--index-url", False),
    "extra-index-url": ("--extra-index-url", True),
    "find-links": ("--find-links", True),
    "constraint": ("--constraint", True),
    "no-index": ("--no-index", False),
}
# Where pip looks first wins: an environment variable over the install command's section over the
# global one (pip's documented precedence).
SECTIONS = (":env:", "install", "global")
TRUE = {"1", "true", "yes", "on"}


def pip_settings(config_list: str) -> dict[str, str]:
    """The settings ``pip config list`` prints (``section.key='value'`` lines), by precedence."""
    found: dict[tuple[str, str], str] = {}
    for line in config_list.splitlines():
        name, sep, value = line.partition("=")
        section, dot, key = name.strip().rpartition(".")
        if sep and dot and section in SECTIONS:
            found[section, key] = ast.literal_eval(value.strip())
    keys = {key for _, key in found}
    return {
        key: next(found[s, key] for s in SECTIONS if (s, key) in found) for key in sorted(keys)
    }


def uv_options(settings: dict[str, str]) -> list[str]:
    """uv's options for the index settings pip has; the rest of pip's settings have no say here."""
    options = ["--index-strategy", "unsafe-best-match"]
    for key, (option, many) in OPTIONS.items():
        if key not in settings:
            continue
        value = settings[key]
        if option == "--no-index":
            options += [option] if value.lower() in TRUE else []
        else:
            options += [part for v in (value.split() if many else [value]) for part in (option, v)]
    return options


def command(python: Path, args: list[str], settings: dict[str, str]) -> list[str]:
    """The uv call that installs ``args`` into the environment of ``python`` under pip's
    ``settings`` (:func:`pip_settings`)."""
    uv = python.parent / "uv"
    return [
        str(uv), "pip", "install", "--python", str(python), "--compile-bytecode",
        *uv_options(settings), *args,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    python = Path(sys.executable)
    if not (python.parent / "uv").exists():
        print(f"error: no uv beside {python}: install it first (pip install uv)", file=sys.stderr)
        return 2
    listed = subprocess.run(
        [str(python), "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    settings = pip_settings(listed)
    env = dict(os.environ)
    if settings.get("cert"):  # pip's CA bundle (a proxy's, say) for uv too
        env["SSL_CERT_FILE"] = settings["cert"]
    return subprocess.run(command(python, args, settings), env=env).returncode


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
