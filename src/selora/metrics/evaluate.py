"""``selora evaluate --run-dir``: score one run's samples against its setup's evaluation reference
(fitted once by :mod:`selora.metrics.fit_reference`).

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
from pathlib import Path
from typing import Any

import torch

from selora.config import Params
from selora.errors import ConfigError, DatasetFormatError
from selora.imagefolder import read_manifest, split_hash
from selora.io import Provenance, atomic_path, file_sha256, report_leftovers, write_json
from selora.metrics.domain import DomainProbe, probe_features
from selora.metrics.fit_reference import (
    REAL_FEATURES,
    REFERENCE_JSON,
    distances,
    extract_features,
    feature_space,
    inception_net,
    load_reference,
    reference_dir,
    reference_params,
)
from selora.metrics.reference import ReferenceModel, encode_labels, finding_scores
from selora.metrics.samples import (
    Sample,
    SampleError,
    colour_cast,
    load_images,
    match_test_rows,
    read_samples,
)
from selora.runlayout import RunId, data_identity, prepared_dir, run_id_from_path

METRICS_JSON = "metrics.json"
RUN_FEATURES = "features.safetensors"


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
    stale = {k: v for k, v in reference_params(params).items() if ref.get("fitted_with", {}).get(k) != v}
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
    net, desc = inception_net(params, device)
    if desc["weights_sha256"] != ref["real_features"].get("weights_sha256"):
        raise ConfigError(
            f"the Inception weights differ from those {ref_dir} was fitted with: {_refit(ref['setup'])}"
        )
    return extract_features(net, images, device)


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


__all__ = ["SampleError", "evaluate_run"]
