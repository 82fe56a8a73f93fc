"""``selora evaluate --fit-reference``: a setup's evaluation reference, fitted once and reused by
every run of the setup (:mod:`selora.metrics.evaluate` scores the runs against it).

Reference folder (``<results>/reference/<setup>/``, written atomically by :func:`fit_setup`)::

    reference.json               feature space, real-feature provenance, reference network report,
                                 the real test images' colour cast, the real-vs-real floor
                                 (``real_floor``: real training images scored like a run)
    real_features.safetensors    real test-split features per tap ("fid", "fid_mid", "fid_low")
    reference.safetensors        the reference network (when the setup has categorical labels)
    domain_probe.safetensors     real vs natural scenes on its features (evaluate.natural_reference)
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from selora.config import Params
from selora.errors import ConfigError, DatasetFormatError, MissingWeightsError, SeloraError
from selora.imagefolder import read_manifest, split_hash
from selora.io import Provenance, atomic_dir, file_sha256, report_leftovers, write_json
from selora.metrics import frechet
from selora.metrics.domain import fit_domain_probe, natural_scenes
from selora.metrics.frechet import TAP_ROLES
from selora.metrics.reference import (
    ReferenceModel,
    encode_labels,
    finding_scores,
    fit_reference,
    label_schema,
)
from selora.metrics.samples import colour_cast, load_images
from selora.runlayout import data_identity, prepared_dir

REFERENCE_JSON = "reference.json"
REAL_FEATURES = "real_features.safetensors"
FLOOR_DRAWS = 10  # subsets of the train split behind reference.json's real_floor
REAL_CHUNK = 256  # real images decoded at a time (a paper-scale train split is thousands)


class ReferenceGateError(SeloraError):
    """The reference network is not accurate enough on real images to judge generated ones."""


def feature_space(params: Params) -> str:
    """``inception`` or ``reference`` (auto = Inception exactly when weights are configured)."""
    space = params.evaluate.feature_space
    if space == "auto":
        return "inception" if params.evaluate.inception_weights else "reference"
    return space


def feature_dims(space: str) -> dict[str, int]:
    """Width of each FID tap (``fid``, ``fid_mid``, ``fid_low``) in a feature space, as a run scored
    there records it: what a report shows before any run is evaluated."""
    from selora.metrics import inception, reference

    dims = {"inception": inception.FEATURE_DIMS, "reference": reference.FEATURE_DIMS}
    if space not in dims:
        raise ConfigError(f"evaluate.feature_space: {space!r} is not one of {', '.join(dims)}")
    return dict(dims[space])


def reference_dir(params: Params, setup: str) -> Path:
    return Path(params.paths.results) / "reference" / setup


def extract_features(
    fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    images: torch.Tensor,
    device: str,
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(images), batch_size):
        for k, v in fn(images[i : i + batch_size].to(device)).items():
            out.setdefault(k, []).append(v.double().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def inception_net(params: Params, device: str) -> tuple[Any, dict[str, Any]]:
    from selora.metrics.inception import InceptionTaps, resolve_weights

    weights = resolve_weights(params.evaluate.inception_weights)
    net = InceptionTaps(weights).to(device)
    desc = {
        "name": "inception",
        "label": "Inception-v3 (FID weights, TF resize, float32)",
        "dims": net.dims,
        "weights": str(weights),
        "weights_sha256": file_sha256(weights),
    }
    return net, desc


def reference_params(params: Params) -> dict[str, Any]:
    """The params a reference depends on; a reference fitted with others is stale."""
    ev = params.evaluate
    return {
        "seed": params.seed,
        "reference_steps": ev.reference_steps,
        "min_finding_accuracy": ev.min_finding_accuracy,
        "inception_weights": ev.inception_weights,
        "natural_reference": ev.natural_reference,
    }


def _splits(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for r in rows:
        out[r["split"]].append(r)
    return out


def fit_setup(
    params: Params,
    setup: str,
    data: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train the reference network (if the setup has labels), check its gate, and store the real
    test features of the configured feature space. Returns the written ``reference.json``."""
    prov = Provenance("selora evaluate --fit-reference", params.raw)
    cfg = params.setup(setup)
    data = Path(data) if data else prepared_dir(params, setup)
    out = Path(out) if out else reference_dir(params, setup)
    rows = read_manifest(data)
    report_leftovers(out.parent, of=out.name)
    split = _splits(rows)
    if len(split["test"]) < 2 or not split["train"]:
        raise DatasetFormatError(
            f"{data}: need a train split and at least 2 test images, have "
            f"{len(split['train'])} train / {len(split['test'])} test"
        )
    space = feature_space(params)
    inception = inception_net(params, device) if space == "inception" else None  # fail fast on absent weights
    ev = params.evaluate
    schema = label_schema(cfg.dataset, split["train"])
    # The natural scenes are read (and checked) before the reference network trains, not after.
    scenes = natural_scenes(ev.natural_reference) if ev.natural_reference and schema else None
    info: dict[str, Any] = {
        "setup": setup,
        "dataset": cfg.dataset,
        "size": cfg.size,
        "data": str(data),
        "split_hash": split_hash(rows),
        "data_identity": data_identity(data),
        "feature_space": space,
        "fitted_with": reference_params(params),
    }
    with atomic_dir(out) as tmp:
        # The reference network reads the findings (when the data set has labels); its gate.
        model, network = _fit_network(params, setup, split, schema, space, tmp)
        info.update(network)
        # The domain probe on its features (evaluate.natural_reference).
        if model is not None:
            info.update(_fit_probe(model, split, scenes, ev.natural_reference, tmp))
        else:
            info["domain_probe"] = None
            info["domain_probe_skipped"] = "no reference network to give the domain probe features"
        # The real test images' features in the configured feature space.
        real, desc = _real_features(inception, model, [r["path"] for r in split["test"]], setup, device)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in real.items()}, tmp / REAL_FEATURES)
        info["real_features"] = {**desc, "split": "test", "n": len(split["test"])}
        info["real_floor"] = _real_floor(inception, model, split, real, setup, device, params)
        info["colour_cast_real"] = colour_cast(load_images([r["path"] for r in split["test"]], "RGB"))
        info["provenance"] = prov.as_dict()
        write_json(tmp / REFERENCE_JSON, info)
    return info


