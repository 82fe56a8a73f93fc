"""The domain probe: does a generated image look like the setup's real images or like a natural scene?

FID says how far the generated set lies from the real one, not whether the images are radiographs
at all. The probe answers that per image: a logistic regression on the reference network's features,
fitted on the setup's real *training* images (label 1) against the natural scenes of
``evaluate.natural_reference`` (label 0: the embedded natural set, the miniature's pre-training
images, minus the generic radiographs it holds, which ARE radiographs).

Features: the three FID taps side by side (128 + 32 + 16 = 176-d on the embedded default). The
128-d tap alone is trained to read findings on radiographs and drops much of what tells a scene from
a film. Measured on params.yaml's sets (448 real / 3,226 natural training images; held out 128 /
174): the 128-d tap called 6–10 % of the natural test scenes real (ridge 1e-3, 1e-2) and 82–84 % of
LoRA's and SeLoRA's samples; all three taps 0 % and 98–99 %.

``selora evaluate`` reports the share of a run's samples it calls real-domain (``domain_share``):
adapters that turned the base model's scenes into radiographs score near 100 %, the base model's
scenes near 0 %.

Full-batch L-BFGS from zero weights on one thread: the fit is deterministic without a random draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selora.errors import DatasetFormatError
from selora.imagefolder import read_manifest
from selora.metrics import one_thread
from selora.metrics.frechet import TAP_ROLES
from selora.metrics.reference import ReferenceModel
from selora.synthetic.cxr import RADIOGRAPH_CAPTIONS

PROBE_FILE = "domain_probe.safetensors"
L2 = 1e-2  # ridge on the standardised weights: the two domains separate, so unpenalised weights diverge
MAX_ITER = 200


def is_radiograph(row: Mapping[str, Any]) -> bool:
    """A generic radiograph of the natural set (captioned "a chest x-ray", kind "radiograph")."""
    return row.get("text") in RADIOGRAPH_CAPTIONS or (row.get("labels") or {}).get("kind") == "radiograph"


def natural_scenes(folder: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The natural set's train and test scenes (imagefolder rows), radiographs left out."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetFormatError(
            f"evaluate.natural_reference: {folder} does not exist: write it with `selora make-synthetic` "
            "or set evaluate.natural_reference: null (no domain probe)"
        )
    out: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for row in read_manifest(folder, ("train", "test")):
        if not is_radiograph(row):
            out[row["split"]].append(row)
    if len(out["train"]) < 2 or not out["test"]:
        raise DatasetFormatError(
            f"evaluate.natural_reference: {folder} needs ≥ 2 train and ≥ 1 test scenes (radiographs "
            f"aside), has {len(out['train'])} / {len(out['test'])}"
        )
    return out


@dataclass
class DomainProbe:
    """Logistic regression on standardised reference features: p(real domain) = σ(w·z + b)."""

    weight: torch.Tensor  # [d] float64
    bias: torch.Tensor  # [] float64
    mean: torch.Tensor  # [d] of the training features
    std: torch.Tensor  # [d]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[N, d] reference features (:func:`probe_features`) → [N] logits (> 0: called real-domain)."""
        return ((features.double() - self.mean) / self.std) @ self.weight + self.bias

    def calls_real(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features) > 0

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {"weight": self.weight, "bias": self.bias.reshape(1), "mean": self.mean, "std": self.std}
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / PROBE_FILE)

    @classmethod
    def from_folder(cls, folder: Path) -> DomainProbe:
        from safetensors.torch import load_file

        t = load_file(folder / PROBE_FILE)
        return cls(t["weight"], t["bias"][0], t["mean"], t["std"])


def fit_probe(real: torch.Tensor, natural: torch.Tensor) -> DomainProbe:
    """Fit on real-domain features (label 1) vs natural ones (label 0); each class weighs half of
    the loss, so the larger natural set does not push the boundary onto the real images."""
    x = torch.cat([real, natural]).double()
    y = torch.cat([torch.ones(len(real)), torch.zeros(len(natural))]).double()
    w_class = torch.where(y > 0, 0.5 / len(real), 0.5 / len(natural))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    params = torch.zeros(z.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    with one_thread():
        opt = torch.optim.LBFGS([params], max_iter=MAX_ITER, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            opt.zero_grad()
            logit = z @ params[:-1] + params[-1]
            value = (w_class * torch.nn.functional.binary_cross_entropy_with_logits(
                logit, y, reduction="none")).sum() + 0.5 * L2 * params[:-1].square().sum()
            value.backward()
            return value

        opt.step(loss)
    p = params.detach()
    return DomainProbe(p[:-1].clone(), p[-1].clone(), mean, std)


def held_out(probe: DomainProbe, real: torch.Tensor, natural: torch.Tensor) -> dict[str, Any]:
    """Accuracy on held-out real vs natural features: overall, balanced, and per class."""
    real_ok = probe.calls_real(real).double().mean().item()
    natural_ok = (~probe.calls_real(natural)).double().mean().item()
    n_real, n_natural = len(real), len(natural)
    return {
        "accuracy": (real_ok * n_real + natural_ok * n_natural) / (n_real + n_natural),
        "balanced_accuracy": (real_ok + natural_ok) / 2,
        "real_called_real": real_ok,
        "natural_called_real": 1 - natural_ok,
        "n_real": n_real,
        "n_natural": n_natural,
    }


def probe_features(taps: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The probe's input: the reference network's taps ({role: [N, d]}) side by side."""
    return torch.cat([taps[t].double() for t in TAP_ROLES], dim=1)


def fit_domain_probe(
    model: ReferenceModel,
    real_train: Sequence[str | Path],
    real_test: Sequence[str | Path],
    scenes: Mapping[str, Sequence[Mapping[str, Any]]],
    natural: str | Path,
) -> tuple[DomainProbe, dict[str, Any]]:
    """Fit the probe on the reference network's features of the real training images against the
    natural training scenes (:func:`natural_scenes` of the folder ``natural``), and score it on both
    test splits. Returns (probe, its report)."""

    def feats(paths: Sequence[str | Path]) -> torch.Tensor:
        with one_thread():
            return probe_features(model.run(model.load(paths))[0])

    probe = fit_probe(feats(real_train), feats([r["path"] for r in scenes["train"]]))
    report = {
        "taps": list(TAP_ROLES),
        "dims": sum(model.dims[t] for t in TAP_ROLES),
        "natural": str(natural),
        "classifier": f"logistic regression (L-BFGS, L2 {L2:g} on standardised features, balanced classes)",
        "n_train": {"real": len(real_train), "natural": len(scenes["train"])},
        "held_out": held_out(probe, feats(real_test), feats([r["path"] for r in scenes["test"]])),
    }
    return probe, report
