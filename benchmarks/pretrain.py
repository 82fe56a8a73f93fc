"""Pre-training budget of the embedded miniature: `make-synthetic` + `pretrain-base` at the
default size, timed on this machine (target: ≤ 5 minutes on 2 CPU cores).

    python benchmarks/pretrain.py --out results/benchmarks/pretrain.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from selora.config import load_params
from selora.io import Provenance, write_json
from selora.pretrain import pretrain_base
from selora.synthetic import make_cxr, make_natural


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="results/benchmarks/pretrain.json")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    params = load_params(args.params, args.overrides)
    prov = Provenance("benchmarks/pretrain.py", params.raw)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_natural(params.synthetic.natural, Path(tmp) / "natural", params.seed, progress=False)
        make_cxr(params.synthetic.cxr, Path(tmp) / "cxr", params.seed, progress=False)
        t1 = time.perf_counter()
        report = pretrain_base(params, Path(tmp) / "natural", Path(tmp) / "cxr", Path(tmp) / "tiny-sd",
                               progress=False)
        t2 = time.perf_counter()
    result = {
        "torch_threads": torch.get_num_threads(),
        "make_synthetic_s": round(t1 - t0, 1),
        "pretrain_base_s": round(t2 - t1, 1),
        "pretrain_budget_s": 300,
        "within_budget": (t2 - t1) <= 300,
        "vae_psnr_db": report["vae_psnr_db"],
        "matched_caption_loss": report["matched_caption_loss"],
        "shuffled_caption_loss": report["shuffled_caption_loss"],
        "colour_probe_accuracy": report["colour_probe_accuracy"],
        "caption_probe": {k: report["caption_probe"][k] for k in ("colour", "shape", "position", "chance")},
        "provenance": prov.as_dict(),
    }
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
