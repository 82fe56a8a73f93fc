"""The synthetic CXR set's findings, their IU X-Ray-like priors and ``synthetic.cxr.findings``.

A module of its own, without numpy, because :mod:`selora.paramspec` needs the tables for the
param's default and check; :mod:`selora.synthetic.cxr` renders and reports them.
"""

from __future__ import annotations

from collections.abc import Mapping

from selora.errors import ConfigError

FINDINGS: dict[str, tuple[str, ...]] = {
    "heart": ("normal", "enlarged"),
    "effusion": ("none", "right", "left", "bilateral"),
    "nodule": ("none", "right upper", "right lower", "left upper", "left lower"),
    "pneumothorax": ("none", "right", "left"),
    "device": ("none", "pacemaker"),
}
# Probability of each value (same order as FINDINGS); roughly 1 in 3 cases is normal.
PRIORS: dict[str, tuple[float, ...]] = {
    "heart": (0.7, 0.3),
    "effusion": (0.7, 0.1, 0.1, 0.1),
    "nodule": (0.72, 0.07, 0.07, 0.07, 0.07),
    "pneumothorax": (0.8, 0.1, 0.1),
    "device": (0.8, 0.2),
}


def finding_priors(findings: Mapping[str, Mapping[str, float]],
                   key: str = "synthetic.cxr.findings") -> dict[str, tuple[float, ...]]:
    """Each finding's value probabilities (in FINDINGS order) from ``synthetic.cxr.findings``: the
    listed findings as given (unlisted values 0), the others always normal."""
    out = {k: (1.0,) + (0.0,) * (len(v) - 1) for k, v in FINDINGS.items()}
    for name, probs in findings.items():
        if name not in FINDINGS:
            raise ConfigError(f"{key}: unknown finding {name!r}; known: {', '.join(FINDINGS)}")
        unknown = [v for v in probs if v not in FINDINGS[name]]
        if unknown:
            raise ConfigError(f"{key}.{name}: unknown value(s) {', '.join(map(repr, unknown))}; known: "
                              f"{', '.join(FINDINGS[name])}")
        p = tuple(float(probs.get(v, 0.0)) for v in FINDINGS[name])
        if min(p) < 0 or abs(sum(p) - 1) > 1e-6:
            raise ConfigError(f"{key}.{name}: probabilities must be >= 0 and sum to 1, got {dict(probs)}")
        out[name] = p
    return out
