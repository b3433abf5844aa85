#!/usr/bin/env bash
# The measurements behind benchmarks/RESULTS.md, in the order they were taken.
# Writes one log per step into ${OUT:-benchmarks/logs/run-HHMM} (UTC start time; benchmarks/logs/ is not
# kept in git) and run.txt (commit, machine, kernels). Needs ~5 GB free for the 105M torch baselines,
# ~12 GB for torch at 200M; torch at 400M runs only if its estimated ~24 GB are available (otherwise
# size_sweep.py says it skipped it). Then: python benchmarks/make_results.py "$OUT" (RESULTS.md tables).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/logs/run-$(date -u +%H%M)}"
mkdir -p "$OUT"
{
  echo "date: $(date -u +%F)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  python -c "import torch; from fastprune.bench import machine_description; from fastprune.ops import build_info; b = build_info(); print('machine:', machine_description(torch.device('cpu'))); print('torch:', torch.__version__, '| fastprune kernels:', 'compiled extension' if b['extension'] else 'pure-torch fallback')"
} > "$OUT/run.txt"
log() { echo "== $(date -u +%FT%TZ) | $(uptime | sed 's/.*load/load/') | $(free -g | awk '/Mem:/{print $7}') GB available" | tee -a "$OUT/load.txt"; }
log; python -m fastprune.bench --model square --width 2048 --params 105M --repeat 7 --quiet > "$OUT/bench_105M_square.txt" 2>&1 || echo "step failed: see log" | tee -a "$OUT/load.txt"
log; python -m fastprune.bench --repeat 3 --quiet > "$OUT/bench_100M_llama.txt" 2>&1 || echo "step failed: see log" | tee -a "$OUT/load.txt"
log; python -m fastprune.bench --model square --width 4096 --params 1B --cases sparsify --skip-torch --repeat 2 --quiet > "$OUT/bench_1B_sparsify.txt" 2>&1 || echo "step failed: see log" | tee -a "$OUT/load.txt"
log; python benchmarks/size_sweep.py --repeat 3 > "$OUT/size_sweep.txt" 2>/dev/null || echo "step failed" | tee -a "$OUT/load.txt"
log; python -m pytest benchmarks --benchmark-only -q -p no:cacheprovider --benchmark-columns=min,median,rounds --benchmark-json "$OUT/pytest_benchmark.json" > "$OUT/pytest_benchmark.txt" 2>&1 || echo "step failed: see log" | tee -a "$OUT/load.txt"
log; python benchmarks/profile_global.py --repeat 5 > "$OUT/profile_global.txt" 2>&1 || true
log; python benchmarks/cold_first_call.py > "$OUT/cold_first_call.txt" 2>&1 || echo "step failed: see log" | tee -a "$OUT/load.txt"
log; python benchmarks/small_sweep.py --rounds 5 > "$OUT/small_sweep.txt" 2>/dev/null || echo "step failed" | tee -a "$OUT/load.txt"
log; python benchmarks/forward_interleaved.py --rounds 21 > "$OUT/forward_interleaved.txt" 2>&1 || echo "step failed: see log" | tee -a "$OUT/load.txt"
log; python benchmarks/iterated_global.py --repeat 3 > "$OUT/iterated_global.txt" 2>&1 || echo "step failed: see log" | tee -a "$OUT/load.txt"
# Past 2^31 elements: ~14 GB for fastprune's part; run only when 17 GB are available.
if (( $(free -g | awk '/Mem:/{print $7}') >= 17 )); then
  log; python benchmarks/beyond_int32.py > "$OUT/beyond_int32.txt" 2>&1 || echo "step failed: see log" | tee -a "$OUT/load.txt"
else
  echo "beyond_int32 skipped: fewer than 17 GB available" | tee -a "$OUT/load.txt"
fi
log
