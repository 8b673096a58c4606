#!/usr/bin/env bash
# Reproduce the whole study through papermill.
#   ./run_all.sh [params/X.yaml] [--force STAGE]... [--results DIR] [--jobs N] [--gpus N]
#                [--batch-replicates auto|batched|separate] [--seeds S ...]
# Default: params/default.yaml (the embedded CPU study). Finished stages are skipped; --force STAGE
# moves a stage's outputs aside and runs it again (`python -m mirl_lib stages list PARAMS` names them).
# --gpus N trains every point under torchrun with N processes (one per GPU); one GPU needs nothing.
# --batch-replicates batched trains the seeds of each point together (the default, auto, does so
# on CUDA with the local executor and train.step_graph: eager only: on the CPU it measured slower,
# and on a GPU slower than separate steps captured in CUDA graphs).
# --seeds S ... sets the study's seeds (the params file's by default): a finished study given more
# seeds trains the new ones and re-runs its evaluation and figures over all, e.g.
# ./run_all.sh params/full.yaml --seeds 0 1 2 3 4 5 6 7 8 9   (the full tier at ten seeds)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
params=params/default.yaml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
  params="$1"
  shift
fi
exec python -m mirl_lib stages run "$params" "$@"
