#!/usr/bin/env bash
# The GPU checks in one command, on a CUDA machine (about 8 minutes on one H100):
#   1. benchmarks/train_throughput.py on the `paper` network: fp32, bf16, channels_last, compile,
#      fused AdamW -> OUT/train_throughput.csv
#   1b. batched replicates (the seeds of one point as one computation, mirl_lib.training.replicates)
#      against the same replicates stepped one after the other: the `cpu` preset at the full
#      tier's 8 x 48 x 48 with 1, 4 and 10 replicates, and the `paper` network with 1 and 4
#      -> the same CSV (its replicates, achieved_tflops and peak_share columns)
#   2. params/gpu_smoke.yaml through ./run_all.sh: interrupted once (SIGINT after 45 s), then run
#      again to the end (it resumes) -> OUT/gpu_smoke_*.log, summary.md, metrics.csv, catalog.csv,
#      points.csv (per-point training seconds)
# Usage: scripts/gpu_check.sh OUT_DIR   (inside an environment with torch + CUDA; see README)
# MIRL_CHECK_PARAMS / MIRL_CHECK_PRESET / MIRL_CHECK_INTERRUPT_S change the study, the benchmarked
# preset and when the first run is interrupted; MIRL_CHECK_REPLICATE_PRESET and
# MIRL_CHECK_REPLICATES the replicate rows (a dry run on CPU: tiny and 1,2).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
params=${MIRL_CHECK_PARAMS:-params/gpu_smoke.yaml}
preset=${MIRL_CHECK_PRESET:-paper}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.csv"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
           torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

echo "== 1. training throughput of the paper network"
cp results/benchmarks/train_throughput.csv "$out/"  # keeps the rows of other devices
timeout 150 python benchmarks/train_throughput.py --preset "$preset" --steps 20 --warmup 5 \
  --out "$out/train_throughput.csv" 2>&1 | tail -n 20
echo "benchmark exit ${PIPESTATUS[0]}"

echo "== 1b. batched replicates against separate steps"
counts=${MIRL_CHECK_REPLICATES:-1,4,10}
timeout 200 python benchmarks/train_throughput.py --preset "${MIRL_CHECK_REPLICATE_PRESET:-cpu}" \
  --batch 8 --patch 48 --steps 20 --warmup 5 --replicates "$counts" --options fp32,batched \
  --out "$out/train_throughput.csv" 2>&1 | tail -n 12
echo "replicates (small network) exit ${PIPESTATUS[0]}"
timeout 150 python benchmarks/train_throughput.py --preset "$preset" --steps 10 --warmup 3 \
  --replicates "${counts%%,*},$(echo "$counts" | cut -d, -f2)" \
  --options bf16+channels_last,bf16+batched --out "$out/train_throughput.csv" 2>&1 | tail -n 8
echo "replicates (paper network) exit ${PIPESTATUS[0]}"

echo "== 2. gpu_smoke study, interrupted once, then resumed"
work=$(mktemp -d)
timeout -s INT "${MIRL_CHECK_INTERRUPT_S:-45}" ./run_all.sh "$params" --results "$work" --jobs 1 \
  > "$out/gpu_smoke_first.log" 2>&1
echo "first run exit $? (130 = interrupted as planned)"; tail -n 3 "$out/gpu_smoke_first.log"
timeout 220 ./run_all.sh "$params" --results "$work" --jobs 1 \
  > "$out/gpu_smoke.log" 2>&1
echo "second run exit $?"; tail -n 12 "$out/gpu_smoke.log"
run="$work/$(python -c "from mirl_lib.core.config import load_config; print(load_config('$params').study.name)")"
cp "$run/summary.md" "$run/metrics.csv" "$run/catalog.csv" "$out/" 2>/dev/null
python - "$run" "$out/points.csv" <<'PY'
import json, sys
from pathlib import Path
import pandas as pd
rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("seed_*/**/point.json"))]
table = pd.DataFrame(rows)[["strategy", "round", "remaining_all", "mean_psnr", "mean_input_psnr",
                            "train_seconds", "seconds"]]
table.to_csv(sys.argv[2], index=False)
print(table.to_string(index=False))
PY
ls -la "$run/seed_0/rewind/round_02" 2>/dev/null
