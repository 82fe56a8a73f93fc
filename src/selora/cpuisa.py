"""Pin the CPU's SIMD kernel path (params ``cpu_isa``), so that x86-64 CPUs compute the same bits.

torch picks its CPU kernels by what the processor offers, in three libraries: ATen's vectorised
operations, oneDNN's convolutions and MKL's matrix products each take AVX-512 where the CPU has
it and AVX2 where it has not. The two paths round differently, and a model far from convergence
amplifies that: the embedded miniature pre-trained on an AVX-512 and on an AVX2 host (same code,
pins, seed and threads) became two base models whose grids disagree on every FID-ref
(benchmarks/README, "Which kernels a host runs"). Pinning all three to AVX2, which nearly every
x86-64 CPU since 2013-2015 has, makes such hosts run one path.

Each library reads its variable once, when it first computes, so ``selora`` sets them from the
params before a phase imports torch (:func:`selora.cli.main`); a process that has already loaded
torch must have been started with them.
"""

from __future__ import annotations

import os
import sys

# What each value sets: ATen's dispatch, oneDNN's ISA ceiling, MKL's instruction ceiling.
PINS: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
VARIABLES = tuple(dict.fromkeys(k for env in PINS.values() for k in env))


def pin_cpu_isa(isa: str | None) -> dict[str, str]:
    """Set the environment variables of ``isa`` (null: leave the libraries their own choice) and
    return them. Raises :class:`~selora.errors.ConfigError` for an unknown value, or when torch is
    already loaded in this process without them (its kernels may already be chosen)."""
    from selora.errors import ConfigError

    if isa is None:
        return {}
    if isa not in PINS:
        raise ConfigError(f"cpu_isa: {isa!r} is not one of {', '.join(PINS)} (or null)")
    env = PINS[isa]
    missing = {k: v for k, v in env.items() if os.environ.get(k) != v}
    if missing and "torch" in sys.modules:
        raise ConfigError(
            f"cpu_isa: {isa}: torch is already loaded in this process, too late to choose its kernels; "
            "start the process with " + " ".join(f"{k}={v}" for k, v in env.items())
        )
    os.environ.update(missing)
    return dict(env)


def pinned() -> dict[str, str]:
    """The pin variables set in this process's environment (for provenance)."""
    return {k: os.environ[k] for k in VARIABLES if k in os.environ}
