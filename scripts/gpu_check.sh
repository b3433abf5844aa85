#!/usr/bin/env bash
# Verify and measure fastprune on a GPU machine, in one command:
#
#     bash scripts/gpu_check.sh [OUT]          # OUT defaults to gpu_check_out/
#
# Uses the python and torch already installed (PYTHON=... to choose another
# interpreter); needs no network and leaves that environment untouched: the
# package is built into OUT/site. Stages, each timed, each run whatever
# happened before it:
#   build       pip install --no-build-isolation --no-deps --target OUT/site . (MAX_JOBS = cores,
#               FORCE_CUDA=1 and TORCH_CUDA_ARCH_LIST = this GPU's arch when a GPU is present),
#               then tests/cuda/check_build.py (compiled CPU and CUDA kernels registered)
#   kernels     tests/cuda/test_kernels_standalone.cu (compiled during the build), then
#               compute-sanitizer memcheck / racecheck / synccheck on it and on
#               tests/cuda/check_cuda_ops.py --quick (skipped with a note without compute-sanitizer)
#   pytest      the test suite, with cuda in the device fixture
#   bench_7b    python -m fastprune.bench on a 7B-parameter bf16 model: global L1 50% and sparsify_,
#               fastprune and torch (its time or its error)
#   figures     benchmarks/gpu_figures.py: mask multiply as a fraction of a copy's bandwidth,
#               ln_structured on large tensors against torch, row_kselect / nm_select over a
#               7B model's linear layers against torch.topk
#   llm         benchmarks/gpu_llm.py: fastprune.llm.prune (Wanda, SparseGPT) on a ~1B Llama-shaped
#               model on the GPU, and on the first blocks on the GPU and the CPU (mask agreement)
#   pb          the pytest-benchmark suite (benchmarks/) on the GPU (FASTPRUNE_BENCH_DEVICE=cuda)
# GPU_CHECK_STAGES (default "kernels pytest bench_7b figures llm pb") chooses the stages after
# the build; GPU_CHECK_PYTEST_K (default "cuda": the tests parametrised over the CUDA device
# and tests/cuda; "" runs the whole suite) selects the tests of the pytest stage;
# GPU_CHECK_SANITIZER_TOOLS (default "memcheck racecheck synccheck") the compute-sanitizer tools.
# Everything lands in OUT: one log per stage, JSON figures, summary.md and summary.json.
# Without a CUDA device only the build runs; the summary says so and the exit status is 0.
# With one, the exit status is 1 when any stage failed. Stage time limits keep the whole
# run within GPU_CHECK_BUDGET_S seconds (default 570, under 10 minutes): each stage gets at
# most its own cap and never eats the minimum the later stages need.
set -uo pipefail  # no -e: a failing stage must not stop the next one

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_ARG="${1:-gpu_check_out}"
mkdir -p "$OUT_ARG"
OUT="$(cd "$OUT_ARG" && pwd)"
SITE="$OUT/site"
PY="${PYTHON:-$(command -v python || command -v python3)}"
BUDGET="${GPU_CHECK_BUDGET_S:-570}"
STAGES_WANTED=" ${GPU_CHECK_STAGES:-kernels pytest bench_7b figures llm pb} "
PYTEST_K="${GPU_CHECK_PYTEST_K-cuda}"
wanted() { [[ "$STAGES_WANTED" == *" $1 "* ]]; }
STAGES="$OUT/stages.tsv"
: > "$STAGES"
START_ALL=$(date +%s)

say() { echo "[gpu_check] $*"; }
# limit CAP LATER: seconds for the next stage: at most CAP, leaving LATER seconds of the
# budget to the stages after it (never under 20).
limit() {
  local left=$(( BUDGET - ($(date +%s) - START_ALL) - $2 ))
  (( left < $1 )) || left=$1
  (( left >= 20 )) || left=20
  echo "$left"
}

# run_stage NAME LIMIT_S CMD...: runs the program CMD (logged to OUT/NAME.log) under a time
# limit (shell functions go through `export -f` and `bash -c`) and records "name<TAB>status<TAB>seconds<TAB>note" in stages.tsv.
run_stage() {
  local name="$1" lim="$2"; shift 2
  say "stage $name (limit ${lim}s) ..."
  local t0=$(date +%s)
  timeout -k 15 "$lim" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? t1=$(date +%s) status note=""
  case $rc in
    0) status=ok ;;
    124|137) status=timeout; note="stopped after ${lim}s" ;;
    *) status=failed; note="exit status $rc" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((t1 - t0))" "$note" >> "$STAGES"
  say "stage $name: $status in $((t1 - t0))s${note:+ ($note)} -> $OUT/$name.log"
  return $rc
}
skip_stage() {  # skip_stage NAME NOTE
  printf '%s\t%s\t0\t%s\n' "$1" skipped "$2" >> "$STAGES"
  say "stage $1: skipped ($2)"
}

# ---- environment (recorded, not a stage)
GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L > "$OUT/nvidia-smi.txt" 2>&1; then
  nvidia-smi >> "$OUT/nvidia-smi.txt" 2>&1
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader \
    > "$OUT/gpus.csv" 2>/dev/null
  GPU=1
