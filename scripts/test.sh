#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite twice: with the compiled
# extension, then on the pure-torch fallback (FASTPRUNE_NO_EXT=1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
python - <<'PY'
import sys, fastprune
if not fastprune.build_info()["extension"]:
    sys.exit("the compiled extension did not build/load: " + str(fastprune.build_info()["fallback_reason"]))
PY
echo "[test] pass 1/2: compiled extension"
python -m pytest tests -q "$@"
echo "[test] pass 2/2: pure-torch fallback (FASTPRUNE_NO_EXT=1)"
FASTPRUNE_NO_EXT=1 python -m pytest tests -q "$@"
