"""`selora report` on a fixture of run logs written here in exactly the runlayout format."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from selora.cli import main
from selora.config import load_params
from selora.runlayout import NO_ADAPTER, RunId, grid, no_adapter_runs, run_dir

SETUP = "synthetic-cxr-32"
METHOD_INDEX = {"lora": 0, "adalora": 1, "dylora": 2, "selora": 3, NO_ADAPTER: -1}  # base: worst CLIP
FID_BASE = {"lora": 10.0, "adalora": 20.0, "dylora": 12.0, "selora": 8.0, NO_ADAPTER: 30.0}
# Generated features = real test features + noise + this mean shift: LoRA, AdaLoRA and no adapter
# are farther from the real images than SeLoRA (significant), DyLoRA is another draw of SeLoRA's
# generator (not significant), whatever the per-seed FIDs of metrics.json say.
FEATURE_SHIFT = {"lora": 0.5, "adalora": 1.0, "dylora": 0.0, "selora": 0.0, NO_ADAPTER: 2.0}
N_REAL, DIMS = 40, 8
MISREAD = {"lora": 0.4, "adalora": 0.2, "dylora": 0.1, "selora": 0.1, NO_ADAPTER: 0.5}
EXPORT_RANK = {"lora": 4, "adalora": 4, "dylora": 4}  # SeLoRA: 1 + seed; exported = 40 · rank
VARIANT_FID = {"threshold-1.0": 5.0, "threshold-1.3": 9.0, "test_interval-20": 7.0, "test_interval-80": 8.5}
PERCENT = {"lora": (0.216, 0.803), "adalora": (0.3, 1.2), "dylora": (0.216, 0.803), "selora": (0.121, 0.368)}
TEXT_MODULES = [
    f"text_model.encoder.layers.{i}.{m}"
    for i in range(2)
    for m in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "mlp.fc1",
        "mlp.fc2",
    )
]
UNET_MODULES = [
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_q",
    "down_blocks.0.resnets.0.time_emb_proj",
]
STEPS, EVERY = 120, 40


def final_rank(method: str, module_index: int, seed: int) -> int:
    return 4 if method in ("lora", "dylora") else 1 + (module_index + seed) % 5


def real_features() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N_REAL, DIMS))


def write_features_and_adapter(folder: Path, run: RunId) -> None:
    """features.safetensors (as `selora evaluate` writes it) and an exported LoRA file whose
    parameter count is known: two layers of rank r, 40 · r parameters."""
    from safetensors.torch import save_file

    from selora.metrics.evaluate import save_run_features

    draw = list(FEATURE_SHIFT).index(run.method)  # (a DyLoRA-SeLoRA twin can look significant by chance
    noise = np.random.default_rng(100 + 10 * draw + run.seed).normal(  # at 5 %; these draws do not)
        scale=0.3, size=(N_REAL, DIMS))
    feats = torch.tensor(real_features() + noise + FEATURE_SHIFT[run.method])
    # What the reference network "read": the prompts' two binary findings with a share of them
    # misread (LoRA far more often than SeLoRA: significant; DyLoRA as often: not).
    target = torch.tensor(np.random.default_rng(0).integers(0, 2, size=(N_REAL, 2)))
    flip = torch.tensor(np.random.default_rng(200 + 10 * draw + run.seed).random((N_REAL, 2))
                        < MISREAD[run.method])
    findings = (torch.where(flip, 1 - target, target), target)
    save_run_features(folder / "features.safetensors", feats, torch.arange(N_REAL), {"test": True}, findings)
    if run.method == NO_ADAPTER:
        return
    r = EXPORT_RANK.get(run.method, 1 + run.seed)
    best = folder / "train" / "adapter" / "best"
    best.mkdir(parents=True)
    save_file({"unet.l.lora_A.weight": torch.zeros(r, 10), "unet.l.lora_B.weight": torch.zeros(20, r),
               "text_encoder.t.lora_A.weight": torch.zeros(r, 5),
               "text_encoder.t.lora_B.weight": torch.zeros(5, r)}, best / "pytorch_lora_weights.safetensors")


def write_fake_run(folder: Path, run: RunId, real_images: list[Path]) -> None:
    """Training logs, samples and metrics.json of one run, with hand-made numbers."""
    idx = METHOD_INDEX[run.method]
    write_features_and_adapter(folder, run)
    if run.method == NO_ADAPTER:
        _write_samples_and_metrics(folder, run, real_images, idx)
        return
    logs = folder / "train" / "logs"
    logs.mkdir(parents=True)
    pd.DataFrame(
        {
            "step": range(STEPS),
            "epoch": [s // EVERY for s in range(STEPS)],
            "loss": [0.1 + 0.5 * math.exp(-s / 50) + 0.01 * idx for s in range(STEPS)],
            "lr": 1e-4,
        }
    ).to_csv(logs / "steps.csv", index=False)
    pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "step": [40, 80, 120],
            "val_loss": [0.3, 0.25 - 0.01 * idx, 0.26],
            "is_best": [False, True, False],
        }
    ).to_csv(logs / "validation.csv", index=False)
    pd.DataFrame(
        {
            "step": [0, 40, 80],
            "device": "cpu",
            "peak_mb": [1024 + 100 * idx + 10 * run.seed + d for d in (0, 50, 100)],
        }
    ).to_csv(logs / "memory.csv", index=False)
    rows = []
    for step in (0, 40, 80, 119):
        for part, modules in (("text_encoder", TEXT_MODULES), ("unet", UNET_MODULES)):
            for i, module in enumerate(modules):
                final = final_rank(run.method, i, run.seed)
                rank = final if run.method != "selora" else min(final, 1 + step // 40)
                rows.append({"step": step, "part": part, "module": module, "rank": rank, "fi_ratio": 1.0})
    pd.DataFrame(rows).to_csv(logs / "ranks.csv", index=False)
    te, un = PERCENT[run.method]
    pd.DataFrame(
        {
            "part": ["text_encoder", "unet"],
            "base_parameters": [1000, 2000],
            "trainable_parameters": [int(te * 10), int(un * 20)],
            "effective_parameters": [int(te * 10), int(un * 20)],
            "trainable_percent": [te, un],
            "effective_percent": [te, un],
            "adapted_layers": [12, 7],
        }
    ).to_csv(logs / "parameters.csv", index=False)
    (folder / "train" / "summary.json").write_text(
        json.dumps({"run": run.relpath, "train_time_s": 3600 + 60 * idx + run.seed, "steps": STEPS})
    )
    _write_samples_and_metrics(folder, run, real_images, idx)


def _write_samples_and_metrics(folder: Path, run: RunId, real_images: list[Path], idx: int) -> None:
    samples = folder / "samples" / "images"
    samples.mkdir(parents=True)
    manifest = []
    for i, real in enumerate(real_images):
        Image.new("RGB", (8, 8), (40 * max(idx, 0), 20 * i, 100)).save(samples / f"{i:05d}.png")
        manifest.append(
            {
                "file_name": f"{i:05d}.png",
                "prompt": f"Report number {i}. " * 3,
                "source_id": f"scxr-{i:06d}",
                "real_image": str(real),
                "seed": run.seed,
                "k": 0,
            }
        )
    (folder / "samples" / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    fid = VARIANT_FID.get(run.variant, FID_BASE[run.method]) + run.seed
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "run": {"setup": run.setup, "method": run.method, "variant": run.variant, "seed": run.seed},
                "feature_space": {
                    "name": "reference",
                    "label": "reference CNN trained on the real images (not Inception)",
                    "dims": {"fid": 128, "fid_mid": 32, "fid_low": 16},
                },
                "n_generated": 160,
                "prompts_covered": 160,
                "test_prompts": 160,
                "kid_subsets": 50,
                "kid_subset_size": 50,
                "fid": fid,
                "fid_mid": fid / 2,
                "fid_low": fid / 4,
                "kid_mean": 0.001 * fid,
                "kid_std": 0.0001,
                "clip_model": "fake-clip",
                "clip_score": 25.0 + idx + 0.1 * run.seed,
                "clip_score_real": 30.0,
                "finding_accuracy": 0.5 + 0.1 * idx,
                "finding_balanced_accuracy": 0.4 + 0.1 * idx,
                # The base model draws scenes; the adapters radiographs, a little more with the seed.
                "domain_share": 0.05 if run.method == NO_ADAPTER else 0.9 + 0.02 * idx + 0.01 * run.seed,
                "colour_cast": 0.2 if run.method == NO_ADAPTER else 0.01 * (idx + 1),
                "colour_cast_real": 0.0,
                "real_floor": {"split": "train", "n_train": 480, "n_images": 160, "draws": 5,
                               "fid": {"mean": 1.25, "std": 0.5}, "fid_mid": {"mean": 0.31, "std": 0.1},
                               "fid_low": {"mean": 0.12, "std": 0.04},
                               "kid_mean": {"mean": 0.0021, "std": 0.0009}},
                "domain_probe": {
                    "natural": "data/synthetic/natural",
                    "held_out": {"real_called_real": 1.0, "natural_called_real": 0.015, "n_real": 160,
                                 "n_natural": 66},
                },
                "reference_real_test": {
                    "n": 160,
                    "accuracy": 0.99,
                    "balanced_accuracy": 0.98,
                    "majority_baseline": 0.74,
                    "per_finding": {"heart": 1.0, "device": 0.98},
                },
            }
        )
    )


def _make_results(root: Path) -> tuple:
    params = load_params(None, [f"paths.results={root / 'results'}", f"paths.models={root / 'models'}"])
    reals = []
    for i in range(3):
        path = root / "prepared" / "test" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10 * i, 10 * i, 10 * i)).save(path)
        reals.append(path)
    for run in [*grid(params), *no_adapter_runs(params)]:
        write_fake_run(run_dir(params, run), run, reals)
    ref = root / "results" / "reference" / SETUP
    ref.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({"fid": torch.tensor(real_features())}, ref / "real_features.safetensors")
    return params, root / "results"


@pytest.fixture
def results(tmp_path) -> tuple:
    """A fresh fixture of run logs (for tests that change it)."""
    return _make_results(tmp_path)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple:
    """The fixture of run logs with the report built once (read-only tests share it)."""
    from selora.report import build_report

    params, res = _make_results(tmp_path_factory.mktemp("built"))
    return params, res, build_report(params)


def _read(results: Path, name: str) -> str:
    return (results / "tables" / name).read_text(encoding="utf-8")


def _row(md: str, first: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{md}")


# ----------------------------------------------------------------------------- aggregation
def test_mean_and_std_over_seeds_on_hand_made_numbers():
    from selora.report.aggregate import aggregate, cell, mean_std

    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    m, s, n = mean_std([2.0, None, float("nan"), 4.0])
    assert (m, n) == (3.0, 2) and s == pytest.approx(math.sqrt(2))
    m, s, n = mean_std([5.0])
    assert (m, n) == (5.0, 1) and math.isnan(s)
    assert mean_std([])[2] == 0
    assert cell(2.0, 1.0, 3, 3) == "2.000 ± 1.000"
    assert cell(3.0, math.sqrt(2), 2, 3) == "3.000 ± 1.414 ⚠ n=2/3"
    assert cell(5.0, math.nan, 1, 3) == "5.000 ⚠ n=1/3"
    assert cell(math.nan, math.nan, 0, 3) == "— (0/3)"
    df = pd.DataFrame({"method": ["a", "a", "b", "b"], "fid": [1.0, 3.0, 10.0, None]})
    agg = aggregate(df, ["method"], ["fid"]).set_index("method")
    assert agg.loc["a", "fid_mean"] == 2.0 and agg.loc["a", "fid_std"] == pytest.approx(math.sqrt(2))
    assert agg.loc["b", "fid_n"] == 1 and agg.loc["b", "fid_mean"] == 10.0


# ----------------------------------------------------------------------------- tables
def test_before_any_run_is_scored_tables_name_the_planned_feature_space():
    from selora.metrics.fit_reference import feature_dims
    from selora.report.collect import Collected
    from selora.report.header import feature_space_of

    empty = Collected(pd.DataFrame())  # no run scored yet
    for space in ("reference", "inception"):
        params = load_params(None, [f"evaluate.feature_space={space}"])
        planned = feature_space_of(empty, "synthetic-cxr-32", params)
        assert planned["name"] == space and "no run evaluated yet" in planned["label"]
        assert planned["dims"] == feature_dims(space)
    assert feature_space_of(empty, "synthetic-cxr-32")["dims"] == {}


def test_quality_table_states_its_configuration_and_aggregates_seeds(built):
    _, res, out = built
    assert out["missing"] == 0 and out["runs"] == 17  # 16 grid runs + the no-adapter run
    md = _read(res, f"quality_{SETUP}.md")
    assert "stand-in for paper Table 1" in md
    for text in (
        f"`{SETUP}`",
        "32×32 px",
        "Seeds** configured: 0, 1, 2",
        "from the logs): 120",
        "base model",
        "not Inception",
        "reads the findings (heart, device) with accuracy 0.990",
        "'fake-clip'",
        "160 generated images covering 160 of 160 test prompts; KID over 50 subsets of 50",
        "**Sampling**: DDIM, 50 steps, classifier-free guidance 7.5, 1 image per test prompt, noise "
        "seeds from 1234",
        "**Fine-tuning**: Adam, lr ",
        "calls 100.0 % of 160 real test images and 1.5 % of 66 natural scenes real",
        "0 = grayscale); real test images: 0.000",
        "160 real train images (the images the reference network was fitted on) scored against the "
        "real test images like a run (5 seeded draws of the 480, mean ± std): FID-ref 128 1.25 ± 0.5, "
        "FID-ref 32 0.31 ± 0.1, FID-ref 16 0.12 ± 0.04, KID 0.0021 ± 0.0009",
        "All configured runs",
    ):
        assert text.lower() in md.lower(), text
    header = _row(md, "Method")
    assert header[1:4] == ["FID-ref 128 ↓", "CLIP score ↑", "FID-ref 16 ↓"]
    lora, selora = _row(md, "LoRA"), _row(md, "SeLoRA")
    assert lora[1] == "11.000 ± 1.000" and lora[3] == "2.750 ± 0.250"  # FID, FID-ref 16 = FID / 4
    assert selora[1] == "**9.000 ± 1.000**"  # lowest FID in bold
    assert lora[2] == "25.10 ± 0.10" and selora[2] == "**28.10 ± 0.10**"
    assert lora[5] == "0.011 ± 0.001"  # KID, as computed (no scaling)
    # In-domain %: LoRA 0.90, 0.91, 0.92 over the seeds; the highest share in bold.
    assert header[6] == "in-domain % ↑" and lora[6] == "91.0 ± 1.0" and selora[6] == "**97.0 ± 1.0**"
    assert _row(md, "No adapter (base model)")[6] == "5.0"
    assert header[7] == "colour cast" and _row(md, "No adapter (base model)")[7] == "0.200"
    assert _row(md, "DyLoRA")[-3] == "70.0 ± 0.0"  # finding accuracy in % (last: exported params)
    summary = pd.read_csv(res / "tables" / "summary.csv")
    assert len(summary) == 17 and set(summary.status) == {"complete"}
    agg = pd.read_csv(res / "tables" / "aggregate.csv")
    row = agg[(agg.method == "lora") & (agg.variant == "default")].iloc[0]
    assert row.fid_mean == 11.0 and row.fid_std == 1.0 and row.fid_n == 3


def test_the_base_model_line_says_what_the_miniature_reads_of_its_captions(results):
    from selora.basemodel import PRETRAIN_REPORT, tiny_path
    from selora.report import build_report

    params, res = results
    build_report(params)
    assert "caption probe" not in _read(res, f"quality_{SETUP}.md")  # not pre-trained here: no line
    probe = {"n": 64, "colour": 1.0, "shape": 0.578, "position": 0.969, "background": 1.0,
             "chance": {"colour": 0.25, "shape": 0.2, "position": 1 / 9, "background": 1 / 6}}
    drawn = {"n": 64, "colour": 0.828, "shape": 0.234, "position": 0.984,
             "reader": {"colour": 0.984, "shape": 0.984, "position": 1.0}}
    tiny_path(params).mkdir(parents=True)
    (tiny_path(params) / PRETRAIN_REPORT).write_text(json.dumps({"caption_probe": probe}))
    build_report(params)
    line = next(x for x in _read(res, f"quality_{SETUP}.md").splitlines() if "**Base model**" in x)
    assert ("caption probe on 64 held-out scenes names the true word from its own denoising loss: colour "
            "1.00 (chance 0.25), shape 0.58 (chance 0.20), position 0.97 (chance 0.11), background 1.00 "
            "(chance 0.17)") in line
    assert "images it draws" not in line  # a report from before the sample probe: no such clause
    (tiny_path(params) / PRETRAIN_REPORT).write_text(
        json.dumps({"caption_probe": probe, "sample_probe": drawn}))
    build_report(params)
    line = next(x for x in _read(res, f"quality_{SETUP}.md").splitlines() if "**Base model**" in x)
    assert ("in the images it draws for 64 held-out captions (selora.probes.sample_probe) the object has "
            "the named colour 0.83, shape 0.23 and position 0.98 (read off the real scenes: 0.98 / 0.98 / "
            "1.00)") in line


def test_the_sampling_line_names_a_rescaled_guidance_only_where_it_acts():
    from selora.report.header import _sampler_line

    def line(*sets: str) -> str:
        return _sampler_line(load_params(None, list(sets)))

    embedded = line("sample.steps=15", "sample.guidance_scale=2.0", "sample.guidance_rescale=0.7",
                    "sample.images_per_prompt=4")
    assert "DDIM, 15 steps, classifier-free guidance 2 rescaled by 0.7 (Lin et al. 2024), 4 images" \
        in embedded
    assert "rescaled" not in line("sample.guidance_scale=7.5", "sample.guidance_rescale=0.0")
    # Without guidance diffusers does not rescale: the line must not claim it.
    assert "guidance 1," in line("sample.guidance_scale=1.0", "sample.guidance_rescale=0.7")
    assert "rescaled" not in line("sample.guidance_scale=1.0", "sample.guidance_rescale=0.7")
    # Every run shares one noise draw: the line says the ± over seeds leaves the draw's share out.
    assert "noise seeds from 1234 (`sample`), the same for every run" in line("sample.seed=1234")
    assert "without the draw's own share" in embedded


def test_in_domain_column_shows_when_a_run_has_it_or_params_plan_a_probe():
    from selora.report.tables import _optional

    planned, none = (load_params(None, [f"evaluate.natural_reference={n}"]) for n in ("scenes", "null"))
    not_yet = pd.DataFrame({"has_metrics": [False]})
    assert _optional(planned, SETUP, not_yet)[2] and not _optional(none, SETUP, not_yet)[2]
    scored = pd.DataFrame({"has_metrics": [True], "domain_share": [None]})  # scored without a probe
    assert not _optional(planned, SETUP, scored)[2]
    assert _optional(none, SETUP, scored.assign(domain_share=[0.5]))[2]


def test_quality_table_has_the_no_adapter_row_exported_parameters_and_comparisons(built):
    _, res, _ = built
    md = _read(res, f"quality_{SETUP}.md")
    main, comparison = md.split("## Against SeLoRA")
    header = _row(main, "Method")
    base = _row(main, "No adapter (base model)")
    assert base[1] == "30.000"  # one run, no ± and no "n=1/3" warning: it has no training seed
    assert header[-1] == "exported params" and base[-1] == "0"
    assert _row(main, "LoRA")[-1] == "160 ± 0"  # two layers of rank 4: 4·(10 + 20) + 4·(5 + 5)
    assert _row(main, "SeLoRA")[-1] == "80 ± 40"  # ranks 1, 2, 3 over the seeds
    cmp_header = _row(comparison, "Method − SeLoRA")
    assert cmp_header[1:4] == [
        "Δ FID-ref 128 [95% CI]", "FID-ref 128: bootstrap", "FID-ref 128: paired t over seeds"]
    lora, dylora, none = (_row(comparison, m) for m in ("LoRA", "DyLoRA", "No adapter (base model)"))
    # Features shifted away from the real ones are significantly worse; another draw of SeLoRA's
    # generator is not, however far its metrics.json FID is.
    assert lora[2] == lora[5] == "significant" and none[2] == "significant"
    assert dylora[2] == dylora[5] == "not significant"
    lo, hi = (float(x) for x in dylora[1].split("[")[1].rstrip("]").split(","))
    assert lo <= 0 <= hi and dylora[1].startswith("+4.000 [")  # Δ from the per-seed FIDs: 13 − 9
    lo, hi = (float(x) for x in lora[1].split("[")[1].rstrip("]").split(","))
    assert 0 < lo < hi
    # Per-seed differences that are all equal leave nothing for a t-test; the no-adapter run's one
    # value against SeLoRA's 8, 9, 10 does: t-test over the three pairs.
    assert lora[3] == "— (n=3, no spread)"
    from scipy.stats import ttest_rel

    assert none[3] == f"p = {ttest_rel([30.0] * 3, [8.0, 9.0, 10.0]).pvalue:.3f} (n=3)"
    assert "200 bootstrap resamples" in comparison and "3 seeds it has 2 degree(s) of freedom" in comparison
    # The finding balanced accuracy (higher is better, in points) on the same resamples: LoRA's
    # images misread four times as often as SeLoRA's, DyLoRA's as often.
    assert cmp_header[7:10] == ["Δ finding bal. acc. % [95% CI]", "finding bal. acc. %: bootstrap",
                                "finding bal. acc. %: paired t over seeds"]
    assert lora[7].startswith("-30.0 [") and lora[8] == "significant"  # metrics.json: 0.4 vs 0.7
    lo, hi = (float(x) for x in lora[7].split("[")[1].rstrip("]").split(","))
    assert lo < hi < 0
    assert dylora[8] == "not significant" and "Δ < 0 means SeLoRA is better" in comparison
    html = (res / "tables" / f"quality_{SETUP}.html").read_text()
    assert "<table>" in html and "No adapter (base model)" in html and ">exported params</th>" in html


def test_quality_table_shows_each_methods_seed_spread_with_its_interval(built):
    _, res, _ = built
    block = _read(res, f"quality_{SETUP}.md").split("## Seed spread")[1].split("## Against SeLoRA")[0]
    # SeLoRA's FIDs 8, 9, 10: std 1 over mean 9, and the χ² interval of 2 degrees of freedom,
    # sqrt(2 / χ²₀.₉₇₅) and sqrt(2 / χ²₀.₀₂₅) = 0.52 and 6.28 times the std, over the mean.
    assert _row(block, "Method")[1:] == ["FID-ref 128: std / mean [95% CI]", "seeds"]
    assert _row(block, "SeLoRA")[1:] == ["0.11 [0.06, 0.70]", "3"]
    assert _row(block, "LoRA")[1:] == ["0.09 [0.05, 0.57]", "3"]  # 10, 11, 12: over mean 11
    assert "No adapter" not in block  # one run, no spread
    assert "With 3 seeds the interval runs from 0.52× to 6.28×" in block


def test_seed_spread_interval_holds_the_true_spread_at_its_confidence():
    """Normal seeds of known std / mean 0.1: the 95 % interval holds it in 93–97 % of 4,000 seeded
    draws of 3 and of 6 seeds (binomial standard error 0.0034). A z-interval on the std covers ~77 %
    at 3 seeds, χ² with n instead of n − 1 degrees of freedom ~89 %."""
    from selora.report.spread import seed_spread

    rng = np.random.default_rng(0)
    for n in (3, 6):
        spreads = [seed_spread(rng.normal(10.0, 1.0, n).tolist(), 0.95) for _ in range(4000)]
        assert all(s is not None and s.lo <= s.ratio <= s.hi for s in spreads)
        assert 0.93 <= np.mean([s.lo <= 0.1 <= s.hi for s in spreads]) <= 0.97
    assert seed_spread([5.0], 0.95) is None and seed_spread([1.0, float("nan")], 0.95) is None
    still = seed_spread([2.0, 2.0, 2.0], 0.95)
    assert still is not None and (still.ratio, still.lo, still.hi) == (0.0, 0.0, 0.0)


def test_bootstrap_without_features_says_why_and_keeps_the_table(results):
    from selora.report import build_report

    params, res = results
    (run_dir(params, RunId(SETUP, "lora", "default", 1)) / "features.safetensors").unlink()
    build_report(params, figures=False)
    md = _read(res, f"quality_{SETUP}.md")
    assert "No bootstrap interval: no features.safetensors for lora/seed1" in md
    assert _row(md.split("## Against SeLoRA")[1], "LoRA")[1:3] == ["+2.000", "—"]


def test_runs_evaluated_before_the_findings_were_kept_get_a_reason_not_a_finding_interval(results):
    from selora.metrics.evaluate import load_run_features, save_run_features
    from selora.report import build_report

    params, res = results
    for path in (res / "runs").rglob("features.safetensors"):
        save_run_features(path, *load_run_features(path), {"test": True})  # the format before them
    build_report(params, figures=False)
    comparison = _read(res, f"quality_{SETUP}.md").split("## Against SeLoRA")[1]
    assert "No bootstrap interval for the finding accuracy" in comparison
    lora = _row(comparison, "LoRA")
    assert lora[2] == "significant" and lora[7] == "-30.0" and lora[8] == "—"  # FID keeps its interval


def test_missing_seeds_are_flagged_and_listed_never_silently_averaged(results, capsys):
    from selora.report import build_report

    params, res = results
    (run_dir(params, RunId(SETUP, "lora", "default", 2)) / "metrics.json").unlink()
    shutil.rmtree(run_dir(params, RunId(SETUP, "selora", "default", 1)))
    out = build_report(params, figures=False)
    assert out["missing"] == 2
    md = _read(res, f"quality_{SETUP}.md")
    assert _row(md, "LoRA")[1] == "10.500 ± 0.707 ⚠ n=2/3"
    assert _row(md, "SeLoRA")[1] == "9.000 ± 1.414 ⚠ n=2/3"  # not bold: incomplete cells are not "best"
    assert _row(md, "DyLoRA")[1] == "**13.000 ± 1.000**"
    assert "Missing runs (2 of 13)" in md
    assert f"`{SETUP}/lora/default/seed2`: no metrics.json (not evaluated)" in md
    assert f"`{SETUP}/selora/default/seed1`: not run" in md
    assert "seed1`: not run" in _read(res, "time.md") and "2 of 17" not in _read(res, "index.md")
    assert "15 of 17 evaluated" in _read(res, "index.md")
    code = main(["report", "--set", f"paths.results={res}", "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and "2 of 17 runs have no metrics.json" in err and "lora/default/seed2" in err


def test_lambda_and_t_ablation_tables(built):
    _, res, _ = built
    lam = _read(res, "ablation_threshold.md")
    assert "paper Table 3" in lam and "Seeds** configured: 0" in lam
    assert [_row(lam, v)[1] for v in ("1", "1.1 (default)", "1.3")] == ["**5.000**", "8.000", "9.000"]
    t = _read(res, "ablation_test_interval.md")
    assert "reviewers" in t and "(λ = 1.1)" in t
    assert [_row(t, v)[1] for v in ("20", "40 (default)", "80")] == ["**7.000**", "8.000", "8.500"]
    assert _row(t, "20")[-1] == "1:03:00"  # training time of the seed-0 SeLoRA run (3780 s)


def test_memory_time_and_parameter_tables(built):
    _, res, _ = built
    mem = _read(res, "memory.md")
    assert "paper Table 7" in mem and "on: cpu" in mem
    # LoRA: samples 1024 + 10·seed + {0, 50, 100} MiB → mean over seeds 1084 MiB = 1.059 GiB.
    assert _row(mem, "LoRA")[1] == f"{1084 / 1024:.3f} ± {10 / 1024:.3f}"
    time = _read(res, "time.md")
    assert "paper Table 8" in time and _row(time, "SeLoRA")[1] == "1:03:01 ± 0:00:01"
    assert "(1 + 1/t)·LoRA = 1:01:31 at t = 40" in time
    par = _read(res, "parameters.md")
    assert _row(par, "SeLoRA")[1:3] == ["0.121 ± 0.000", "0.121 ± 0.000"]
    assert _row(par, "LoRA")[4] == "0.803 ± 0.000" and _row(par, "LoRA")[3] == "4.00 ± 0.00"
    assert _row(par, "LoRA")[-2:] == ["2 ± 0", "16 ± 0"]  # trainable parameter counts from parameters.csv


def _rows(md: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in md.splitlines()
        if line.startswith("|")
    ]


def test_paper_vs_ours_keeps_the_source_table_and_says_what_compares(built):
    from selora.report.paper import published

    _, res, _ = built
    pub = published()
    t1 = pub[(pub.source == "Table 1") & (pub.method == "LoRA") & (pub.metric == "FID")].iloc[0]
    assert (t1["dataset"], t1["resolution"], t1["value"], t1["std"]) == ("IU X-Ray", "224", "113.37", "7.88")
    assert len(pub[pub.source == "Table 8"]) == 8
    md = _read(res, "paper_vs_ours.md")
    cmp_part, rank_part = md.split("## Method rankings")
    row = next(r for r in _rows(cmp_part) if r[0] == "Table 1" and r[3] == "LoRA" and r[4] == "FID")
    assert row[5:] == ["113.37 ± 7.88", "11.000 ± 1.000", SETUP, f"no — stand-in data ({SETUP})"]
    time = next(r for r in _rows(cmp_part) if r[0] == "Table 8" and r[1] == "IU X-Ray" and r[3] == "SeLoRA")
    assert time[5] == "1:47:01"  # the paper's 6421 s, shown as the paper prints it
    assert any(
        r[0] == "Table 2" and r[-1] == "no run of this data set in this experiment" for r in _rows(cmp_part)
    )
    fid_rank = next(r for r in _rows(rank_part) if r[0] == "Table 1" and r[3] == "FID")
    assert fid_rank[4:7] == ["SeLoRA < LoRA < DyLoRA < AdaLoRA"] * 2 + ["yes"]
    # Same order: Kendall τ = 1; but in the features DyLoRA is SeLoRA's twin and beats LoRA, so the
    # bootstrap never reproduces the paper's whole order while SeLoRA is mostly, not always, best.
    assert fid_rank[7] == "+1.00 (p = 0.08)" and fid_rank[9] == "0%"
    assert 50 <= int(fid_rank[8].rstrip("%")) < 100
    clip_rank = next(r for r in _rows(rank_part) if r[0] == "Table 1" and r[3] == "CLIP score")
    assert clip_rank[4] == "SeLoRA > LoRA > AdaLoRA > DyLoRA" and clip_rank[6] == "yes"


# ----------------------------------------------------------------------------- figures
def test_rank_heatmap_layout_follows_the_paper():
    from selora.report.rankmap import classify, final_ranks, rank_matrix

    def where(name: str) -> tuple[str, str, str]:
        slot = classify(name)
        return slot.group, slot.layer, slot.role

    assert where("text_model.encoder.layers.3.self_attn.q_proj") == ("attention", "3", "q")
    assert where("encoder.layers.0.mlp.fc2") == ("attention", "0", "fc2")
    assert where("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k") == (
        "attention",
        "down0.0",
        "attn2 k",
    )
    assert where("up_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj") == (
        "attention",
        "up1.1",
        "ff 1",
    )
    assert where("mid_block.resnets.1.time_emb_proj") == ("other", "mid.r1", "time_emb_proj")
    logs = pd.DataFrame(
        [{"step": 0, "part": "unet", "module": m, "rank": 1} for m in UNET_MODULES]
        + [
            {"step": 80, "part": "unet", "module": UNET_MODULES[0], "rank": 6},
            {"step": 80, "part": "text_encoder", "module": TEXT_MODULES[7], "rank": 3},
        ]
    )
    final = final_ranks(logs)
    unet = rank_matrix(final, "unet")
    assert list(unet.columns) == ["down0.0", "mid.0", "up1.0"]  # input → output, not file order
    assert unet.loc["attn2 k", "up1.0"] == 6 and unet.loc["attn2 k", "down0.0"] == 1
    assert list(unet.index) == ["attn1 q", "attn2 q", "attn2 k", "attn2 out", "ff 1"]
    assert math.isnan(unet.loc["attn1 q", "mid.0"])
    text = rank_matrix(final, "text_encoder")
    assert text.loc["k", "1"] == 3
    assert rank_matrix(final, "unet", "other").loc["time_emb_proj", "down0.r0"] == 1


def test_figures_are_drawn_from_the_logs(built):
    _, res, out = built
    names = {Path(p).name for p in out["figures"]}
    for name in (
        f"ranks_{SETUP}_selora_default.png",
        f"ranks_{SETUP}_selora_threshold-1.0.png",
        f"rank_growth_{SETUP}.png",
        f"memory_{SETUP}.png",
        f"loss_{SETUP}.png",
        f"qualitative_{SETUP}.png",
    ):
        assert name in names, name
        with Image.open(res / "figures" / name) as im:
            assert im.size[0] > 200 and im.size[1] > 100
    index = _read(res, "index.md")
    assert f"ranks_{SETUP}_selora_default.png" in index and "Tables 5/6 (384 px): no setup" in index


def test_report_is_regenerated_identically_and_drops_stale_files(built):
    from selora.report import build_report

    params, res, _ = built
    (res / "tables" / "stale.md").write_text("hand edit")
    first = {p.name: p.read_bytes() for p in (res / "tables").glob("*.md")}
    build_report(params, figures=False)
    second = {p.name: p.read_bytes() for p in (res / "tables").glob("*.md")}
    assert "stale.md" not in second and first.pop("stale.md") and first == second


def test_unreadable_log_is_a_clear_error(results, capsys):
    params, res = results
    path = run_dir(params, RunId(SETUP, "dylora", "default", 0)) / "train" / "logs" / "memory.csv"
    path.write_text("step,peak\n1,2\n")
    code = main(["report", "--set", f"paths.results={res}"])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "device, peak_mb" in err
    ranks = path.with_name("ranks.csv")
    ranks.write_text(ranks.read_text().replace(",4,", ",four,", 1))
    path.write_text("step,device,peak_mb\n0,cpu,100\n")
    code = main(["report", "--set", f"paths.results={res}"])
    err = capsys.readouterr().err
    assert code == 2 and str(ranks) in err and "column rank is not numeric" in err


def test_the_fine_tuning_line_names_the_lr_the_timesteps_and_the_caption_dropout():
    from selora.report.header import _fine_tuning_line

    def line(*sets: str) -> str:
        return _fine_tuning_line(load_params(None, list(sets)))

    embedded = line("train.lr=3e-3", "train.timesteps=stratified", "train.caption_dropout=0.1")
    assert embedded.startswith("- **Fine-tuning**: Adam, lr 0.003 (constant), stratified timesteps, "
                               "caption dropout 0.1 (that share of training captions replaced by the empty")
    assert line().endswith("lr 0.0001 (constant), uniform timesteps, no caption dropout")  # Table 4's
