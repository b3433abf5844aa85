#!/usr/bin/env bash
# Compile-checks every CUDA kernel file (csrc/cuda/*.cu) with nvcc for sm_90
# with every warning an error (stricter than the extension build, which CI runs
# for sm_80 and sm_90 in .ci/cuda_build.sh; one arch here halves the time), then
# links the torch-free standalone kernel tests (tests/cuda/*.cu). The kernels
# include only CUDA and CUB headers, so this needs no torch. The standalone test
# is run only when a GPU is visible (nvidia-smi -L). The torch-facing wrappers
# (csrc/cuda/*_wrapper.cpp) are compiled by the real build (.ci/cuda_build.sh).
# Exit status: non-zero on any compile or link error (or a failing GPU test);
# 0 with a "skipping" message when nvcc is absent.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

NVCC="${NVCC:-}"
if [[ -z "$NVCC" ]]; then
  if command -v nvcc >/dev/null 2>&1; then
    NVCC="$(command -v nvcc)"
  elif [[ -n "${CUDA_HOME:-}" && -x "${CUDA_HOME}/bin/nvcc" ]]; then
    NVCC="${CUDA_HOME}/bin/nvcc"
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
    NVCC=/usr/local/cuda/bin/nvcc
  fi
fi
if [[ -z "$NVCC" ]]; then
  echo "compile_cuda: nvcc not found, skipping the CUDA compile check"
  exit 0
fi

shopt -s nullglob
kernels=(csrc/cuda/*.cu)
tests=(tests/cuda/*.cu)
if (( ${#kernels[@]} == 0 )); then
  echo "compile_cuda: no csrc/cuda/*.cu kernel files found" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# -Werror=all-warnings turns every nvcc/front-end warning into an error, so a
# warning cannot slip into CI unnoticed. Host-compiler warnings are enabled too.
# The -D/--expt flags are the ones torch's CUDAExtension passes, so the kernels
# are checked under the same restrictions as in the real build.
flags=(-std=c++17 -O2 -lineinfo
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
       --expt-relaxed-constexpr -Xcompiler -fPIC
       -gencode arch=compute_90,code=sm_90
       -Werror all-warnings
       -Xcompiler -Wall,-Wextra
       -Icsrc/cuda)
echo "compile_cuda: $("$NVCC" --version | tail -n 1)"

status=0
objs=()
for f in "${kernels[@]}"; do
  obj="$tmp/$(basename "${f%.cu}").o"
  echo "compile_cuda: $f"
  if "$NVCC" "${flags[@]}" -c "$f" -o "$obj"; then
    objs+=("$obj")
  else
    echo "compile_cuda: FAILED $f" >&2
    status=1
  fi
done

for t in "${tests[@]}"; do
  exe="$tmp/$(basename "${t%.cu}")"
  echo "compile_cuda: $t (linked with the kernels)"
  if ! "$NVCC" "${flags[@]}" "$t" "${objs[@]}" -o "$exe"; then
    echo "compile_cuda: FAILED $t" >&2
    status=1
    continue
  fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "compile_cuda: GPU found, running $exe"
    "$exe" || { echo "compile_cuda: FAILED running $t" >&2; status=1; }
  else
    echo "compile_cuda: no GPU visible, $t compiled but not run"
  fi
done

if (( status == 0 )); then
  echo "compile_cuda: OK (${#kernels[@]} kernel files, ${#tests[@]} test programs)"
fi
exit $status
