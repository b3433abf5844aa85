#!/usr/bin/env bash
# Compile-checks every CUDA kernel file (csrc/cuda/*.cu) with nvcc for sm_80 and
# sm_90, then links the torch-free standalone kernel test. The kernels include
# only CUDA and CUB headers, so this works on a machine whose torch has no CUDA.
# The standalone test is run only when a GPU is visible (nvidia-smi -L).
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
kernels=()
for f in csrc/cuda/*.cu; do
  [[ "$(basename "$f")" == test_* ]] || kernels+=("$f")
done
tests=(csrc/cuda/test_*.cu)
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
       -gencode arch=compute_80,code=sm_80
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

# The torch-facing wrappers (csrc/cuda/*.cpp) are normally compiled only by
# setup.py on a CUDA machine. When a torch is importable here, syntax-check them
# against its headers too. A CPU-only torch wheel lacks one generated header
# (c10/cuda/impl/cuda_cmake_macros.h); an empty stand-in is put *after* the real
# include paths, so a real one always wins.
PY="${PYTHON:-python3}"
wrappers=(csrc/cuda/*.cpp)
CXX_BIN="${CXX:-g++}"
if (( ${#wrappers[@]} > 0 )) && command -v "$CXX_BIN" >/dev/null 2>&1 && \
   torch_inc="$("$PY" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null)"; then
  py_inc="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  # nvcc may be a wrapper script: ask it where its headers are.
  cuda_inc="$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | head -n 1)"
  [[ -n "$cuda_inc" ]] || cuda_inc="$(dirname "$(dirname "$(readlink -f "$NVCC")")")/include"
  mkdir -p "$tmp/shim/c10/cuda/impl"
  echo '#pragma once' > "$tmp/shim/c10/cuda/impl/cuda_cmake_macros.h"
  inc=()
  for d in $torch_inc "$py_inc" "$cuda_inc"; do inc+=(-isystem "$d"); done
  for f in "${wrappers[@]}"; do
    echo "compile_cuda: $f (syntax check against torch headers)"
    if ! "$CXX_BIN" -std=c++17 -fsyntax-only -Wall -Wextra -Werror -DFASTPRUNE_WITH_CUDA=1 \
         "${inc[@]}" -idirafter "$tmp/shim" -Icsrc "$f"; then
      echo "compile_cuda: FAILED $f" >&2
      status=1
    fi
  done
else
  echo "compile_cuda: no importable torch for $PY (or no $CXX_BIN): wrapper syntax check skipped"
fi

if (( status == 0 )); then
  echo "compile_cuda: OK (${#kernels[@]} kernel files, ${#tests[@]} test programs, ${#wrappers[@]} wrappers)"
fi
exit $status
