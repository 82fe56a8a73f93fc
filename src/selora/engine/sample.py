"""``selora sample``: generate the test prompts' images with a run's best adapter.

The adapter is loaded **from its exported standard LoRA file** into a fresh diffusers pipeline
(``load_lora_weights``), which proves the export, then fused into the base weights
(``fuse_lora``). Each test prompt gets ``images_per_prompt`` images; image j of prompt i always
uses seed ``sample.seed + i·k + j`` — the same for every method and training seed, so methods are
compared on the same initial noise. Batches pass one
generator per image, so an image does not depend on the batch it was drawn in; memory is bounded
by ``sample.batch_size``.

The adapter folder is verified against its ``SHA256SUMS`` before use, and finished samples are
reused only when the adapter, the base model, the prepared test prompts and the sample params are
all the ones they were drawn with; otherwise they are drawn again.

The untouched base model ("no adapter", method ``none``, see :mod:`selora.runlayout`) is sampled
the same way with no LoRA file loaded: the quality tables' reference row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from selora.adapters.export import WEIGHT_NAME
from selora.basemodel import load_pipeline, loading_bars
from selora.config import Params
from selora.engine.device import resolve_device, use_threads
from selora.errors import DatasetFormatError, MissingWeightsError, SeloraError
from selora.imagefolder import read_manifest
from selora.io import (
    Provenance,
    atomic_dir,
    file_sha256,
    report_leftovers,
    verify_checksums,
    write_json,
    write_jsonl,
)
from selora.runlayout import (
    NO_ADAPTER,
    RunId,
    base_model_identity,
    config_hash,
    data_identity,
    no_adapter_sample_config,
    prepared_dir,
    run_dir,
    sample_config,
)

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}


def build_pipeline(params: Params, adapter_dir: Path | None, device: torch.device,
                   progress: bool = True):
    import diffusers

    dtype = None
    if device.type == "cuda" and params.train.mixed_precision in ("fp16", "bf16"):
        dtype = torch.float16 if params.train.mixed_precision == "fp16" else torch.bfloat16
    pipe = load_pipeline(params, torch_dtype=dtype, progress=progress)
    if adapter_dir is not None:  # None: the untouched base model
        with loading_bars(progress):  # peft's text-encoder load has its own bar
            pipe.load_lora_weights(str(adapter_dir))
        # Merged into the base weights and the LoRA layers removed: the same images (to float
        # rounding, tested) with one matmul per layer instead of three; sampling the miniature's
        # 128 test prompts took 12.2 s unfused, 9.4 s fused (benchmarks/README).
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    cls = getattr(diffusers, SCHEDULERS[params.sample.scheduler])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def sample(params: Params, run: RunId, *, data_dir: str | Path | None = None,
           out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    root = Path(out_dir) if out_dir else run_dir(params, run)
    no_adapter = run.method == NO_ADAPTER
    adapter_dir = None if no_adapter else root / "train" / "adapter" / "best"
    if adapter_dir is not None and not (adapter_dir / WEIGHT_NAME).is_file():
        raise MissingWeightsError(f"{adapter_dir / WEIGHT_NAME} does not exist: run `selora train` for "
                                  f"{run.relpath} first")
    problem = verify_checksums(adapter_dir) if adapter_dir is not None else None
    if problem:
        raise SeloraError(f"the adapter of {run.relpath} is not trustworthy: {problem}. Run `selora train` "
                          "for it again (it republishes the adapter from its verified checkpoint)")
    out = root / "samples"
    # A killed sampling leaves .samples.*.tmp / .samples.old-* next to samples/.
    report_leftovers(root, of=out.name)
    cfg = no_adapter_sample_config(params, run.setup) if no_adapter else sample_config(params, run)
    chash = config_hash(cfg)
    adapter_digest = None if adapter_dir is None else file_sha256(adapter_dir / WEIGHT_NAME)[:16]
    data_dir = Path(data_dir) if data_dir else prepared_dir(params, run.setup)
    inputs = {"data": data_identity(data_dir), "base_model": base_model_identity(params)}
    summary_path = out / "summary.json"
    if summary_path.is_file():
        try:
            done = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            done = None  # a truncated summary: the samples are drawn again
        done = done if isinstance(done, dict) else {}
        if (done.get("config_hash") == chash and done.get("adapter_sha256") == adapter_digest
                and done.get("inputs") == inputs):
            return done
        print(f"sampling {run.relpath} again: its adapter, base model, data or sample params changed",
              file=sys.stderr)

    prov = Provenance("sample", params.raw)
    scfg = params.sample
    device = resolve_device(params.train.device)
    use_threads(params.train.threads)  # as training: the job's count, whichever runner starts it
    tests = [r for r in read_manifest(data_dir) if r["split"] == "test"]
    if not tests:
        raise DatasetFormatError(f"{data_dir}: no test split to sample prompts from")
    pipe = build_pipeline(params, adapter_dir, device, progress)
    size = params.setup(run.setup).size
    jobs = [(i, k, row) for i, row in enumerate(tests) for k in range(scfg.images_per_prompt)]
    manifest: list[dict[str, Any]] = []
    with atomic_dir(out) as tmp:
        (Path(tmp) / "images").mkdir()
        for start in tqdm(range(0, len(jobs), scfg.batch_size), desc=f"sample {run.relpath}",
                          disable=not progress):
            batch = jobs[start:start + scfg.batch_size]
            seeds = [scfg.seed + i * scfg.images_per_prompt + k for i, k, _ in batch]
            gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
            with torch.no_grad():
                images = pipe([row["text"] for _, _, row in batch], height=size, width=size,
                              num_inference_steps=scfg.steps, guidance_scale=scfg.guidance_scale,
                              guidance_rescale=scfg.guidance_rescale,
                              generator=gens).images
            for (i, k, row), seed, image in zip(batch, seeds, images, strict=True):
                name = f"{i:05d}_{k}.png"
                image.save(Path(tmp) / "images" / name)
                manifest.append({"file_name": name, "prompt": row["text"],
                                 "source_id": row["source_id"], "real_image": row["path"],
                                 "labels": row.get("labels", {}), "seed": seed, "k": k})
        write_jsonl(Path(tmp) / "manifest.jsonl", manifest)
        summary = {
            "run": cfg["run"],
            "config_hash": chash,
            "adapter_sha256": adapter_digest,
            "inputs": inputs,
            "adapter": None if adapter_dir is None else str(adapter_dir / WEIGHT_NAME),
            "n_prompts": len(tests),
            "n_images": len(manifest),
            "scheduler": scfg.scheduler,
            "steps": scfg.steps,
            "guidance_scale": scfg.guidance_scale,
            "guidance_rescale": scfg.guidance_rescale,
            "provenance": prov.as_dict(),
        }
        write_json(Path(tmp) / "summary.json", summary)
    return summary
