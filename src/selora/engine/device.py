"""Which device a phase runs on and on how many threads, resolved in one place for pre-training,
training, sampling and evaluation, and how much memory it holds (the ``memory.csv`` log)."""

from __future__ import annotations

import psutil
import torch

from selora.errors import ConfigError


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    ``setting`` names where the value came from (a params key or a command-line option), so that
    the error for a name that cannot be used says what to change.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:  # torch's message lists the device types it knows
        raise ConfigError(f"{setting} is {name!r}, which is not a device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} is {name!r} but CUDA is not available on this machine")
    return device


def use_threads(threads: int | None) -> None:
    """Run torch on the params' thread count; ``None`` keeps torch's default. Set by the phase itself
    because runners differ: Snakemake exports a rule's ``threads`` as OMP_NUM_THREADS, ``dvc repro``
    starts every stage with the host's cores, and CPU results depend on the count."""
    if threads:
        torch.set_num_threads(threads)


def memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reading; CPU: current resident set size."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return round(peak, 1)
    return round(psutil.Process().memory_info().rss / 2**20, 1)
