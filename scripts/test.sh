#!/usr/bin/env bash
# Set up the venv if needed, then run the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the fast subset.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$root/scripts/setup_env.sh")"
cd "$root"
exec "$python" -m pytest -q "$@"
