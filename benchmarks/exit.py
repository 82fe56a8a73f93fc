"""What a pipeline job pays to exit: interpreter shutdown with and without the heap frozen first
(`selora.cli.entry`), interleaved in one run (CPU).

    python benchmarks/exit.py --out results/benchmarks/exit.json [--rounds 8]

Each round starts one Python process per variant that imports what a `sample` / `evaluate` job
imports (torch, diffusers' StableDiffusionPipeline, transformers, peft, torchmetrics' FID and KID)
and then ends, plainly or after ``gc.freeze()``. The child prints the time when it is done; the
parent takes the time the process is gone: the difference is the shutdown. Variants alternate
order every round; medians. `make repro` runs 55 such processes on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from selora.io import Provenance, write_json

IMPORTS = ("import torch, diffusers, transformers, peft\n"
           "from diffusers import StableDiffusionPipeline\n"
           "from torchmetrics.image.fid import FrechetInceptionDistance\n"
           "from torchmetrics.image.kid import KernelInceptionDistance\n")
ENDINGS = {"plain": "", "frozen": "import gc; gc.freeze()\n"}
JOBS_IN_MAKE_REPRO = 55


def shutdown_seconds(ending: str) -> float:
    """Seconds between the child's last statement and its exit as the parent sees it."""
    code = IMPORTS + ending + "import time; print(time.time(), flush=True)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    gone = time.time()
    return gone - float(proc.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    prov = Provenance("benchmarks/exit.py", vars(args))
    times: dict[str, list[float]] = {name: [] for name in ENDINGS}
    for r in range(args.rounds + 1):  # round 0 warms the page cache, untimed
        for name in (list(ENDINGS) if r % 2 == 0 else list(ENDINGS)[::-1]):
            seconds = shutdown_seconds(ENDINGS[name])
            if r:
                times[name].append(seconds)
    med = {name: statistics.median(v) for name, v in times.items()}
    saved = med["plain"] - med["frozen"]
    result = {
        "shutdown_s": {k: round(v, 3) for k, v in med.items()},
        "ratio_plain_to_frozen": round(med["plain"] / med["frozen"], 2),
        "saved_s_per_process": round(saved, 3),
        "make_repro_saved_wall_s_on_2_cores": round(saved * JOBS_IN_MAKE_REPRO / 2, 1),
        "rounds": args.rounds,
    }
    for name, s in result["shutdown_s"].items():
        print(f"shutdown after a job's imports, {name}: {s:.3f} s (median of {args.rounds})")
    print(f"plain / frozen: {result['ratio_plain_to_frozen']}×, {saved:.2f} s a process; "
          f"~{result['make_repro_saved_wall_s_on_2_cores']} s of make repro's wall time on 2 cores")
    if args.out:
        write_json(args.out, {**result, "provenance": prov.as_dict()})


if __name__ == "__main__":
    main()
