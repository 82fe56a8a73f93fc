"""The reference network, `selora evaluate` on run folders, and its errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from selora.cli import main
from selora.config import load_params

SETUP = "synthetic-cxr-32"
MIN_REAL_ACCURACY = 0.9  # what the reference network must reach on real test images in these tests


SETTINGS = ("evaluate.reference_steps=400", "evaluate.kid_subsets=10")


def _params(tmp: Path, *extra: str):
    return load_params(None, [f"paths.results={tmp / 'results'}", *SETTINGS, *extra])


@pytest.fixture(scope="module")
def cxr(tmp_path_factory) -> Path:
    """400 synthetic CXR phantoms at 32 px: 280 train, 40 validation, 80 test (a prepared set)."""
    from selora.synthetic import make_cxr

    cfg = load_params(None, ["synthetic.cxr.n_images=400", "synthetic.cxr.size=32"]).synthetic.cxr
    out = tmp_path_factory.mktemp("data") / "prepared" / SETUP
    make_cxr(cfg, out, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, cxr, synthetic_dirs) -> dict:
    """The reference of ``cxr``, with a domain probe against the session's natural scenes."""
    from selora.metrics.fit_reference import fit_setup

    tmp = tmp_path_factory.mktemp("eval")
    natural = synthetic_dirs["natural"]
    params = _params(tmp, f"evaluate.natural_reference={natural}")
    info = fit_setup(params, SETUP, data=cxr)
    return {"tmp": tmp, "params": params, "info": info, "ref": tmp / "results" / "reference" / SETUP,
            "natural": natural}


def _test_rows(cxr: Path) -> list[dict]:
    from selora.imagefolder import read_manifest

    return read_manifest(cxr, ("test",))


