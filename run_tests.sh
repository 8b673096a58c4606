#!/usr/bin/env bash
# Run the test suite (sets up the pinned environment first). Extra arguments go to pytest.
#   ./run_tests.sh          every test (what CI runs)
#   ./run_tests.sh --fast   the edit loop: tests marked slow (studies, command-line subprocesses,
#                           torchrun, the browser) are left out
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
if [ "${1:-}" = "--fast" ]; then
  shift
  set -- -m "not slow" "$@"
fi
exec python -m pytest "$@"
