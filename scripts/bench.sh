#!/usr/bin/env bash
# Set up (scripts/setup.sh) and print the benchmark table on the built-in default
# model (a Llama-shaped stack of Linear layers, ~100M parameters). Arguments go
# to `python -m fastprune.bench` (e.g. --params 400M, --device cuda).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
FASTPRUNE_EXTRAS="${FASTPRUNE_EXTRAS:-test}" source "$ROOT/scripts/setup.sh"
cd "$ROOT"
python -m fastprune.bench "$@"
