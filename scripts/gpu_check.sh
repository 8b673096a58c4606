#!/usr/bin/env bash
# The GPU checks in one command, on a CUDA machine (about 8 minutes on one H200):
#   1. benchmarks/train_throughput.py on the `paper` network at 8 x 64 x 64: fp32, bf16,
#      channels_last, the CUDA path of mirl_lib.training (bf16+channels_last), fused AdamW, and the
#      step captured in a CUDA graph (fp32 and bf16+channels_last) -> OUT/train_throughput.csv
#   1b. batched replicates (the seeds of one point as one computation) and graphs against the same
#      replicates stepped one after the other: the `cpu` preset at the full tier's 8 x 48 x 48 with
#      1, 4 and 10 replicates, and the `paper` network with 1 and 4 -> the same CSV
#   1c. the published MIR-L code's own step on the same GPU (benchmarks/reference_step.py), where
#      MIRL_REFERENCE names a checkout of it -> the same CSV (option reference_code)
#   1d. the tests that need CUDA (pytest -m gpu: graphed training against eager, resume, the
#      benchmark's graph options) -> OUT/pytest_gpu.log
#   2. params/gpu_smoke.yaml through ./run_all.sh: interrupted once (SIGINT after
#      MIRL_CHECK_INTERRUPT_S, default 45; 0 = not), then run again until it ends or the time
#      budget does (it resumes: call again with the same MIRL_CHECK_WORK to go on) ->
#      OUT/gpu_smoke_*.log, summary.md, metrics.csv, catalog.csv, points.csv (with each point's
#      phase_seconds: training, checkpoint writes, evaluation, ...)
# Usage: scripts/gpu_check.sh OUT_DIR   (inside an environment with torch + CUDA; see README)
# MIRL_CHECK_STEPS (default "1 1b 1c 1d 2") picks steps; MIRL_CHECK_BUDGET_S (default 900) is the
# whole command's time: step 2 gets what is left of it. MIRL_CHECK_WORK keeps the study's folder.
# MIRL_CHECK_PARAMS / MIRL_CHECK_PRESET change the study and the benchmarked preset;
# MIRL_CHECK_REPLICATE_PRESET and MIRL_CHECK_REPLICATES the replicate rows; MIRL_CHECK_OPTIONS,
# MIRL_CHECK_SMALL_OPTIONS and MIRL_CHECK_REPLICATE_OPTIONS the options of steps 1 and 1b (a dry
# run on CPU: tiny presets, 1,2 replicates, fp32 options; tests/benchmarks/test_gpu_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
params=${MIRL_CHECK_PARAMS:-params/gpu_smoke.yaml}
preset=${MIRL_CHECK_PRESET:-paper}
steps=" ${MIRL_CHECK_STEPS:-1 1b 1c 1d 2} "
budget=${MIRL_CHECK_BUDGET_S:-900}
started=$SECONDS
left() { echo $(( budget - (SECONDS - started) )); }
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.csv"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
           torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
[ -f "$out/train_throughput.csv" ] || cp results/benchmarks/train_throughput.csv "$out/"

if [[ $steps == *" 1 "* ]]; then
  echo "== 1. training throughput of the paper network ($(left) s left)"
  timeout 200 python benchmarks/train_throughput.py --preset "$preset" --steps 20 --warmup 5 \
    --options "${MIRL_CHECK_OPTIONS:-fp32,bf16,channels_last,bf16+channels_last,bf16+channels_last+fused_adamw,fp32+cuda_graph,bf16+channels_last+cuda_graph}" \
    --out "$out/train_throughput.csv" 2>&1 | tail -n 20
  echo "benchmark exit ${PIPESTATUS[0]}"
fi

