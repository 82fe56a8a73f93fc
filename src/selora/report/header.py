"""The header and footer every table of the report carries: what it came from (setup, base
model, seeds, steps, feature space and its floors, sampling) and which runs it lacks, so a table
read on its own still says what its numbers mean."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from selora.config import Params
from selora.metrics.frechet import TAP_ROLES
from selora.report.collect import Collected


def planned_space(params: Params) -> dict[str, Any]:
    """The feature space params ask for, for tables over runs not evaluated yet."""
    from selora.metrics.fit_reference import feature_dims, feature_space

    if feature_space(params) == "inception":
        return {
            "name": "inception",
            "label": "Inception-v3 (no run evaluated yet)",
            "dims": feature_dims("inception"),
        }
    return {
        "name": "reference",
        "label": "reference CNN (no run evaluated yet)",
        "dims": feature_dims("reference"),
    }


def feature_space_of(col: Collected, setup: str, params: Params | None = None) -> dict[str, Any]:
    """The feature space (name, label, dims) and reference accuracy the setup's runs were scored in
    (what params ask for when none is evaluated yet)."""
    spaces = {}
    for run, m in col.metrics.items():
        if run.setup == setup:
            fs = m.get("feature_space") or {}
            spaces.setdefault(
                fs.get("name"),
                {
                    **fs,
                    "reference_real_test": m.get("reference_real_test"),
                    "domain_probe": m.get("domain_probe"),
                    "real_floor": m.get("real_floor"),
                    "clip_model": m.get("clip_model"),
                },
            )
    if len(spaces) > 1:
        return {
            "name": "mixed",
            "label": f"MIXED feature spaces {sorted(map(str, spaces))}: rerun evaluate",
            "dims": {},
        }
    if spaces:
        return next(iter(spaces.values()))
    return planned_space(params) if params else {"name": None, "label": "no run evaluated yet", "dims": {}}


def fid_labels(space: dict[str, Any]) -> dict[str, str]:
    dims = space.get("dims") or {}
    if space.get("name") == "inception":
        return {"fid": "FID", "fid_mid": "FID 192", "fid_low": "FID 64"}
    return {r: f"FID-ref {dims.get(r, '?')}" for r in TAP_ROLES}


def config_block(
    params: Params,
    col: Collected,
    setup: str,
    seeds: Sequence[int],
    runs: pd.DataFrame,
    need: str = "has_metrics",
) -> list[str]:
    """What a table came from: setup, base model, seeds (and how many runs are there), steps,
    feature space, CLIP model, samples."""
    s = params.setup(setup)
    splits = "/".join(f"{v:g}" for v in s.splits.as_dict().values())
    steps = sorted({int(x) for x in runs.get("steps", pd.Series(dtype=float)).dropna()})
    base = f"`{params.base_model.name}`" + (
        f" @ `{params.base_model.revision}`" if params.base_model.revision else ""
    )
    if params.base_model.name == "tiny":
        base += " (the embedded miniature Stable Diffusion, pre-trained by `selora pretrain-base`)"
        base += _probes_text(col.base_report)
    space = feature_space_of(col, setup, params)
    fs = space.get("label", "?")
    if space.get("name") == "reference" and space.get("reference_real_test"):
        rt = space["reference_real_test"]
        which = f" ({', '.join(rt['per_finding'])})" if rt.get("per_finding") else ""
        fs += (
            f"; on the {rt['n']} real test images it reads the findings{which} with accuracy "
            f"{rt['accuracy']:.3f} "
            f"(balanced {rt['balanced_accuracy']:.3f}, majority baseline {rt['majority_baseline']:.3f})"
        )
    clip = space.get("clip_model") or params.evaluate.clip_model
    present = int(runs[need].sum()) if need in runs else 0
    what = "evaluated" if need == "has_metrics" else "trained"
    return [
        f"- **Setup** `{setup}`: data set `{s.dataset}`, {s.size}×{s.size} px, splits (train/val/test) "
        f"{splits}, batch {s.batch_size}, {s.epochs} epochs, max_steps {s.max_steps or 'none (all epochs)'}",
        f"- **Base model**: {base}",
        f"- **Seeds** configured: {', '.join(map(str, seeds))}; {what} runs: {present}/{len(runs)}",
        "- **Training steps per run** (from the logs): "
        + (", ".join(map(str, steps)) if steps else "no training logs yet"),
        _fine_tuning_line(params),
        f"- **Feature space** of FID/KID: {fs}",
        "- **CLIP score**: " + (f"model {clip!r}" if clip else "not computed (evaluate.clip_model is null)"),
        *_floor_lines(space),
        *_domain_lines(space),
        *_colour_lines(runs),
        *_sample_lines(runs),
        *([_sampler_line(params)] if need == "has_metrics" else []),  # not in the training tables
        "- Cells: mean ± sample std (ddof 1) over seeds; `⚠ n=k/N` = only k of N configured seeds present.",
    ]


def _probes_text(report: dict[str, Any] | None) -> str:
    """What the miniature reads of its captions before any adapter, and what it draws for them
    (selora.probes: caption_probe, sample_probe)."""
    report = report or {}
    probe = report.get("caption_probe")
    if not probe:
        return ""
    attributes = [a for a in ("colour", "shape", "position", "background") if a in probe]
    reads = ", ".join(f"{a} {probe[a]:.2f} (chance {probe['chance'][a]:.2f})" for a in attributes)
    text = (f"; its caption probe on {probe['n']} held-out scenes names the true word from its own "
            f"denoising loss: {reads}")
    drawn = report.get("sample_probe")
    if drawn:
        text += (f"; in the images it draws for {drawn['n']} held-out captions (selora.probes."
                 f"sample_probe) the object has the named colour {drawn['colour']:.2f}, shape "
                 f"{drawn['shape']:.2f} and position {drawn['position']:.2f} (read off the real scenes: "
                 f"{drawn['reader']['colour']:.2f} / {drawn['reader']['shape']:.2f} / "
                 f"{drawn['reader']['position']:.2f})")
    return text


def _floor_lines(space: dict[str, Any]) -> list[str]:
    """The real-vs-real floor: where a perfect generator's FID/KID would sit, and how far its draw
    alone moves it (a run's images are tied to the test prompts, which removes part of that)."""
    floor = space.get("real_floor")
    if not floor:
        return []
    labels = {**fid_labels(space), "kid_mean": "KID"}

    def cell(k: str) -> str:
        v = floor[k]
        return f"{v['mean']:.3g}" + (f" ± {v['std']:.2g}" if v.get("std") is not None else "")

    seen = " (the images the reference network was fitted on)" if space.get("name") == "reference" else ""
    return [
        f"- **Real-vs-real floor**: {floor['n_images']} real {floor['split']} images{seen} scored "
        f"against the real test images like a run ({floor['draws']} seeded draws of the "
        f"{floor['n_train']}, mean ± std): "
        + ", ".join(f"{labels[k]} {cell(k)}" for k in labels if k in floor)
        + " — what a generator drawing the data itself would score"
    ]


def _domain_lines(space: dict[str, Any]) -> list[str]:
    """What the in-domain % column measures and how well its probe tells the domains apart."""
    probe = space.get("domain_probe")
    if not probe:
        return []
    h = probe["held_out"]
    return [
        f"- **In-domain %**: share of a run's images a logistic-regression probe on the reference "
        f"features calls real rather than a natural scene of `{probe['natural']}`; on held-out images "
        f"it calls {100 * h['real_called_real']:.1f} % of {h['n_real']} real test images and "
        f"{100 * h['natural_called_real']:.1f} % of {h['n_natural']} natural scenes real"
    ]


def _colour_lines(runs: pd.DataFrame) -> list[str]:
    """What the colour cast column measures, with the real test images' value beside it."""
    if not has_values(runs, "colour_cast_real"):
        return []
    real = sorted({round(float(x), 3) for x in runs["colour_cast_real"].dropna()})
    return [
        "- **Colour cast**: mean |R − B| of a run's images (0–1 scale, 0 = grayscale); "
        f"real test images: {', '.join(f'{x:.3f}' for x in real)}"
    ]


def _sample_lines(runs: pd.DataFrame) -> list[str]:
    """How many images each run was scored on, which test prompts they cover, KID's subsets."""
    if "n_generated" not in runs or runs["n_generated"].isna().all():
        return []
    ev = runs.dropna(subset=["n_generated"])
    gen = sorted({int(x) for x in ev["n_generated"]})
    cov = sorted({(int(a), int(b)) for a, b in zip(ev["prompts_covered"], ev["test_prompts"], strict=True)})
    kid = sorted({(int(a), int(b)) for a, b in zip(ev["kid_subsets"], ev["kid_subset_size"], strict=True)})
    partial = any(a < b for a, b in cov)
    return [
        f"- **Samples** per run: {', '.join(map(str, gen))} generated images covering "
        + ", ".join(f"{a} of {b}" for a, b in cov)
        + " test prompts"
        + (" ⚠ not every test prompt was sampled" if partial else "")
        + "; KID over "
        + ", ".join(f"{a} subsets of {b}" for a, b in kid)
    ]


def _fine_tuning_line(params: Params) -> str:
    """The training settings that move the scores and where the embedded default departs from Table
    4 (README, "Fine-tuning"): lr and its schedule, the timestep draw, the caption dropout."""
    t = params.train
    dropout = (f"caption dropout {t.caption_dropout:g} (that share of training captions replaced by "
               "the empty prompt, so guidance starts from a trained prediction)"
               if t.caption_dropout > 0 else "no caption dropout")
    return f"- **Fine-tuning**: Adam, lr {t.lr:g} ({t.lr_schedule}), {t.timesteps} timesteps, {dropout}"


def _sampler_line(params: Params) -> str:
    """How the images were drawn (params.sample): the guidance and its rescale move FID-ref and the
    colour cast (README, "Fine-tuning"), so a reader must see them beside the scores; and the one
    noise draw every run shares, which makes the comparison paired but leaves the draw's own
    variance out of every ± (one fixed adapter's FID-ref moves with it)."""
    s = params.sample
    guidance = f"classifier-free guidance {s.guidance_scale:g}"
    if s.guidance_rescale and s.guidance_scale > 1:
        guidance += f" rescaled by {s.guidance_rescale:g} (Lin et al. 2024)"
    return (f"- **Sampling**: {s.scheduler.upper()}, {s.steps} steps, {guidance}, "
            f"{s.images_per_prompt} image{'s' if s.images_per_prompt != 1 else ''} per test prompt, "
            f"noise seeds from {s.seed} (`sample`), the same for every run: methods are compared "
            "on one draw, and ± is the training seeds' spread under it, without the draw's own share "
            "(benchmarks/README, \"The sampling's share of the spread\")")


def missing_block(runs: pd.DataFrame, need: str = "has_metrics") -> list[str]:
    miss = runs.loc[~runs[need]]
    if miss.empty:
        return ["All configured runs are present."]
    lines = [f"**Missing runs ({len(miss)} of {len(runs)})**, left out of the cells above:", ""]
    lines += [f"- `{r.setup}/{r.method}/{r.variant}/seed{r.seed}`: {r.status}" for r in miss.itertuples()]
    return lines


def has_values(runs: pd.DataFrame, key: str) -> bool:
    """Whether any run has a value for ``key`` (a column shows only then)."""
    return key in runs and runs[key].notna().any()
