#!/usr/bin/env bash
# Run the test suite (sets up the pinned environment first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
exec python -m pytest "$@"