def write_run(
    results: Path,
    method: str,
    seed: int,
    rows: list[dict],
    images: list[Image.Image],
    variant: str = "default",
) -> Path:
    """A run folder in the runlayout format whose sample i was 'generated' from test row i."""
    run = results / "runs" / SETUP / method / variant / f"seed{seed}"
    folder = run / "samples" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = []
    for i, (row, img) in enumerate(zip(rows, images, strict=True)):
        name = f"{i:05d}.png"
        img.save(folder / name)
        manifest.append(
            {
                "file_name": name,
                "prompt": row["text"],
                "source_id": row["source_id"],
                "real_image": row["path"],
                "seed": seed,
                "k": 0,
            }
        )
    (run / "samples" / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    return run


def _noisy(path: str, sigma: float, seed: int) -> Image.Image:
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    arr = arr + np.random.default_rng(seed).normal(0, sigma, arr.shape[:2])[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_reference_network_reads_real_findings_before_it_judges_generated_images(fitted):
    info = fitted["info"]
    net = info["reference_network"]
    assert net["gate"]["passed"] and net["gate"]["metric"] == "balanced_accuracy"
    real = net["real_test"]
    assert real["n"] == 80 and real["balanced_accuracy"] >= MIN_REAL_ACCURACY
    assert real["accuracy"] > real["majority_baseline"] + 0.15
    assert info["feature_space"] == "reference" and info["real_features"]["dims"] == {
        "fid": 128,
        "fid_mid": 32,
        "fid_low": 16,
    }
    for name in ("reference.json", "reference.safetensors", "real_features.safetensors"):
        assert (fitted["ref"] / name).is_file()


def test_the_real_vs_real_floor_lies_far_below_a_degraded_set(fitted, cxr):
    """Real training images against the real test images, as many as a run generates: the floor
    of every FID. Ten draws of 80 from the train split, each far below what blurred test images
    (the same films, a visible degradation) score — and above zero: a different sample of films.
    Measured (this fixture, 2 threads): floor FID-ref 3.4 / 0.023 / 0.010 (128 / 32 / 16) against
    blurred 37.4 / 5.9 / 0.47, 11× / 250× / 46× apart; the bound asks for 3×."""
    from selora.metrics.evaluate import evaluate_run

    floor = fitted["info"]["real_floor"]
    assert floor["split"] == "train" and floor["n_images"] == 80 and floor["draws"] == 10
    assert set(floor) >= {"fid", "fid_mid", "fid_low", "kid_mean"}
    rows = _test_rows(cxr)
    blurred = [Image.open(r["path"]).filter(ImageFilter.GaussianBlur(2)) for r in rows]
    run = write_run(fitted["tmp"] / "results", "lora", 7, rows, blurred)
    m = evaluate_run(fitted["params"], run, data=cxr)
    assert m["real_floor"] == floor  # carried into every run's metrics for the report
    for role in ("fid", "fid_mid", "fid_low"):
        assert 0 < floor[role]["mean"] < m[role] / 3, role
        assert floor[role]["std"] > 0, role  # the draws differ


def test_reference_network_fits_on_one_thread_and_is_deterministic_for_a_seed(cxr, monkeypatch):
    from selora.imagefolder import read_manifest
    from selora.metrics import reference
    from selora.metrics.reference import fit_reference

    rows = read_manifest(cxr, ("train",))[:64]
    seen, load = [], reference._load
    monkeypatch.setattr(reference, "_load", lambda *a: seen.append(torch.get_num_threads()) or load(*a))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the fit runs on one thread whatever the caller's count, and restores it
        a, _ = fit_reference("synthetic-cxr", 32, rows, [], steps=8, seed=3)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    b, _ = fit_reference("synthetic-cxr", 32, rows, [], steps=8, seed=3)
    c, _ = fit_reference("synthetic-cxr", 32, rows, [], steps=8, seed=4)
    sa, sb, sc = a.net.state_dict(), b.net.state_dict(), c.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_a_reference_network_below_the_gate_is_refused(tmp_path, cxr):
    from selora.metrics.fit_reference import ReferenceGateError, fit_setup

    params = load_params(
        None,
        [f"paths.results={tmp_path}", "evaluate.reference_steps=2", "evaluate.min_finding_accuracy=0.99"],
    )
    with pytest.raises(ReferenceGateError, match=r"below evaluate.min_finding_accuracy 0.99"):
        fit_setup(params, SETUP, data=cxr)
    assert not (tmp_path / "reference" / SETUP).exists()


def test_real_images_score_zero_and_degradations_show_in_the_right_metric(fitted, cxr):
    from selora.metrics.evaluate import evaluate_run

    params, results, rows = fitted["params"], fitted["tmp"] / "results", _test_rows(cxr)
    real = write_run(results, "lora", 0, rows, [Image.open(r["path"]) for r in rows])
    m = evaluate_run(params, real, data=cxr)
    assert abs(m["fid"]) < 1e-6 and abs(m["fid_mid"]) < 1e-6 and abs(m["fid_low"]) < 1e-6
    assert m["domain_share"] >= 0.95  # real radiographs are called radiographs
    assert m["colour_cast"] == 0.0 and m["colour_cast_real"] == 0.0  # grayscale films
    assert m["finding_accuracy"] == pytest.approx(
        fitted["info"]["reference_network"]["real_test"]["accuracy"]
    )
    assert m["feature_space"]["name"] == "reference" and "not Inception" in m["feature_space"]["label"]
    assert m["clip_score"] is None and m["n_generated"] == 80 and m["prompts_covered"] == 80
    assert json.loads((real / "metrics.json").read_text())["provenance"]["command"] == "selora evaluate"
    # The generated features are kept for the report's bootstrap: row i came from test prompt i, and
    # with the reference's real features they give the same FID as metrics.json.
    from safetensors.torch import load_file

    from selora.metrics.evaluate import load_run_features
    from selora.metrics.stats import frechet_distance

    feats, real_index = load_run_features(real / m["features_file"])
    assert real_index.tolist() == list(range(80)) and feats.shape[0] == 80
    ref_real = load_file(results / "reference" / SETUP / "real_features.safetensors")["fid"]
    assert frechet_distance(ref_real.numpy(), feats.numpy()) == pytest.approx(m["fid"], abs=1e-6)
    # So are the findings the reference network read in each image, with what its prompt says:
    # they give metrics.json's balanced accuracy again (the report resamples them).
    from selora.metrics.evaluate import load_run_findings
    from selora.metrics.reference import balanced_accuracy

    read = load_run_findings(real / m["features_file"])
    assert read is not None and read[0].shape == read[1].shape and read[0].shape[0] == 80
    assert balanced_accuracy(*read) == pytest.approx(m["finding_balanced_accuracy"], abs=1e-12)

    fids, kids = [], []
    for i, sigma in enumerate((8.0, 30.0)):
        noisy = write_run(results, "lora", i + 1, rows, [_noisy(r["path"], sigma, i) for r in rows])
        n = evaluate_run(params, noisy, data=cxr)
        fids.append(n["fid"])
        kids.append(n["kid_mean"])
    assert 0.01 < fids[0] < fids[1] and kids[0] < kids[1]
    assert abs(m["kid_mean"]) < 0.1 * kids[1]

    # The same real images under the wrong prompts: FID cannot see it, finding accuracy does.
    shifted = [Image.open(rows[(i + 1) % len(rows)]["path"]) for i in range(len(rows))]
    wrong = evaluate_run(params, write_run(results, "dylora", 0, rows, shifted), data=cxr)
    assert abs(wrong["fid"]) < 1e-6
    assert wrong["finding_balanced_accuracy"] < m["finding_balanced_accuracy"] - 0.3


def test_domain_probe_tells_real_radiographs_from_natural_scenes(fitted, cxr):
    """Fitted on real training radiographs vs natural training scenes (the natural set's own
    radiographs left out), it separates the held-out splits; scored as a run, real test images are
    called in-domain and natural test scenes under the same prompts are not."""
    from selora.imagefolder import read_manifest
    from selora.metrics.evaluate import evaluate_run

    probe = fitted["info"]["domain_probe"]
    natural = read_manifest(fitted["natural"])
    train_scenes = [r for r in natural if r["split"] == "train" and r["labels"]["kind"] == "scene"]
    assert probe["n_train"] == {"real": 280, "natural": len(train_scenes)}
    assert len(train_scenes) < sum(r["split"] == "train" for r in natural)  # radiographs were left out
    held = probe["held_out"]
    assert held["n_real"] == 80 and held["accuracy"] >= 0.97 and held["balanced_accuracy"] >= 0.97
    assert held["real_called_real"] >= 0.95 and held["natural_called_real"] <= 0.05
    assert (fitted["ref"] / "domain_probe.safetensors").is_file()

    scenes = [r for r in natural if r["split"] == "test" and r["labels"]["kind"] == "scene"]
    rows = _test_rows(cxr)[: len(scenes)]
    run = write_run(fitted["tmp"] / "results", "adalora", 7, rows, [Image.open(r["path"]) for r in scenes])
    m = evaluate_run(fitted["params"], run, data=cxr)
    assert m["domain_share"] <= 0.05 and m["domain_probe"] == probe
    assert "domain_share_skipped" not in m
    assert m["colour_cast"] > 0.05 and m["colour_cast_real"] == 0.0  # coloured scenes show a cast


def test_an_absent_natural_set_fails_before_the_reference_trains(tmp_path, cxr):
    from selora.errors import DatasetFormatError
    from selora.metrics.fit_reference import fit_setup

    params = _params(tmp_path, "evaluate.reference_steps=1000000",  # would take hours if it trained
                     f"evaluate.natural_reference={tmp_path / 'natural'}")
    with pytest.raises(DatasetFormatError, match=r"natural_reference: .*natural does not exist"):
        fit_setup(params, SETUP, data=cxr)


# ----------------------------------------------------------------------------- bad input
def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def _eval_args(fitted, run: Path, cxr: Path) -> list[str]:
    return [
        "evaluate",
        *(a for kv in SETTINGS for a in ("--set", kv)),
        "--set",
        f"paths.results={fitted['tmp'] / 'results'}",
        "--set",
        f"evaluate.natural_reference={fitted['natural']}",
        "--run-dir",
        str(run),
        "--data",
        str(cxr),
        "--device",
        "cpu",
    ]


def test_cli_scores_a_run_and_prints_one_line(fitted, cxr, capsys):
    rows = _test_rows(cxr)[:6]
    run = write_run(fitted["tmp"] / "results", "selora", 5, rows, [Image.open(r["path"]) for r in rows])
    code = main(_eval_args(fitted, run, cxr))
    out = capsys.readouterr().out
    assert code == 0 and "FID (reference)" in out and (run / "metrics.json").is_file()
    assert "domain_share 1.000" in out


@pytest.mark.parametrize("quiet", [True, False])
def test_a_quiet_evaluate_loads_clip_without_loading_bars(fitted, cxr, capsys, monkeypatch, quiet):
    """`selora evaluate --quiet` reaches the CLIP loader (the paper path): transformers' and diffusers'
    process-wide loading bars are off while it loads, and on again after, even when it fails."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    import selora.metrics.clip as clip
    from selora.errors import MissingWeightsError

    seen = []

    def load(name: str):
        seen.append((name, dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()))
        raise MissingWeightsError(f"no CLIP at {name}")

    monkeypatch.setattr(clip, "load_clip", load)
    rows = _test_rows(cxr)[:4]
    images = [Image.open(r["path"]) for r in rows]
    run = write_run(fitted["tmp"] / "results-quiet", "lora", int(quiet), rows, images)
    code = main([*_eval_args(fitted, run, cxr), "--set", "evaluate.clip_model=some-clip",
                 *(["--quiet"] if quiet else [])])
    assert code != 0 and "no CLIP at some-clip" in capsys.readouterr().err
    assert seen == [("some-clip", not quiet, not quiet)]
    assert dlog.is_progress_bar_enabled() and tlog.is_progress_bar_enabled()


@pytest.mark.parametrize(
    "defect, expect",
    [
        ("no-manifest", "manifest.jsonl does not exist"),
        ("missing-image", "1 listed image(s) missing"),
        ("corrupt-image", "cannot be decoded: 00001.png"),
        ("one-image", "at least 2 generated images"),
        ("wrong-prompt", "mismatched prompt manifest"),
        ("unknown-source", "not in the test split: scxr-999999"),
        ("unlisted-image", "not in manifest.jsonl"),
        ("missing-field", "missing field(s) real_image"),
    ],
)
def test_bad_run_folders_fail_with_one_clear_line(fitted, cxr, capsys, defect, expect):
    rows = _test_rows(cxr)[:4]
    results = fitted["tmp"] / "bad" / defect
    run = write_run(results, "adalora", 0, rows, [Image.open(r["path"]) for r in rows])
    manifest = run / "samples" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    if defect == "no-manifest":
        manifest.unlink()
    elif defect == "missing-image":
        (run / "samples" / "images" / "00002.png").unlink()
    elif defect == "corrupt-image":
        (run / "samples" / "images" / "00001.png").write_bytes(b"\x89PNG truncated")
    elif defect == "one-image":
        manifest.write_text(lines[0] + "\n")
        for name in ("00001.png", "00002.png", "00003.png"):
            (run / "samples" / "images" / name).unlink()
    elif defect in ("wrong-prompt", "unknown-source", "missing-field"):
        row = json.loads(lines[1])
        if defect == "wrong-prompt":
            row["prompt"] = "A different report."
        elif defect == "unknown-source":
            row["source_id"] = "scxr-999999"
        else:
            del row["real_image"]
        manifest.write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    elif defect == "unlisted-image":
        shutil.copy(run / "samples" / "images" / "00000.png", run / "samples" / "images" / "extra.png")
    code, err = _cli(_eval_args(fitted, run, cxr), capsys)
    assert code == 2 and expect in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_run_folders_parse_back_to_their_run(tmp_path):
    from selora.errors import ConfigError
    from selora.runlayout import RunId, run_id_from_path

    for run in (RunId(SETUP, "selora", "threshold-1.3", 3), RunId(SETUP, "none", "default", 0)):
        assert run_id_from_path(tmp_path / "runs" / run.relpath) == run
        assert run_id_from_path(Path("results/runs") / run.relpath) == run  # relative to the cwd
    layout = r"^run folder .*: expected \.\.\./<setup>/<method>/<variant>/seed<N>$"
    for bad in ("seed", "seedx", "latest"):
        with pytest.raises(ConfigError, match=layout):
            run_id_from_path(tmp_path / "runs" / SETUP / "lora" / "default" / bad)


def test_a_run_folder_outside_the_layout_fails_with_one_clear_line(fitted, cxr, capsys):
    rows = _test_rows(cxr)[:3]
    run = write_run(fitted["tmp"] / "odd", "lora", 0, rows, [Image.open(r["path"]) for r in rows])
    odd = run.rename(run.with_name("latest"))
    code, err = _cli(_eval_args(fitted, odd, cxr), capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"--run-dir {odd}: expected .../<setup>/<method>/<variant>/seed<N>" in err


def test_absent_reference_and_absent_inception_weights_say_what_to_do(
    fitted, cxr, capsys, tmp_path, monkeypatch
):
    rows = _test_rows(cxr)[:3]
    run = write_run(tmp_path / "results", "lora", 0, rows, [Image.open(r["path"]) for r in rows])
    code, err = _cli(
        [
            "evaluate",
            "--set",
            f"paths.results={tmp_path / 'results'}",
            "--run-dir",
            str(run),
            "--data",
            str(cxr),
        ],
        capsys,
    )
    assert code == 2 and f"selora evaluate --fit-reference --setup {SETUP}" in err

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code, err = _cli(
        [
            "evaluate",
            "--set",
            "evaluate.feature_space=inception",
            "--set",
            f"paths.results={tmp_path / 'results'}",
            "--set",
            "evaluate.reference_steps=2",
            "--set",
            "evaluate.min_finding_accuracy=0",
            "--fit-reference",
            "--setup",
            SETUP,
            "--data",
            str(cxr),
        ],
        capsys,
    )
    assert code == 2 and "weights-inception-2015-12-05-6726825d.pth" in err
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert not (tmp_path / "results" / "reference" / SETUP).exists()


def test_inception_feature_space_end_to_end(tmp_path):
    """The paper-scale path with randomly initialised weights in the real file's layout: the
    reference network that misses its gate only costs the finding accuracy (recorded why), and a
    weights file other than the fitted one is refused."""
    from test_metrics import _random_inception_weights

    from selora.errors import ConfigError
    from selora.metrics.evaluate import evaluate_run
    from selora.metrics.fit_reference import fit_setup
    from selora.synthetic import make_cxr

    data = tmp_path / "prepared" / SETUP
    make_cxr(
        load_params(None, ["synthetic.cxr.n_images=20", "synthetic.cxr.size=32"]).synthetic.cxr,
        data,
        seed=1,
        progress=False,
    )
    weights = _random_inception_weights(tmp_path / "w.pth")
    params = _params(
        tmp_path,
        f"evaluate.inception_weights={weights}",
        "evaluate.reference_steps=1",
        "evaluate.min_finding_accuracy=0.95",
    )
    info = fit_setup(params, SETUP, data=data)
    assert info["feature_space"] == "inception" and not info["reference_network"]["gate"]["passed"]
    rows = _test_rows(data)
    run = write_run(tmp_path / "results", "selora", 0, rows, [Image.open(r["path"]) for r in rows])
    m = evaluate_run(params, run, data=data)
    assert m["feature_space"]["dims"] == {"fid": 2048, "fid_mid": 192, "fid_low": 64}
    assert abs(m["fid"]) < 1e-6 and abs(m["fid_low"]) < 1e-6
    assert m["finding_accuracy"] is None and "failed its gate" in m["finding_accuracy_skipped"]
    # evaluate.natural_reference null: no domain probe, and the share is absent with why (not 0).
    assert info["domain_probe"] is None and not (tmp_path / "results" / "reference" / SETUP /
                                                 "domain_probe.safetensors").exists()
    assert m["domain_share"] is None and m["domain_share_skipped"] == "evaluate.natural_reference is null"

    # The fitted weights file changed since: refused by its hash.
    state = torch.load(weights, weights_only=True)
    state["fc.bias"] += 1
    torch.save(state, weights)
    with pytest.raises(ConfigError, match="Inception weights differ"):
        evaluate_run(params, run, data=data)
    # Params other than those the reference was fitted with: refused, naming them.
    fitted = (
        f"evaluate.inception_weights={weights}",
        "evaluate.reference_steps=1",
        "evaluate.min_finding_accuracy=0.95",
    )
    for override, key in (
        (f"evaluate.inception_weights={tmp_path / 'x.pth'}", "inception_weights"),
        ("evaluate.min_finding_accuracy=0.5", "min_finding_accuracy"),
        (f"evaluate.natural_reference={tmp_path}", "natural_reference"),
    ):
        with pytest.raises(ConfigError, match=f"fitted with other params \\({key}\\)"):
            evaluate_run(_params(tmp_path, *fitted, override), run, data=data)
