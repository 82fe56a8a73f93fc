"""``selora evaluate``: fit a setup's evaluation reference once, then score each run against it.

Reference folder (``<results>/reference/<setup>/``, written atomically by :func:`fit_setup`)::

    reference.json               feature space, real-feature provenance, reference network report,
                                 the real test images' colour cast, the real-vs-real floor
                                 (``real_floor``: real training images scored like a run)
    real_features.safetensors    real test-split features per tap ("fid", "fid_mid", "fid_low")
    reference.safetensors        the reference network (when the setup has categorical labels)
    domain_probe.safetensors     real vs natural scenes on its features (evaluate.natural_reference)

A run's ``metrics.json`` (:func:`evaluate_run`), with the feature space named so nobody mistakes a
reference-network FID for an Inception FID::

    run                       {setup, method, variant, seed}
    feature_space             {name: inception | reference, label, dims: {fid, fid_mid, fid_low}, ...}
    fid, fid_mid, fid_low     Fréchet distance at the final / middle / low tap (Inception: the paper's
                              "FID", "FID 192", "FID 64")
    kid_mean, kid_std, kid_subsets, kid_subset_size     KID on the final tap
    clip_score, clip_score_real, clip_model             null when evaluate.clip_model is null
    finding_accuracy, finding_balanced_accuracy, finding_exact_match, findings (per finding)
                              null (+ finding_accuracy_skipped: why) without a passing reference network
    colour_cast, colour_cast_real  mean |R − B| of the generated and of the real test images ([0, 1]
                              scale; 0: grayscale; the real one is the reference's, null for a
                              reference fitted before it was recorded)
    real_floor                the reference's real-vs-real FID/KID (null for a reference fitted before it)
    domain_share, domain_probe  share of the images the domain probe (:mod:`selora.metrics.domain`) calls
                              real-domain, and the probe's held-out report; null (+ domain_share_skipped:
                              why) without a probe
    n_generated, n_real, prompts_covered, test_prompts, reference, features_file, provenance

and ``features.safetensors`` beside it: the generated images' final-tap features ("fid", float64
[N, d]) and "real_index" [N] (the row of the reference's real features whose prompt made each
image), so ``selora report`` can bootstrap FID/KID over test images without re-extracting; with
scored findings also "finding_pred" / "finding_target" [N, K], for the bootstrap of the finding
balanced accuracy.
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
from selora.io import Provenance, atomic_dir, atomic_path, file_sha256, report_leftovers, write_json
from selora.metrics import frechet
from selora.metrics.domain import DomainProbe, fit_domain_probe, natural_scenes, probe_features
from selora.metrics.frechet import TAP_ROLES
from selora.metrics.reference import (
    ReferenceModel,
    encode_labels,
    finding_scores,
    fit_reference,
    label_schema,
)
from selora.metrics.samples import (
    Sample,
    SampleError,
    colour_cast,
    load_images,
    match_test_rows,
    read_samples,
)
from selora.runlayout import RunId, data_identity, prepared_dir, run_id_from_path

REFERENCE_JSON = "reference.json"
REAL_FEATURES = "real_features.safetensors"
METRICS_JSON = "metrics.json"
RUN_FEATURES = "features.safetensors"
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


def _extract(
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


def _inception(params: Params, device: str) -> tuple[Any, dict[str, Any]]:
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


def _fit_params(params: Params) -> dict[str, Any]:
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
    inception = _inception(params, device) if space == "inception" else None  # fail fast on absent weights
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
        "fitted_with": _fit_params(params),
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
            return _extract(inception[0], load_images(chunk, mode="RGB"), device)
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


def run_id_of(params: Params, run_dir: Path) -> RunId:
    """The run ``--run-dir`` holds, its setup checked against params."""
    run = run_id_from_path(run_dir, "--run-dir")
    params.setup(run.setup)
    return run


def evaluate_run(
    params: Params,
    run_dir: str | Path,
    reference: str | Path | None = None,
    data: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Score one run's samples; writes and returns ``<run_dir>/metrics.json``. ``progress=False``
    (``--quiet``) keeps the CLIP loader's bars out of the job log."""
    from safetensors.torch import load_file

    prov = Provenance("selora evaluate", params.raw)
    run_dir = Path(run_dir)
    report_leftovers(run_dir, of=METRICS_JSON)
    samples = read_samples(run_dir)
    run = run_id_of(params, run_dir)

    # The reference and the prepared test split it was fitted on, both checked current.
    ref_dir = Path(reference) if reference else reference_dir(params, run.setup)
    ref = _current_reference(params, ref_dir, run.setup)
    test_rows = _test_rows(Path(data) if data else prepared_dir(params, run.setup), ref, ref_dir, run.setup)
    matched = match_test_rows(samples, test_rows, str(run_dir / "samples" / "manifest.jsonl"))
    paths = [s.path for s in samples]

    # Features of the generated images (and the findings the reference network reads in them).
    rgb = load_images(paths, mode="RGB")  # uint8 [N, 3, H, W]: Inception's input and the colour cast's
    model = pred = target = ref_taps = None
    net_info = ref.get("reference_network")
    if net_info is not None:
        model = ReferenceModel.from_folder(ref_dir, net_info["architecture"])
        ref_taps, pred = model.run(model.load(paths))  # reference features, predicted findings [N, K]
        target = encode_labels(matched, model.schema)  # what each image's prompt says [N, K]
    if ref["feature_space"] == "inception":
        fake = _inception_features(params, ref, ref_dir, rgb, device)
    else:
        assert ref_taps is not None  # the reference-network space: its taps are the features
        fake = ref_taps
    real = load_file(ref_dir / REAL_FEATURES)

    # The scores: FID at each tap, KID, CLIP score, finding accuracy, in-domain share.
    ev = params.evaluate
    metrics: dict[str, Any] = {
        "run": {"setup": run.setup, "method": run.method, "variant": run.variant, "seed": run.seed},
        "feature_space": {k: v for k, v in ref["real_features"].items() if k not in ("split", "n")},
        "n_generated": len(samples),
        "n_real": ref["real_features"]["n"],
        "prompts_covered": len({s.source_id for s in samples}),
        "test_prompts": len(test_rows),
    }
    metrics.update(distances(real, fake, params))
    metrics.update(_clip_scores(ev.clip_model, samples, test_rows, device, progress))
    metrics.update(_finding_metrics(ref, model, pred, target))
    metrics.update(_domain_share(ref, ref_dir, ref_taps))
    metrics["colour_cast"] = colour_cast(rgb)
    metrics["colour_cast_real"] = ref.get("colour_cast_real")  # null: a reference fitted before it
    metrics["real_floor"] = ref.get("real_floor")  # likewise

    # What was scored (metrics are always recomputed, never reused: these only make it traceable).
    metrics["reference"] = str(ref_dir)
    metrics["inputs"] = {
        "samples_manifest_sha256": file_sha256(run_dir / "samples" / "manifest.jsonl"),
        "reference_sha256": file_sha256(ref_dir / REFERENCE_JSON),
    }
    position = {str(r["source_id"]): i for i, r in enumerate(test_rows)}  # the real features' order
    real_index = torch.tensor([position[s.source_id] for s in samples], dtype=torch.int64)
    findings = None  # the per-image reads behind finding_balanced_accuracy: the report resamples them
    if metrics.get("finding_accuracy") is not None:
        assert pred is not None and target is not None
        findings = (pred, target)
    save_run_features(run_dir / RUN_FEATURES, fake["fid"], real_index, prov.as_dict(), findings)
    metrics["features_file"] = RUN_FEATURES
    metrics["provenance"] = prov.as_dict()
    write_json(run_dir / METRICS_JSON, metrics)
    return metrics


