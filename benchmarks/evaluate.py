"""Evaluation cost on the embedded default: fitting a setup's reference (the reference network on
the real synthetic-CXR training images + real test features) and scoring one run, timed on this
machine (target: reference fitting well under a minute on 2 CPU cores at 32 px).

    python benchmarks/evaluate.py --out results/benchmarks/evaluate.json

The "run" scored here is the real test split itself (so FID ≈ 0 and finding accuracy = the
reference network's real-test accuracy) and the real test images under shifted prompts (finding
accuracy drops, FID does not): a check of what each metric sees, beside the timings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from selora.config import load_params
from selora.imagefolder import read_manifest
from selora.io import Provenance, write_json
from selora.metrics.evaluate import evaluate_run
from selora.metrics.fit_reference import fit_setup
from selora.synthetic import make_cxr

SETUP = "synthetic-cxr-32"
BUDGET_S = 60.0


def _run(results: Path, name: str, rows: list[dict], images: list[Image.Image]) -> Path:
    folder = results / "runs" / SETUP / name / "default" / "seed0"
    (folder / "samples" / "images").mkdir(parents=True)
    lines = []
    for i, (row, img) in enumerate(zip(rows, images, strict=True)):
        img.save(folder / "samples" / "images" / f"{i:05d}.png")
        lines.append(
            json.dumps(
                {
                    "file_name": f"{i:05d}.png",
                    "prompt": row["text"],
                    "source_id": row["source_id"],
                    "real_image": row["path"],
                    "seed": 0,
                    "k": 0,
                }
            )
        )
    (folder / "samples" / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="results/benchmarks/evaluate.json")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size = load_params(args.params, args.overrides).setup(SETUP).size  # prepared sets are this size
        params = load_params(
            args.params, [*args.overrides, f"paths.results={tmp / 'results'}", f"synthetic.cxr.size={size}"]
        )
        prov = Provenance("benchmarks/evaluate.py", params.raw)
        data = tmp / "prepared" / SETUP
        make_cxr(params.synthetic.cxr, data, params.seed, progress=False)
        t0 = time.perf_counter()
        info = fit_setup(params, SETUP, data=data)
        t1 = time.perf_counter()
        rows = read_manifest(data, ("test",))
        same = evaluate_run(
            params, _run(tmp / "results", "real", rows, [Image.open(r["path"]) for r in rows]), data=data
        )
        t2 = time.perf_counter()
        shifted = [Image.open(rows[(i + 1) % len(rows)]["path"]) for i in range(len(rows))]
        wrong = evaluate_run(params, _run(tmp / "results", "shifted", rows, shifted), data=data)
    net = info["reference_network"]
    result = {
        "torch_threads": torch.get_num_threads(),
        "n_train": net["training"]["n_train"],
        "n_test": net["real_test"]["n"],
        "reference_steps": net["training"]["steps"],
        "fit_reference_s": round(t1 - t0, 1),
        "fit_budget_s": BUDGET_S,
        "fit_over_budget_ratio": round((t1 - t0) / BUDGET_S, 3),
        "evaluate_run_s": round(t2 - t1, 1),
        "real_test_accuracy": net["real_test"]["accuracy"],
        "real_test_balanced_accuracy": net["real_test"]["balanced_accuracy"],
        "majority_baseline": net["real_test"]["majority_baseline"],
        "real_as_samples": {k: same[k] for k in ("fid", "kid_mean", "finding_balanced_accuracy")},
        "shifted_prompts": {k: wrong[k] for k in ("fid", "kid_mean", "finding_balanced_accuracy")},
        "provenance": prov.as_dict(),
    }
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
