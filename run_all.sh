#!/usr/bin/env bash
# Reproduce the whole study through papermill.
#   ./run_all.sh [params/X.yaml] [--force STAGE]... [--results DIR]
# Default: params/default.yaml (the embedded CPU study). Finished stages are skipped; --force STAGE
# moves a stage's outputs aside and runs it again (`python -m mirl_lib.stages list PARAMS` names them).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
params=params/default.yaml
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
  params="$1"
  shift
fi
exec python -m mirl_lib.stages run "$params" "$@"
