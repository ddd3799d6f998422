#!/usr/bin/env bash
# Set up the venv if needed, then compare SPACE, AR and HF generate on the embedded SmolLM2 model (CPU).
# Extra arguments go to scripts/generate.py, e.g. --prompt "..." --max_new_tokens 64, or --stream to watch each
# answer arrive as it is decoded (SPACE's multi-token steps in green on a terminal).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$root/scripts/setup_env.sh")"
cd "$root"
echo "+ $python scripts/generate.py $*" >&2
exec "$python" scripts/generate.py "$@"
