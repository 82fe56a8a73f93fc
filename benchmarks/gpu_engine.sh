#!/usr/bin/env bash
# The embedded default's own commands on a GPU: `selora train` (fp16 autocast + GradScaler, fused
# Adam on CUDA), `selora sample` and `selora evaluate --device cuda`, for every method and the
# no-adapter base, on a miniature and prepared data made here by `make repro`. The CPU path is
# what CI runs; this is the path a cluster user takes, and nothing else exercises it.
# The four methods run side by side on the one GPU (the miniature is tiny), so their steps/s are
# not a speed benchmark; the point is that every phase runs and its numbers are sane.
#   bash benchmarks/gpu_engine.sh [OUT_DIR]     (default results/benchmarks/gpu)
# Needs models/tiny-sd, data/prepared/synthetic-cxr-32 and results/reference/synthetic-cxr-32.
# SELORA_GPU_DEVICE=cpu SELORA_GPU_PRECISION=no rehearses it without a GPU.
set -uo pipefail
out=${1:-results/benchmarks/gpu}
device=${SELORA_GPU_DEVICE:-cuda}
precision=${SELORA_GPU_PRECISION:-fp16}
extra=${SELORA_GPU_EXTRA:-}                  # e.g. "--set setups.synthetic-cxr-32.epochs=1"
setup=synthetic-cxr-32
res=$out/engine-results
logs=$out/engine-logs
mkdir -p "$res" "$logs"
for need in models/tiny-sd/model_index.json "data/prepared/$setup/data_report.json" \
        "results/reference/$setup"; do
    [ -e "$need" ] || { echo "gpu_engine.sh: $need is missing: run make repro first" >&2; exit 2; }
done
sel() { "${PYTHON:-python3}" -m selora "$@"; }
common=(--setup "$setup" --seed 0 --set "paths.results=$res" --set "train.device=$device"
        --set "train.mixed_precision=$precision" --set train.threads=3 --quiet)
one() {  # train (unless 'none'), sample, evaluate: one method's chain; stops at the first failure
    local m=$1 run=$res/runs/$setup/$1/default/seed0
    if [ "$m" != none ]; then
        sel train "${common[@]}" --method "$m" $extra > "$logs/$m.train.log" 2>&1 || return 1
    fi
    sel sample "${common[@]}" --method "$m" $extra > "$logs/$m.sample.log" 2>&1 || return 1
    sel evaluate --set "paths.results=$res" --run-dir "$run" --reference "results/reference/$setup" \
        --device "$device" --quiet $extra > "$logs/$m.evaluate.log" 2>&1
}
t0=$(date +%s)
pids=()
for m in lora adalora dylora selora none; do one "$m" & pids+=($!); done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
echo "engine chains: $(( $(date +%s) - t0 )) s, status $status"
"${PYTHON:-python3}" - "$res" "$logs" "$out/engine_cuda.json" "$device" "$precision" "$setup" <<'EOF'
import json, sys
from pathlib import Path
res, logs, dest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
device, precision, setup = sys.argv[4:]
out = {"device": device, "mixed_precision": precision, "methods": {}, "failed_logs": {}}
for m in ("lora", "adalora", "dylora", "selora", "none"):
    run = res / "runs" / setup / m / "default" / "seed0"
    row = {}
    for name, keys in (("train/summary.json", ("steps", "best_epoch", "best_val_loss", "train_time_s",
                                               "steps_per_second", "memory_device", "memory_max_mb")),
                       ("metrics.json", ("fid", "kid_mean", "finding_balanced_accuracy", "colour_cast",
                                         "domain_share"))):
        f = run / name
        if f.is_file():
            d = json.loads(f.read_text())
            row.update({k: d.get(k) for k in keys})
            if name == "train/summary.json":
                row["trainable_parameters"] = sum(p["trainable_parameters"] for p in d["parameters"])
                row["final_rank_total"] = sum(sum(v.values()) for v in d.get("final_ranks", {}).values())
    s = run / "samples" / "summary.json"
    if s.is_file():
        row["samples_wall_s"] = json.loads(s.read_text()).get("provenance", {}).get("wall_time_s")
    out["methods"][m] = row
for log in sorted(logs.glob("*.log")):
    text = log.read_text(errors="replace")
    if "Traceback" in text or "rror" in text:
        out["failed_logs"][log.name] = text[-3000:]
Path(dest).write_text(json.dumps(out, indent=1))
print(json.dumps({m: {k: v for k, v in r.items() if k in ("fid", "finding_balanced_accuracy", "steps")}
                  for m, r in out["methods"].items()}, indent=1))
print("failed logs:", list(out["failed_logs"]) or "none")
EOF
exit $status
