"""Preparation throughput and memory: `selora prepare` on generated PatchGastricADC22-like trees
(300×300 JPEG patches, 5 subtypes, prepared at the paper's 384 px).

Runs, each in a fresh process so peak RSS is its own:
- 1,000 images (a 1,200-patch tree) and 5,000 images (a 6,000-patch tree) with 2 workers:
  images/second and peak RSS of the parent and of the largest worker; memory must stay flat
  (ratio 5k/1k close to 1), since images are streamed and only metadata is held;
- 1,000 images with 1 worker: the speed-up of the second core, and CPU seconds per wall second
  (``cores_busy``, which is meaningful even when other jobs share the machine).

    python benchmarks/prepare.py --out results/benchmarks/prepare.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SUBTYPES = [
    "Moderately differentiated tubular adenocarcinoma",
    "Well differentiated tubular adenocarcinoma",
    "Moderately to poorly differentiated adenocarcinoma",
    "Poorly differentiated adenocarcinoma, solid type",
    "Poorly differentiated adenocarcinoma, non-solid type",
]
PATCHES_PER_SLIDE = 30


def make_tree(root: Path, slides_per_subtype: int, seed: int = 0) -> int:
    """captions.csv + patches/<slide>_<n>.jpg with smooth, tissue-like random texture."""
    (root / "patches").mkdir(parents=True)
    rows = [["id", "subtype", "text"]]
    n = 0
    for s, subtype in enumerate(SUBTYPES):
        for j in range(slides_per_subtype):
            slide = f"{s:02d}{j:030d}"
            rows.append([slide, subtype, f"Group 5, Adenocarcinoma. {subtype}, slide {j}."])
            for p in range(PATCHES_PER_SLIDE):
                rng = np.random.default_rng([seed, s, j, p])
                coarse = rng.uniform(80, 230, (12, 12, 3)).astype(np.uint8)
                smooth = Image.fromarray(coarse).resize((300, 300), Image.Resampling.BICUBIC)
                img = np.asarray(smooth, np.int16)
                img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / "patches" / f"{slide}_{p:04d}.jpg", quality=90)
                n += 1
    with (root / "captions.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return n


def child(raw: str, out: str, pairs: int, workers: int) -> None:
    """One preparation in this fresh process; prints a JSON line with time and peak memory."""
    from selora.data import PrepareOptions, prepare

    opts = PrepareOptions(dataset="patchgastric", raw=Path(raw), out=Path(out), size=384, seed=0,
                          splits={"train": 0.7, "validation": 0.1, "test": 0.2}, subtypes=tuple(SUBTYPES),
                          pairs_per_subtype=pairs, workers=workers)
    t0 = time.perf_counter()
    report, _ = prepare(opts)
    seconds = time.perf_counter() - t0
    n = report["total"]
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    print(json.dumps({
        "images": n, "workers": workers, "seconds": round(seconds, 2),
        "images_per_second": round(n / seconds, 1),
        "cores_busy": round(cpu / seconds, 2),  # CPU seconds of parent + workers per wall second
        "peak_rss_parent_mb": round(me.ru_maxrss / 1024, 1),
        "peak_rss_largest_worker_mb": round(kids.ru_maxrss / 1024, 1),
    }))


def run_child(raw: Path, out: Path, pairs: int, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(raw), str(out), str(pairs), str(workers)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/benchmarks/prepare.json")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        raw, out, pairs, workers = args.child
        child(raw, out, int(pairs), int(workers))
        return
    from selora.io import Provenance, write_json

    prov = Provenance("benchmarks/prepare.py")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        small = make_tree(tmp_path / "small", 8)   # 1,200 patches → 1,000 images
        large = make_tree(tmp_path / "large", 40)  # 6,000 patches → 5,000 images
        generate_s = time.perf_counter() - t0
        runs = {
            "1k_2workers": run_child(tmp_path / "small", tmp_path / "o1", 200, 2),
            "5k_2workers": run_child(tmp_path / "large", tmp_path / "o2", 1000, 2),
            "1k_1worker": run_child(tmp_path / "small", tmp_path / "o3", 200, 1),
        }
    one, five, single = runs["1k_2workers"], runs["5k_2workers"], runs["1k_1worker"]
    result = {
        "tree_patches": {"small": small, "large": large},
        "generate_trees_s": round(generate_s, 1),
        "runs": runs,
        "images_per_second_5k": five["images_per_second"],
        "peak_rss_parent_ratio_5k_over_1k": round(five["peak_rss_parent_mb"] / one["peak_rss_parent_mb"], 3),
        "peak_rss_worker_ratio_5k_over_1k": round(
            five["peak_rss_largest_worker_mb"] / one["peak_rss_largest_worker_mb"], 3),
        "speedup_2_workers_over_1": round(one["images_per_second"] / single["images_per_second"], 2),
        "cores_busy_2_workers": five["cores_busy"],
        "load_average_at_end": os.getloadavg()[0],
        "provenance": prov.as_dict(),
    }
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