def _fit_network(params: Params, setup: str, split: dict[str, list[dict[str, Any]]], schema: Any,
                 space: str, out: Path) -> tuple[ReferenceModel | None, dict[str, Any]]:
    """Train the reference network on the real training images and score it on the real test
    images against its gate; saved into ``out``. (None, why) when the data set has no labels."""
    cfg, ev = params.setup(setup), params.evaluate
    if not schema:
        if space == "reference":
            raise ConfigError(
                f"evaluate.feature_space: setup {setup} (dataset {cfg.dataset}) has no categorical "
                "labels to train the reference network; set evaluate.inception_weights (Inception "
                "FID) instead"
            )
        return None, {"reference_network": None,
                      "reference_network_skipped": f"dataset {cfg.dataset} has no categorical labels"}
    model, training = fit_reference(
        cfg.dataset, cfg.size, split["train"], split["validation"], ev.reference_steps, params.seed, schema
    )
    test = split["test"]
    scores = finding_scores(
        model.run(model.load([r["path"] for r in test]))[1], encode_labels(test, schema), schema
    )
    passed = scores["balanced_accuracy"] >= ev.min_finding_accuracy
    network = {
        "architecture": model.save(out),
        "training": training,
        "real_test": scores,
        "gate": {"metric": "balanced_accuracy", "min_finding_accuracy": ev.min_finding_accuracy,
                 "passed": passed},
    }
    if not passed and space == "reference":
        raise ReferenceGateError(
            f"reference network for {setup} reaches balanced finding accuracy "
            f"{scores['balanced_accuracy']:.3f} on the {len(test)} real test images, below "
            f"evaluate.min_finding_accuracy {ev.min_finding_accuracy}: raise "
            "evaluate.reference_steps or check the data; it will not judge generated images"
        )
    return model, {"reference_network": network}


