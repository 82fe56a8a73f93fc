"""Atomic file writes, checksums, crash leftovers and provenance.

Every result is written to a temporary file in the destination folder, fsynced and renamed into
place, so a job killed mid-write (or a node that crashes) never leaves a half-written file that a
rerun would trust. Temporary names are recognisable (``.<name>.<random>.tmp``, ``.<name>.old-<pid>``)
so :func:`clean_leftovers` can remove what a SIGKILL left behind. Folders that are trusted later
(checkpoints, exported adapters) carry a ``SHA256SUMS`` file written last (:func:`write_checksums`)
and are checked with :func:`verify_checksums` before use. Every result file carries provenance:
the resolved config, package versions, git commit, wall time, peak memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from selora.errors import OutputError

CHECKSUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` format, so a user can check a folder by hand
TMP_SUFFIX = ".tmp"
# What atomic_path / atomic_dir / an adapter export leave behind when killed mid-write (the last
# alternative: temporary folders of selora versions before temporary names ended in ".tmp").
_LEFTOVER = re.compile(r"^\.(.+\.tmp(\.\w+)?|.+\.old-\d+|export-.+|.+\.[a-z0-9_]{8})$")

PROVENANCE_PACKAGES = (
    "selora", "torch", "torchvision", "diffusers", "transformers", "peft", "torchmetrics",
    "torch-fidelity", "numpy", "pandas", "snakemake", "dvc",
)


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) or fail with a message that names it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {path} is not writable")
    return path


def fsync(path: str | Path) -> None:
    """Flush a file's or a folder's entry to disk (a rename is durable only once both are)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under ``root`` (deepest first), then ``root`` itself."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync(Path(folder) / name)
        fsync(folder)


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; fsync it and rename it onto ``dest`` if the block
    succeeds (a crash then leaves the old file or the complete new one, never a truncated one)."""
    dest = Path(dest)
    ensure_writable_dir(dest.parent)
    # ``suffix`` stays last: writers such as matplotlib pick the format from the extension.
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TMP_SUFFIX + suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync(tmp_path)
        os.replace(tmp_path, dest)
        fsync(dest.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; fsynced, it replaces ``dest`` if the block succeeds.

    ``durable=False`` skips the per-file fsync (the rename stays atomic against a killed process):
    for thousands of small files that are cheap to rebuild, where the fsyncs dominate the time."""
    dest = Path(dest)
    ensure_writable_dir(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=TMP_SUFFIX, dir=dest.parent))
    try:
        yield tmp
        if durable:
            fsync_tree(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            fsync(dest.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
            fsync(dest.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clean_leftovers(root: str | Path, of: str | None = None) -> list[Path]:
    """Remove what killed writes left under ``root`` (temporary files and folders, ``.old-*``
    folders) and return them. Nothing else is touched; call it only where no other process is
    writing (a run's own phase folder, at the start of that phase). ``of``: only the leftovers of
    writing ``root/<of>``, directly in ``root`` (e.g. a samples folder next to the train folder)."""
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if not _LEFTOVER.match(name) or (of is not None and not name.startswith(f".{of}.")):
                continue
            path = Path(folder) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(name)
            elif name in files:  # legacy random names are only ever folders
                if TMP_SUFFIX not in name and not name.startswith(".export-"):
                    continue
                path.unlink(missing_ok=True)
            removed.append(path)
        if of is not None:
            break
    return sorted(removed)


def report_leftovers(root: str | Path, of: str | None = None, stream: Any = None) -> list[Path]:
    """:func:`clean_leftovers`, saying on stderr what was removed."""
    removed = clean_leftovers(root, of)
    for path in removed:
        print(f"removed {path}: left by an earlier write that was killed", file=stream or sys.stderr)
    return removed


# ----------------------------------------------------------------------------- checksums
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: str | Path) -> Path:
    """Write ``folder/SHA256SUMS`` over every other file below it; call it last, after the files."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    lines = "".join(f"{file_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files)
    dest = folder / CHECKSUMS
    write_text(dest, lines)
    return dest


def verify_checksums(folder: str | Path) -> str | None:
    """None when every file ``folder/SHA256SUMS`` lists is present with its digest; otherwise why not.

    A folder without the file is not trusted: the list is written last, so its absence means the
    write never finished (or an older selora wrote the folder)."""
    folder = Path(folder)
    listing = folder / CHECKSUMS
    if not folder.is_dir():
        return f"{folder} does not exist"
    try:
        text = listing.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{listing} is missing (the write never finished)"
    except (OSError, UnicodeDecodeError) as exc:
        return f"{listing} is unreadable: {exc}"
    entries = [line.split("  ", 1) for line in text.splitlines() if line.strip()]
    if not entries or not text.endswith("\n") or any(len(e) != 2 or len(e[0]) != 64 for e in entries):
        return f"{listing} is truncated or malformed"
    for digest, rel in entries:
        path = folder / rel
        if not path.is_file():
            return f"{path} is listed in {CHECKSUMS} but missing"
        if file_sha256(path) != digest:
            return f"{path} does not match its checksum (truncated or corrupt)"
    return None


def tree_digest(root: str | Path, files: list[Path], *, sample_above: int | None = None) -> str:
    """One digest of ``files`` (their paths relative to ``root`` and their bytes).

    ``sample_above``: files larger than this many bytes are identified by their size and 64 KiB
    read at 64 evenly spaced offsets instead of every byte, so multi-GB model weights cost
    milliseconds; another checkpoint or download differs in practically every block."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        size = path.stat().st_size
        if sample_above is not None and size > sample_above:
            block = 1 << 16
            h.update(f"sampled:{size}".encode())
            with path.open("rb") as f:
                for i in range(64):
                    f.seek((size - block) * i // 63)
                    h.update(f.read(block))
        else:
            h.update(file_sha256(path).encode())
    return h.hexdigest()


def quarantine(path: str | Path, into: str | Path, reason: str, stream: Any = None) -> Path:
    """Move a corrupt file or folder aside into ``into/<UTC time>-<pid>/`` (never delete it: it
    may be evidence of a hardware fault) and say so once on stderr. Returns the new location."""
    path = Path(path)
    dest_dir = Path(into) / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / path.name
    os.replace(path, dest)
    print(f"not trusting {path}: {reason}; moved it to {dest}", file=stream or sys.stderr)
    return dest


def write_text(dest: str | Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(dest: str | Path, data: Any) -> None:
    write_text(dest, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_jsonl(dest: str | Path, rows: list[Mapping[str, Any]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows)
    write_text(dest, text)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from exc
    return rows


# ----------------------------------------------------------------------------- provenance
def package_versions(names: tuple[str, ...] = PROVENANCE_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The checkout's commit, with ``-dirty`` when tracked files differ; None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20


def peak_memory() -> dict[str, float]:
    """Peak host RSS and, when CUDA was used, peak CUDA memory allocated (MiB)."""
    out = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def cpu_info() -> dict[str, Any]:
    """The CPU a result was computed on, torch's kernel path and threads when torch is loaded, and
    the variables pinning the kernels (params ``cpu_isa``) when set: the same code, pins and seed
    pre-trained another miniature on an AVX2 host than on an AVX-512 one (benchmarks/README, "Which
    kernels a host runs"), so a result names its path."""
    from selora.cpuisa import pinned

    model = platform.processor() or None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    out: dict[str, Any] = {"model": model, "logical_cpus": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_capability"] = torch.backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512
        out["torch_threads"] = torch.get_num_threads()
    if pin := pinned():
        out["isa_pin"] = pin
    return out


class Provenance:
    """Collects what every result file carries; start it when a phase starts."""

    def __init__(self, command: str, config: Mapping[str, Any] | None = None) -> None:
        self.command = command
        self.config = dict(config or {})
        self.started = time.time()
        self._t0 = time.perf_counter()

    def as_dict(self, **extra: Any) -> dict[str, Any]:
        return {
            "command": self.command,
            "argv": sys.argv,
            "config": self.config,
            "packages": package_versions(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": cpu_info(),
            "git_commit": git_commit(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_time_s": round(time.perf_counter() - self._t0, 3),
            **peak_memory(),
            **extra,
        }