if [[ $steps == *" 1b "* ]]; then
  echo "== 1b. batched replicates and graphs against separate steps ($(left) s left)"
  counts=${MIRL_CHECK_REPLICATES:-1,4,10}
  timeout 200 python benchmarks/train_throughput.py --preset "${MIRL_CHECK_REPLICATE_PRESET:-cpu}" \
    --batch 8 --patch 48 --steps 20 --warmup 5 --replicates "$counts" \
    --options "${MIRL_CHECK_SMALL_OPTIONS:-fp32,batched,bf16+batched,fp32+cuda_graph,bf16+batched+cuda_graph}" \
    --out "$out/train_throughput.csv" 2>&1 | tail -n 16
  echo "replicates (small network) exit ${PIPESTATUS[0]}"
  timeout 150 python benchmarks/train_throughput.py --preset "$preset" --steps 10 --warmup 4 \
    --replicates "${counts%%,*},$(echo "$counts" | cut -d, -f2)" \
    --options "${MIRL_CHECK_REPLICATE_OPTIONS:-bf16+channels_last,batched,bf16+batched,bf16+channels_last+cuda_graph,bf16+batched+cuda_graph}" \
    --out "$out/train_throughput.csv" 2>&1 | tail -n 8
  echo "replicates (paper network) exit ${PIPESTATUS[0]}"
fi

if [[ $steps == *" 1c "* ]]; then
  echo "== 1c. the published code's step ($(left) s left)"
  if [ -d "${MIRL_REFERENCE:-}" ]; then
    timeout 150 python benchmarks/reference_step.py --reference "$MIRL_REFERENCE" \
      --out "$out/train_throughput.csv" 2>&1 | tail -n 4
    echo "reference exit ${PIPESTATUS[0]}"
  else
    echo "skipped: MIRL_REFERENCE does not name a checkout of the published code"
  fi
fi

if [[ $steps == *" 1d "* ]]; then
  echo "== 1d. tests that need CUDA ($(left) s left)"
  timeout 200 python -m pytest -m gpu -p no:cacheprovider -q tests/training/test_graphed.py > "$out/pytest_gpu.log" 2>&1
  echo "pytest -m gpu exit $?"; tail -n 5 "$out/pytest_gpu.log"
fi

if [[ $steps == *" 2 "* ]]; then
  echo "== 2. gpu_smoke study, interrupted once, then resumed ($(left) s left)"
  work=${MIRL_CHECK_WORK:-$(mktemp -d)}
  mkdir -p "$work"
  interrupt=${MIRL_CHECK_INTERRUPT_S:-45}
  if [ "$interrupt" -gt 0 ]; then
    timeout -s INT "$interrupt" ./run_all.sh "$params" --results "$work" --jobs 1 \
      >> "$out/gpu_smoke_first.log" 2>&1
    echo "first run exit $? (124 = interrupted as planned)"; tail -n 3 "$out/gpu_smoke_first.log"
  fi
  rest=$(( $(left) - 15 ))
  if [ "$rest" -gt 10 ]; then
    timeout -s INT "$rest" ./run_all.sh "$params" --results "$work" --jobs 1 \
      >> "$out/gpu_smoke.log" 2>&1
    echo "second run exit $? (124 = the time budget ended it: run again to go on)"
    tail -n 12 "$out/gpu_smoke.log"
  fi
  run="$work/$(python -c "from mirl_lib.core.config import load_config; print(load_config('$params').study.name)")"
  cp "$run/summary.md" "$run/metrics.csv" "$run/catalog.csv" "$out/" 2>/dev/null
  python - "$run" "$out/points.csv" <<'PY'
import json, sys
from pathlib import Path
import pandas as pd
rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("seed_*/**/point.json"))]
columns = ["strategy", "round", "remaining_all", "mean_psnr", "mean_input_psnr", "train_seconds",
           "seconds"]
table = pd.DataFrame(rows).reindex(columns=columns)
phases = pd.DataFrame([r.get("phase_seconds", {}) for r in rows]).add_prefix("s_")
table = pd.concat([table, phases], axis=1)  # where each point's time went (train, checkpoints...)
table.to_csv(sys.argv[2], index=False)
print(table.to_string(index=False))
PY
fi
echo "== done in $((SECONDS - started)) s"
