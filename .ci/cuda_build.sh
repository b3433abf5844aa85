#!/usr/bin/env bash
# Build fastprune against a CUDA build of torch exactly as a user would, on a
# machine without a GPU, and check what was built:
#   1. a second virtual environment with torch==$CUDA_TORCH_SPEC (the CUDA 13 build),
#   2. FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" pip install --no-build-isolation .[test,...]
#      (not editable) from a clean copy of the tracked files,
#   3. tests/cuda/check_build.py --cuda: the module loads, build_info()["cuda"] is True and
#      every op has compiled CPU and CUDA kernels,
#   4. the test suite under that torch (CPU tensors: no GPU here).
# Exit status non-zero on any failure. The environment is removed at the end
# (FASTPRUNE_CI_KEEP=1 keeps it); nvcc must be on PATH or CUDA_HOME set.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${CUDA_TORCH_SPEC:-torch==2.14.1}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastprune-cuda-ci.XXXXXX")"
[[ "${FASTPRUNE_CI_KEEP:-0}" == 1 ]] || trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)
step() { echo "[cuda-build] $(( $(date +%s) - t0 ))s: $*"; }

step "virtual environment with $TORCH_SPEC in $WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install --quiet --upgrade pip setuptools wheel
"$PY" -m pip install --quiet "$TORCH_SPEC" ninja
"$PY" -c 'import torch; assert torch.version.cuda, torch.__version__; print("[cuda-build] torch", torch.__version__, "CUDA", torch.version.cuda)'

# A clean copy of the tracked files: what a user's fresh clone holds (no build/, no _C*.so).
step "copying the tracked files"
mkdir -p "$WORK/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
else
  tar -C "$ROOT" --exclude=./.venv --exclude=./build --exclude='*.so' -cf - . | tar -xf - -C "$WORK/src"
fi

step "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=8.0;9.0 MAX_JOBS=${MAX_JOBS:-2} pip install --no-build-isolation ."
b0=$(date +%s)
(cd "$WORK/src" && FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS="${MAX_JOBS:-2}" \
  "$PY" -m pip install -v --no-build-isolation ".[test,structured,lightning,examples,shipping,transformers]") > "$WORK/build.log" 2>&1 || {
  echo "[cuda-build] first compiler errors:"; grep -n -m 40 -E "error|FAILED:" "$WORK/build.log" || true
  tail -n 60 "$WORK/build.log"; echo "[cuda-build] FAILED: the CUDA build did not install" >&2; exit 1; }
grep -h "fastprune setup:" "$WORK/build.log" | sed 's/^ */[cuda-build]   /'
step "built and installed in $(( $(date +%s) - b0 ))s"

# Outside the source tree, so that the installed package is the one imported.
cd "$WORK"
"$PY" -c 'import fastprune, sys; f = fastprune.__file__; print("[cuda-build] imported", f); sys.exit("site-packages" not in f)'
"$PY" "$ROOT/tests/cuda/check_build.py" --cuda

step "test suite under $TORCH_SPEC (installed package)"
"$PY" -m pytest "$ROOT/tests" -q -p no:cacheprovider
step "done"
