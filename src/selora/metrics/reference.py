"""The reference network of the embedded default: a feature space for FID/KID and a finding reader.

No Inception or CLIP weights exist offline, so, the way MNIST-style FIDs use a LeNet, a small CNN
is trained on the setup's *real* training images to read their structured labels (for the
synthetic CXR set: :data:`selora.findings.FINDINGS`, one classification head per finding).

- Its pooled activations give FID/KID "in the reference feature space" at three depths, named like
  the Inception taps: ``fid`` (penultimate, 128-d), ``fid_mid`` (block 2, 32-d), ``fid_low``
  (block 1, 16-d). They are not Inception FIDs and tables say so.
- Its predictions on a generated image, compared with the labels of the real test record whose
  prompt generated it, give the **finding accuracy**: does the image show what its prompt says?

It judges generated images only after reaching ``evaluate.min_finding_accuracy`` (balanced) on the
real test split. Training is seeded and takes seconds on two CPU cores at 32 px.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selora.metrics import one_thread
from selora.metrics.samples import load_images

WIDTHS = (16, 32, 64)
HIDDEN = 128
# Width of each FID tap: the hidden layer, then the middle and the first convolution block.
FEATURE_DIMS = {"fid": HIDDEN, "fid_mid": WIDTHS[1], "fid_low": WIDTHS[0]}
MAX_SIZE = 64  # larger images are resized down: the network reads coarse findings
BATCH = 32
LR = 2e-3
EVAL_EVERY = 50
MAX_CLASSES = 20

LabelSchema = dict[str, tuple[str, ...]]


def label_schema(dataset: str, rows: Sequence[Mapping[str, Any]]) -> LabelSchema:
    """The categorical labels the network learns: for the synthetic CXR set the registered FINDINGS
    with the values that occur in ``rows`` (a finding the data set does not vary, see
    ``synthetic.cxr.findings``, is left out: reading a constant would inflate the accuracy),
    otherwise every label key present in all rows with 2–20 distinct scalar values (empty = none
    usable)."""
    from selora.data.registry import dataset_specs

    fixed = next((d.findings for d in dataset_specs() if d.name == dataset), None)  # as registered
    if fixed is not None:
        seen = {k: {str((r.get("labels") or {}).get(k)) for r in rows} for k in fixed}
        kept = {k: tuple(v for v in values if v in seen[k]) for k, values in fixed.items()}
        return {k: v for k, v in kept.items() if len(v) >= 2}
    if not rows:
        return {}
    keys = set.intersection(*(set((r.get("labels") or {}).keys()) for r in rows))
    schema: LabelSchema = {}
    for key in sorted(keys):
        values = [r["labels"][key] for r in rows]
        if all(isinstance(v, str | bool | int) for v in values):
            distinct = sorted({str(v) for v in values})
            if 2 <= len(distinct) <= MAX_CLASSES:
                schema[key] = tuple(distinct)
    return schema


def encode_labels(rows: Sequence[Mapping[str, Any]], schema: LabelSchema) -> torch.Tensor:
    """[N, K] class indices in schema order; -1 for a value the schema does not know."""
    out = torch.full((len(rows), len(schema)), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        labels = row.get("labels") or {}
        for j, (key, values) in enumerate(schema.items()):
            value = str(labels.get(key))
            if value in values:
                out[i, j] = values.index(value)
    return out


class ReferenceNet(nn.Module):
    """Three conv + ReLU + max-pool blocks (each halves the size), a 128-d hidden layer and one
    classification head per label."""

    def __init__(self, channels: int, classes: Sequence[int]) -> None:
        super().__init__()
        blocks, c_in = [], channels
        for width in WIDTHS:
            blocks.append(nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
            c_in = width
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(4)  # keeps where a finding is (left/right, upper/lower)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(WIDTHS[-1] * 16, HIDDEN), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(HIDDEN, n) for n in classes)

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """x: float [N, C, S, S] in [0, 1] → (taps {role: [N, d]}, logits per head [N, n_k])."""
        h = (x - 0.5) / 0.25
        pooled = []
        for block in self.blocks:
            h = block(h)  # [N, w, S/2^i, S/2^i]
            pooled.append(h.mean(dim=(2, 3)))
        z = self.hidden(self.pool(h))  # [N, 128]
        taps = {"fid": z, "fid_mid": pooled[1], "fid_low": pooled[0]}
        return taps, [head(z) for head in self.heads]


@dataclass
class ReferenceModel:
    """The trained network, its labels, input format and per-tap feature scales.

    Each tap is divided by the RMS of its activations on the real training images, so features are
    O(1) like Inception's: KID's polynomial kernel (x·y/d + 1)³ is designed for that scale, and
    FID-ref values stay readable. The scales are fixed at fitting time and stored with the weights.
    """

    net: ReferenceNet
    schema: LabelSchema
    image_size: int
    channels: int
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def dims(self) -> dict[str, int]:
        return dict(FEATURE_DIMS)

    def load(self, paths: Sequence[str | Path]) -> torch.Tensor:
        """uint8 [N, C, S, S] as the network reads them (grayscale for grayscale data)."""
        return _load(paths, self.channels, self.image_size)

    @torch.no_grad()
    def run(
        self, images: torch.Tensor, batch_size: int = 256
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """uint8 [N, C, S, S] → (taps {role: [N, d] float64}, predicted classes [N, K])."""
        self.net.eval()
        taps: dict[str, list[torch.Tensor]] = {}
        preds = []
        for i in range(0, len(images), batch_size):
            t, logits = self.net(images[i : i + batch_size].float() / 255)
            for k, v in t.items():
                taps.setdefault(k, []).append(v.double() / self.scales.get(k, 1.0))
            preds.append(
                torch.stack([lg.argmax(1) for lg in logits], 1)
                if logits
                else torch.empty(len(images[i : i + batch_size]), 0, dtype=torch.long)
            )
        return {k: torch.cat(v) for k, v in taps.items()}, torch.cat(preds)

    def save(self, folder: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        save_file(
            {k: v.contiguous() for k, v in self.net.state_dict().items()}, folder / "reference.safetensors"
        )
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "widths": list(WIDTHS),
            "hidden": HIDDEN,
            "labels": {k: list(v) for k, v in self.schema.items()},
            "feature_scale": self.scales,
        }

    @classmethod
    def from_folder(cls, folder: Path, arch: Mapping[str, Any]) -> ReferenceModel:
        from safetensors.torch import load_file

        schema = {k: tuple(v) for k, v in arch["labels"].items()}
        net = ReferenceNet(arch["channels"], [len(v) for v in schema.values()])
        net.load_state_dict(load_file(folder / "reference.safetensors"))
        net.eval()
        return cls(net, schema, arch["image_size"], arch["channels"], dict(arch["feature_scale"]))


def _scored(pred: torch.Tensor, target: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Finding ``j``'s predictions and targets where the target is known (-1: a value the network
    was not trained on; not scored)."""
    known = target[:, j] >= 0
    return pred[known, j], target[known, j]


