#!/usr/bin/env bash
# Run the test suite (sets up the pinned environment first). Extra arguments go to pytest.
#   ./run_tests.sh          every test (what CI runs)
#   ./run_tests.sh --fast   the edit loop: tests marked slow (studies, command-line subprocesses,
#                           torchrun, the browser) are left out
# Two pytest-xdist workers share the tests (MIRL_TEST_WORKERS=N for another count, 0 for one
# process); a test module stays on one worker (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
if [ "${1:-}" = "--fast" ]; then
  shift
  set -- -m "not slow" "$@"
fi
workers="${MIRL_TEST_WORKERS:-2}"
if [ "$workers" -gt 0 ]; then
  set -- -n "$workers" --dist loadscope --no-loadscope-reorder "$@"
fi
exec python -m pytest "$@"