fi
"$PY" - > "$OUT/env.json" 2>"$OUT/env.err" <<'PY'
import json, os, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform(), "cores": os.cpu_count()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
except Exception as exc:  # the summary shows it
    info["torch_error"] = repr(exc)
print(json.dumps(info))
PY
CUDA_OK=$("$PY" -c 'import json,sys; print(int(bool(json.load(open(sys.argv[1])).get("cuda_available"))))' \
  "$OUT/env.json" 2>/dev/null || echo 0)
[[ "$GPU" == 1 && "$CUDA_OK" == 1 ]] || GPU=0
CORES=$(nproc 2>/dev/null || echo 2)
ARCH=""
if [[ "$GPU" == 1 ]]; then
  ARCH=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["capability"])' "$OUT/env.json")
fi
say "python $PY, $CORES cores, GPU: $([[ $GPU == 1 ]] && echo "yes (sm ${ARCH})" || echo no), output in $OUT"

# Toolkit: the one setup.py will use (CUDA_HOME/CUDA_PATH, the nvcc on PATH, /usr/local/cuda).
NVCC=""
for cand in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}" "$(command -v nvcc || true)" \
            /usr/local/cuda/bin/nvcc; do
  if [[ -n "$cand" && -x "$cand" ]]; then NVCC="$cand"; break; fi
done
SANITIZER="$(command -v compute-sanitizer || true)"
if [[ -z "$SANITIZER" && -n "$NVCC" ]]; then
  tk="$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n 1)"
  for cand in "$tk/compute-sanitizer" "$tk/../compute-sanitizer/compute-sanitizer" \
              "$(dirname "$(readlink -f "$NVCC")")/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer; do
    if [[ -x "$cand" ]]; then SANITIZER="$cand"; break; fi
  done
fi

# ---- the standalone kernel test compiles during the build (nvcc, this GPU's arch only)
TEST_BIN="$OUT/bin/test_kernels_standalone"
COMPILE_PID=""
if [[ "$GPU" == 1 && -n "$NVCC" ]]; then
  mkdir -p "$OUT/bin"
  sm="${ARCH/./}"
  (
    t0=$(date +%s)
    cd "$ROOT" && timeout 300 "$NVCC" -std=c++17 -O2 -lineinfo \
      -gencode "arch=compute_${sm},code=sm_${sm}" --expt-relaxed-constexpr -Icsrc/cuda \
      -o "$TEST_BIN" tests/cuda/test_kernels_standalone.cu \
      csrc/cuda/kselect_cuda.cu csrc/cuda/mask_mul_cuda.cu csrc/cuda/channel_norms_cuda.cu
    rc=$?
    echo "compile finished with status $rc in $(( $(date +%s) - t0 ))s"
    echo "$rc" > "$OUT/bin/compile.rc"
  ) > "$OUT/kernels_compile.log" 2>&1 &
  COMPILE_PID=$!
  # never leave the compile behind (its timeout passes the TERM on to nvcc)
  trap 'pkill -TERM -P "$COMPILE_PID" 2>/dev/null; kill "$COMPILE_PID" 2>/dev/null' EXIT
fi

# ---- build
build() {
  rm -rf "$SITE"
  local -a env=(MAX_JOBS="$CORES")
  if [[ "$GPU" == 1 ]]; then env+=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}"); fi
  echo "+ ${env[*]} $PY -m pip install -v --no-build-isolation --no-deps --target $SITE $ROOT"
  if ! env "${env[@]}" "$PY" -m pip install -v --no-build-isolation --no-deps --target "$SITE" "$ROOT"; then
    [[ "$GPU" == 1 ]] || return 1
    # The stage has failed; a build without FORCE_CUDA (CPU extension, or pure torch) still
    # lets the later stages run and report what works.
    echo "BUILD FAILED with FORCE_CUDA=1; building without it for the later stages"
    rm -rf "$SITE"
    MAX_JOBS="$CORES" "$PY" -m pip install -v --no-build-isolation --no-deps --target "$SITE" "$ROOT"
    return 1
  fi
  echo "+ check_build.py"
  (cd "$OUT" && PYTHONPATH="$SITE" "$PY" "$ROOT/tests/cuda/check_build.py" $([[ "$GPU" == 1 ]] && echo --cuda))
}
export -f build
export OUT SITE PY ROOT CORES GPU ARCH NVCC SANITIZER TEST_BIN COMPILE_PID GPU_CHECK_SANITIZER_TOOLS
if [[ "$GPU" == 1 ]]; then
  run_stage build "$(limit 200 200)" bash -c build
else
  run_stage build 1800 bash -c build  # the CPU path has no GPU lease to fit in
fi
(cd "$OUT" && PYTHONPATH="$SITE" "$PY" -c 'import fastprune, json; print(json.dumps(fastprune.build_info()))') \
  > "$OUT/build_info.json" 2>/dev/null || rm -f "$OUT/build_info.json"

