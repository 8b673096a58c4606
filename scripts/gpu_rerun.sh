#!/usr/bin/env bash
# Rerun a study on one CUDA GPU, in fp32 with TF32 off, as the reproduction check's second
# machine: its float arithmetic differs from a CPU's as another machine's would.
#   scripts/gpu_rerun.sh PARAMS OUT_DIR [JOBS] [LIMIT_S]
# The params file is copied with train.device set to cuda (a runtime field: the config hash and
# so the run's identity stay the same); set train.bf16: false in it, or the GPU trains in bf16.
# $PYTHON (default python) trains and scores every point through
# `python -m mirl_lib stages points` (the stages of
# ./run_all.sh without notebooks: a GPU image need not have Jupyter), JOBS stages at a time.
# OUT_DIR gets gpu.csv, run.log, points.csv (each point's seconds), metrics.csv and heldout.csv
# (gathered from the points that finished, also when LIMIT_S stopped the run). Then, here:
#   python -m mirl_lib reproduce OUT_DIR results/NAME -o CSV    (test and held-out photos)
set -uo pipefail
cd "$(dirname "$0")/.."
params=${1:?usage: scripts/gpu_rerun.sh PARAMS OUT_DIR [JOBS] [LIMIT_S]}
out=${2:?usage: scripts/gpu_rerun.sh PARAMS OUT_DIR [JOBS] [LIMIT_S]}
jobs=${3:-8}
limit=${4:-6000}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NVIDIA_TF32_OVERRIDE=0
device=${MIRL_RERUN_DEVICE:-cuda}  # the tests dry-run it with cpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
work=$(mktemp -d)
mkdir -p "$work/params"
gpu_params="$work/params/$(basename "$params")"
sed "s/^\(  device:\).*/\1 $device/" "$params" > "$gpu_params"
if ! grep -q "^  device: $device$" "$gpu_params"; then
  echo "error: $params: no 'train.device' line to set to $device" >&2
  exit 2
fi
start=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python}
timeout -s INT "$limit" "$python" -m mirl_lib stages points "$gpu_params" --results "$work/results" \
  --jobs "$jobs" > "$out/run.log" 2>&1
echo "run exit $? after $(($(date +%s) - start)) s" | tee -a "$out/run.log"
"$python" - "$gpu_params" "$work/results" "$out" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from mirl_lib.core.config import load_config
from mirl_lib.study.study import Study

cfg = load_config(sys.argv[1])
study = Study(cfg, Path(sys.argv[2]) / cfg.study.name)
out = Path(sys.argv[3])
for name in ("metrics.csv", "heldout.csv"):
    parts = [pd.read_csv(p) for p in study.point_files(name)]
    if parts:
        pd.concat(parts, ignore_index=True).to_csv(out / name, index=False)
records = study.records()
if len(records):
    table = records[["seed", "strategy", "round", "remaining_all", "mean_psnr", "train_seconds",
                     "seconds"]]
    table.to_csv(out / "points.csv", index=False)
    print(f"{len(table)} points finished; training seconds: median "
          f"{table['train_seconds'].median():.1f}, total {table['train_seconds'].sum():.0f}")
PY
tail -n 5 "$out/run.log"
