#!/usr/bin/env bash
# The second probe grid of docs/full_tier.md: eight settings of the full tier's dense network,
# three seeds each, through benchmarks/dense_probe.py, JOBS at a time (12 on one H200 took 165 s;
# on a 2-core CPU use JOBS=2 and expect about 4 minutes per probe).
#   benchmarks/probe_grid.sh OUT_DIR [DEVICE] [JOBS]
# OUT_DIR/probe_grid.csv gets every row (one per setting letter, seed, photo set and task) and
# the means over seeds are printed. On a GPU it computes in fp32 with TF32 off.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/probe_grid.sh OUT_DIR [DEVICE] [JOBS]}
device=${2:-cuda}
jobs=${3:-12}
mkdir -p "$out/runs"
export PYTHONUNBUFFERED=1 NVIDIA_TF32_OVERRIDE=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
grid=(
  "a --ssim-weight 0.5"
  "b --ssim-weight 0.5 --bundled-train natural"
  "c --ssim-weight 0.5 --bundled-train natural --task-weights 1,1,1,2,2"
  "d --ssim-weight 0.5 --bundled-train natural --psnr-weight 0.002"
  "e --ssim-weight 0.5 --bundled-train natural --psnr-weight 0.005 --task-weights 1,1,1,1,2"
  "f --ssim-weight 0.5 --psnr-weight 0.005 --task-weights 1,1,1,1,2"
  "g --ssim-weight 0.5 --bundled-train natural --task-weights 2,1,1,3,3"
  "h --ssim-weight 0.5 --task-weights 2,1,1,3,2"
)
for line in "${grid[@]}"; do
  for seed in 0 1 2; do echo "$line --seed $seed"; done
done | xargs -P "$jobs" -L 1 bash -c 'name=$0; seed=${*: -1}; python benchmarks/dense_probe.py \
  --params params/full.yaml --steps 400 --channels-last --device '"$device"' "$@" \
  --out "'"$out"'/runs/$name-$seed.csv" > "'"$out"'/runs/$name-$seed.log" 2>&1; echo "$name seed $seed: exit $?"'
python - "$out" <<'PY'
import sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
parts = [pd.read_csv(f).assign(setting=f.stem.split("-")[0]) for f in sorted(out.glob("runs/*.csv"))]
table = pd.concat(parts, ignore_index=True)
table.to_csv(out / "probe_grid.csv", index=False)
for name in ("gain_db", "ssim_change"):
    print(table.pivot_table(index="setting", columns=["set", "task"], values=name).round(3)
          .to_string())
PY