summarize() {
  "$PY" "$ROOT/scripts/gpu_check_summary.py" "$OUT" "$(( $(date +%s) - START_ALL ))"
}

if [[ "$GPU" != 1 ]]; then
  say "no CUDA device present (nvidia-smi finds none, or torch.cuda.is_available() is False): GPU stages not run"
  for s in kernels pytest bench_7b figures llm pb; do skip_stage "$s" "no CUDA device present"; done
  summarize
  exit 0
fi

# ---- kernels: standalone test and compute-sanitizer
kernels() {
  local rc=0
  if [[ -z "$COMPILE_PID" ]]; then
    echo "no nvcc found (set CUDA_HOME): standalone kernel test not built"; rc=1
  else
    while [[ ! -f "$OUT/bin/compile.rc" ]]; do sleep 1; done  # compiling since the build started
    if [[ "$(cat "$OUT/bin/compile.rc")" != 0 ]]; then
      cat "$OUT/kernels_compile.log"; echo "standalone kernel test did not compile"; rc=1
    fi
  fi
  cat "$OUT/kernels_compile.log" 2>/dev/null | tail -n 1
  if [[ -x "$TEST_BIN" ]]; then
    echo "+ test_kernels_standalone"
    "$TEST_BIN" || rc=1
  fi
  if [[ -z "$SANITIZER" ]]; then
    echo "SANITIZER-SKIPPED: compute-sanitizer not found (PATH, the toolkit's bin, /usr/local/cuda/bin)"
    return $rc
  fi
  for tool in ${GPU_CHECK_SANITIZER_TOOLS:-memcheck racecheck synccheck}; do
    if [[ -x "$TEST_BIN" ]]; then
      echo "+ compute-sanitizer --tool $tool test_kernels_standalone --quick"
      timeout 60 "$SANITIZER" --tool "$tool" --error-exitcode 3 "$TEST_BIN" --quick \
        > "$OUT/sanitizer_${tool}_standalone.log" 2>&1
      local r=$?; tail -n 3 "$OUT/sanitizer_${tool}_standalone.log"
      echo "SANITIZER $tool standalone: $([[ $r == 0 ]] && echo ok || echo "FAILED ($r)")"; [[ $r == 0 ]] || rc=1
    fi
    # torch under racecheck / synccheck takes minutes; the kernels' shared-memory use is
    # covered by the standalone binary above, so the ops script runs under memcheck only.
    [[ "$tool" == memcheck ]] || continue
    echo "+ compute-sanitizer --tool $tool python tests/cuda/check_cuda_ops.py --quick"
    (cd "$OUT" && PYTHONPATH="$SITE" timeout 60 "$SANITIZER" --tool "$tool" --error-exitcode 3 \
       --target-processes all "$PY" "$ROOT/tests/cuda/check_cuda_ops.py" --quick) \
      > "$OUT/sanitizer_${tool}_ops.log" 2>&1
    local r=$?; tail -n 3 "$OUT/sanitizer_${tool}_ops.log"
    echo "SANITIZER $tool ops: $([[ $r == 0 ]] && echo ok || echo "FAILED ($r)")"; [[ $r == 0 ]] || rc=1
  done
  return $rc
}
export -f kernels
wanted kernels && run_stage kernels "$(limit 100 150)" bash -c kernels

# ---- pytest with cuda in the device fixture (tests/conftest.py adds it when torch sees a GPU)
wanted pytest && run_stage pytest "$(limit 90 130)" bash -c "cd '$OUT' && PYTHONPATH='$SITE' '$PY' -m pytest \
  '$ROOT/tests' -q -p no:cacheprovider ${PYTEST_K:+-k '$PYTEST_K'} --junitxml='$OUT/pytest.xml'"

# ---- benchmarks
wanted bench_7b && run_stage bench_7b "$(limit 90 90)" bash -c "cd '$OUT' && PYTHONPATH='$SITE' '$PY' -m fastprune.bench \
  --device cuda --dtype bfloat16 --params 7B --cases global_l1,sparsify --amount 0.5 --repeat 1 --quiet \
  --json '$OUT/bench_7b.json'"
wanted figures && run_stage figures "$(limit 80 50)" bash -c "cd '$OUT' && PYTHONPATH='$SITE' '$PY' \
  '$ROOT/benchmarks/gpu_figures.py' --device cuda --json '$OUT/figures.json'"
wanted llm && run_stage llm "$(limit 120 15)" bash -c "cd '$OUT' && PYTHONPATH='$SITE' '$PY' \
  '$ROOT/benchmarks/gpu_llm.py' --device cuda --cpu-blocks 1 --json '$OUT/llm.json'"
wanted pb && run_stage pb "$(limit 120 0)" bash -c "cd '$ROOT/benchmarks' && FASTPRUNE_BENCH_DEVICE=cuda \
  PYTHONPATH='$SITE' '$PY' -m pytest . -q -p no:cacheprovider --benchmark-only --benchmark-columns=min,median,rounds \
  --benchmark-json='$OUT/pb.json' && '$PY' pb_table.py '$OUT/pb.json' > '$OUT/pb_table.md'"

summarize