def _mean_recall(p: torch.Tensor, t: torch.Tensor) -> float:
    """Mean per-class recall over the classes present in ``t`` (non-empty)."""
    return float(np.mean([float((p[t == c] == c).float().mean()) for c in torch.unique(t).tolist()]))


def balanced_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over findings of their mean per-class recall: ``finding_scores``' balanced accuracy of
    predictions [N, K] against targets [N, K], without the schema (the report's bootstrap calls it
    on resampled rows). NaN when no target is known."""
    scored = (_scored(pred, target, j) for j in range(target.shape[1]))
    per = [_mean_recall(p, t) for p, t in scored if len(t)]
    return float(np.mean(per)) if per else math.nan


def finding_scores(pred: torch.Tensor, target: torch.Tensor, schema: LabelSchema) -> dict[str, Any]:
    """Accuracy per finding, their mean, the balanced mean (mean per-class recall, so a reader that
    always says "normal" does not score well on mostly normal sets), exact match, and the majority
    baseline of ``target`` for scale."""
    per_key, per_balanced, majority = {}, {}, []
    for j, key in enumerate(schema):
        p, t = _scored(pred, target, j)
        if not len(t):
            continue
        per_key[key] = float((p == t).float().mean())
        per_balanced[key] = _mean_recall(p, t)
        majority.append(float(torch.bincount(t).max()) / len(t))
    return {
        "accuracy": float(np.mean(list(per_key.values()))),
        "balanced_accuracy": float(np.mean(list(per_balanced.values()))),
        "exact_match": float((pred == target).all(dim=1).float().mean()),
        "unscored_labels": int((target < 0).sum()),
        "per_finding": per_key,
        "per_finding_balanced": per_balanced,
        "majority_baseline": float(np.mean(majority)),
        "n": len(target),
    }


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shift by up to 2 px (replicate border), jitter contrast/brightness, add noise. No flips:
    left and right are findings."""
    n, _, s, _ = x.shape
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2, n), generator=g)
    x = torch.stack([padded[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(n)])
    contrast = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    bright = 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    return (x * contrast + bright + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _load(paths: Sequence[str | Path], channels: int, size: int) -> torch.Tensor:
    return load_images(paths, mode="L" if channels == 1 else "RGB", size=size)


def _is_grayscale(paths: Sequence[str | Path]) -> bool:
    rgb = load_images(list(paths[:32]) if len(paths) >= 2 else list(paths) * 2, mode="RGB")
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


@one_thread()  # a contextmanager is also a decorator: every call runs inside the block
def fit_reference(
    dataset: str,
    size: int,
    train: Sequence[Mapping[str, Any]],
    validation: Sequence[Mapping[str, Any]],
    steps: int,
    seed: int,
    schema: LabelSchema | None = None,
) -> tuple[ReferenceModel, dict[str, Any]]:
    """Train on ``train`` rows (with ``path`` and ``labels``); keep the step with the best balanced
    validation accuracy (the last step when there is no validation split)."""
    schema = schema if schema is not None else label_schema(dataset, train)
    if not schema:
        raise ValueError("no categorical labels to learn")
    paths = [r["path"] for r in train]
    channels, image_size = (1 if _is_grayscale(paths) else 3), min(size, MAX_SIZE)
    x8 = _load(paths, channels, image_size)  # uint8 [N, C, S, S]
    x = x8.float() / 255
    y = encode_labels(train, schema)  # [N, K]
    xv = _load([r["path"] for r in validation], channels, image_size) if len(validation) >= 2 else None
    yv = encode_labels(validation, schema) if xv is not None else None

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ReferenceNet(channels, [len(v) for v in schema.values()])
    model = ReferenceModel(net, schema, image_size, channels)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=steps)
    best = (-1.0, steps, None)
    for step in range(steps):
        net.train()
        idx = torch.randint(0, len(x), (min(BATCH, len(x)),), generator=g)
        _, logits = net(_augment(x[idx], g))
        target = y[idx]
        loss = sum(F.cross_entropy(lg, target[:, j], ignore_index=-1) for j, lg in enumerate(logits))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        last = step == steps - 1
        if xv is not None and ((step + 1) % EVAL_EVERY == 0 or last):
            score = finding_scores(model.run(xv)[1], yv, schema)["balanced_accuracy"]
            if score > best[0]:
                best = (score, step + 1, copy.deepcopy(net.state_dict()))
    if best[2] is not None:
        net.load_state_dict(best[2])
    net.eval()
    taps = model.run(x8)[0]
    model.scales = {k: float(v.square().mean().sqrt()) or 1.0 for k, v in taps.items()}
    info = {
        "steps": steps,
        "selected_step": best[1],
        "batch_size": BATCH,
        "lr": LR,
        "seed": seed,
        "augmentation": "shift ±2 px, contrast ±10 %, brightness ±5 %, noise σ 0.02; no flips",
        "n_train": len(train),
        "n_validation": len(validation),
        "validation_balanced_accuracy": best[0] if best[2] is not None else None,
    }
    return model, info