def _real_features(
    inception: tuple[Any, dict[str, Any]] | None, model: ReferenceModel | None, paths: list[str], setup: str,
    device: str,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Real images' features per tap [len(paths), d] and a description of the extractor; the images
    are decoded ``REAL_CHUNK`` at a time, so a paper-scale split never sits in memory whole."""
    def extract(chunk: list[str]) -> dict[str, torch.Tensor]:
        if inception is not None:
            return extract_features(inception[0], load_images(chunk, mode="RGB"), device)
        assert model is not None
        return model.run(model.load(chunk))[0]

    desc = inception[1] if inception is not None else {
        "name": "reference",
        "dims": model.dims,
        "label": f"reference CNN trained on the real {setup} training images (not Inception)",
    }
    chunks = [extract(paths[c:c + REAL_CHUNK]) for c in range(0, len(paths), REAL_CHUNK)]
    return {role: torch.cat([c[role] for c in chunks]) for role in chunks[0]}, desc


def distances(real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor], params: Params) -> dict[str, Any]:
    """FID at every tap and KID on the final one, between real and generated features [N, d] per tap:
    a run's scores, and the real-vs-real floor's per draw."""
    ev = params.evaluate
    out: dict[str, Any] = {role: frechet.fid(real[role], fake[role]) for role in TAP_ROLES}
    out.update(frechet.kid(real["fid"], fake["fid"], ev.kid_subsets, ev.kid_subset_size, seed=params.seed))
    return out


def _real_floor(
    inception: tuple[Any, dict[str, Any]] | None, model: ReferenceModel | None,
    split: dict[str, list[dict[str, Any]]], real: dict[str, torch.Tensor], setup: str, device: str,
    params: Params,
) -> dict[str, Any] | None:
    """FID/KID of real *training* images against the real test images: what a generator that drew
    the data distribution itself would score with as many images as a run generates (one per test
    prompt) — the floor under every FID of the quality table, and how much it moves with the draw
    alone. Mean ± sample std over ``FLOOR_DRAWS`` seeded subsets of the train split (the whole
    split, once, when it is no larger than the test split)."""
    train, n = split["train"], len(split["test"])
    if len(train) < 2:
        return None  # FID needs two images; the table then states no floor
    gen = torch.Generator().manual_seed(params.seed)
    draws = ([torch.randperm(len(train), generator=gen)[:n] for _ in range(FLOOR_DRAWS)]
             if len(train) > n else [torch.arange(len(train))])
    used = sorted({int(i) for d in draws for i in d})  # each image's features extracted once
    # [len(used), d] per tap
    feats, _ = _real_features(inception, model, [train[i]["path"] for i in used], setup, device)
    row = {i: k for k, i in enumerate(used)}
    values: dict[str, list[float]] = {}
    for d in draws:
        idx = torch.tensor([row[int(i)] for i in d])  # [n] rows of feats
        scores = distances(real, {role: f[idx] for role, f in feats.items()}, params)
        for k in (*TAP_ROLES, "kid_mean"):
            values.setdefault(k, []).append(scores[k])
    spread = {k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None}
              for k, v in values.items()}
    return {"split": "train", "n_train": len(train), "n_images": len(draws[0]), "draws": len(draws),
            **spread}


def _fit_probe(
    model: ReferenceModel,
    split: dict[str, list[dict[str, Any]]],
    scenes: dict[str, list[dict[str, Any]]] | None,
    natural: str | None,
    out: Path,
) -> dict[str, Any]:
    """reference.json's domain probe entries; the probe itself is saved into ``out``."""
    if scenes is None or natural is None:
        return {"domain_probe": None, "domain_probe_skipped": "evaluate.natural_reference is null"}
    paths = {k: [r["path"] for r in v] for k, v in split.items()}
    probe, report = fit_domain_probe(model, paths["train"], paths["test"], scenes, natural)
    probe.save(out)
    return {"domain_probe": report}


def load_reference(folder: Path, setup: str) -> dict[str, Any]:
    path = folder / REFERENCE_JSON
    if not path.is_file():
        raise MissingWeightsError(
            f"{path} does not exist: run `selora evaluate --fit-reference --setup {setup}` first"
        )
    return json.loads(path.read_text(encoding="utf-8"))