def _refit(setup: str) -> str:
    return f"rerun `selora evaluate --fit-reference --setup {setup}`"


def _current_reference(params: Params, ref_dir: Path, setup: str) -> dict[str, Any]:
    """reference.json of ``ref_dir``, refused when the params ask for another feature space or
    were changed in a key the reference was fitted with."""
    ref = load_reference(ref_dir, setup)
    space = feature_space(params)
    refit = _refit(setup)
    if ref["feature_space"] != space:
        raise ConfigError(
            f"{ref_dir} holds {ref['feature_space']} features but params ask for {space}: {refit}"
        )
    stale = {k: v for k, v in _fit_params(params).items() if ref.get("fitted_with", {}).get(k) != v}
    if stale:
        raise ConfigError(f"{ref_dir} was fitted with other params ({', '.join(sorted(stale))}): {refit}")
    return ref


def _test_rows(data: Path, ref: dict[str, Any], ref_dir: Path, setup: str) -> list[dict[str, Any]]:
    """The prepared test rows, refused unless they are the preparation the reference was fitted on."""
    rows = read_manifest(data)
    if split_hash(rows) != ref["split_hash"] or ref.get("data_identity") != data_identity(data):
        # Same split but other image bytes (a re-preparation) makes the real features stale too.
        raise DatasetFormatError(f"{data} is not the preparation {ref_dir} was fitted on: {_refit(setup)}")
    return [r for r in rows if r["split"] == "test"]


