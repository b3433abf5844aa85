#!/usr/bin/env bash
# Create (or reuse) the virtual environment in .venv, install torch and the
# project's dependencies, and build the extension against that torch.
# Usage: source scripts/setup.sh   (or bash scripts/setup.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASTPRUNE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip setuptools wheel
# The CPU wheel of torch 2.13.0 (any other spec would download several GB of CUDA packages);
# a machine that already has a torch it wants can set FASTPRUNE_TORCH_SPEC="" to keep it.
TORCH_SPEC="${FASTPRUNE_TORCH_SPEC-torch==2.13.0}"
if [ -n "$TORCH_SPEC" ]; then
    python -m pip install --quiet "$TORCH_SPEC"
fi
python -m pip install --quiet ninja
# --no-build-isolation: build against the torch installed above, never a second one.
echo "[setup] building fastprune (MAX_JOBS=${MAX_JOBS:-2})"
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install --quiet --no-build-isolation -e "$ROOT[${FASTPRUNE_EXTRAS:-test,structured,lightning,examples,shipping,transformers}]"
python - <<'PY'
import fastprune
info = fastprune.build_info()
print("[setup] fastprune", info["version"], "| compiled extension:", info["extension"],
      "| CUDA kernels:", info["cuda"], "| OpenMP:", info["openmp"], "| threads:", info["num_threads"])
PY