def _inception_features(params: Params, ref: dict[str, Any], ref_dir: Path, images: torch.Tensor,
                        device: str) -> dict[str, torch.Tensor]:
    """The generated images' Inception features, with the weights the reference was fitted with."""
    net, desc = _inception(params, device)
    if desc["weights_sha256"] != ref["real_features"].get("weights_sha256"):
        raise ConfigError(
            f"the Inception weights differ from those {ref_dir} was fitted with: {_refit(ref['setup'])}"
        )
    return _extract(net, images, device)


def _clip_scores(clip_model: str | None, samples: list[Sample], test_rows: list[dict[str, Any]],
                 device: str, progress: bool = True) -> dict[str, Any]:
    """CLIP score of the samples with their prompts and of the real test images with theirs."""
    out: dict[str, Any] = {"clip_model": clip_model, "clip_score": None, "clip_score_real": None}
    if not clip_model:
        return out
    from selora.basemodel import loading_bars
    from selora.metrics.clip import clip_score, load_clip

    with loading_bars(progress):
        clip, processor = load_clip(clip_model)
    clip = clip.to(device)
    out["clip_score"] = clip_score(
        load_images([s.path for s in samples], "RGB").to(device), [s.prompt for s in samples], clip, processor
    )
    out["clip_score_real"] = clip_score(
        load_images([r["path"] for r in test_rows], "RGB").to(device),
        [r["text"] for r in test_rows],
        clip,
        processor,
    )
    return out


def _finding_metrics(ref: dict[str, Any], model: ReferenceModel | None, pred: torch.Tensor | None,
                     target: torch.Tensor | None) -> dict[str, Any]:
    """How often the findings the reference network reads (``pred``) match the prompts' (``target``)
    (null with why when there is no network, or it failed its gate on real images)."""
    net_info = ref.get("reference_network")
    if net_info is None:
        return {"finding_accuracy": None,
                "finding_accuracy_skipped": ref.get("reference_network_skipped", "no reference network")}
    if not net_info["gate"]["passed"]:
        return {"finding_accuracy": None, "finding_accuracy_skipped": (
            f"reference network failed its gate on real images (balanced accuracy "
            f"{net_info['real_test']['balanced_accuracy']:.3f} < {net_info['gate']['min_finding_accuracy']})"
        )}
    assert model is not None and pred is not None and target is not None
    scores = finding_scores(pred, target, model.schema)
    return {
        "finding_accuracy": scores["accuracy"],
        "finding_balanced_accuracy": scores["balanced_accuracy"],
        "finding_exact_match": scores["exact_match"],
        "findings": scores,
        "reference_real_test": net_info["real_test"],
    }


def _domain_share(ref: dict[str, Any], ref_dir: Path, taps: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """The share of the samples the domain probe calls real-domain; null with the reason when the
    reference holds no probe (never 0: no probe is not "no radiographs")."""
    probe_info = ref.get("domain_probe")
    if probe_info is None or taps is None:
        why = ref.get("domain_probe_skipped", "the reference holds no domain probe")
        return {"domain_share": None, "domain_share_skipped": why}
    called = DomainProbe.from_folder(ref_dir).calls_real(probe_features(taps))
    return {"domain_share": float(called.double().mean()), "domain_probe": probe_info}


def save_run_features(path: Path, features: torch.Tensor, real_index: torch.Tensor,
                      provenance: dict[str, Any],
                      findings: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Write a run's generated features and their test-prompt rows atomically (small: N × d), and,
    when the findings were scored, what the reference network read in each image and what its
    prompt said (``finding_pred``, ``finding_target`` [N, K]; -1: a value it was not trained on)."""
    from safetensors.torch import save_file

    tensors = {"fid": features.double().contiguous(), "real_index": real_index.contiguous()}
    if findings is not None:
        tensors["finding_pred"], tensors["finding_target"] = (t.long().contiguous() for t in findings)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, tmp, metadata={"provenance": json.dumps(provenance, default=str)})


def load_run_features(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, d], real_index [N]) written by :func:`save_run_features`."""
    from safetensors.torch import load_file

    data = load_file(path)
    return data["fid"], data["real_index"]


def load_run_findings(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(finding_pred, finding_target) [N, K] written by :func:`save_run_features`; None for a run
    whose findings were not scored (or evaluated before they were kept)."""
    from safetensors.torch import load_file

    data = load_file(path)
    if "finding_pred" not in data:
        return None
    return data["finding_pred"], data["finding_target"]


__all__ = ["ReferenceGateError", "SampleError", "evaluate_run", "feature_dims", "feature_space", "fit_setup"]
