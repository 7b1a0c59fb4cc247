#!/usr/bin/env bash
# The GPU benchmark on a lent H200 (tools/bench/gpu.py says what it measures):
#   tools/bench/gpu.sh [ZIPS_DIR] [BUDGET_S]
# ZIPS_DIR holds images_background.zip, images_evaluation.zip, all_runs.zip and SHA256SUMS
# (default .zips: carried to the machine, ~15 MB). Results: a table, and gpu.json + gpu.md in
# $OUT when set. Runs with the machine's python3 from the repository root; needs no install.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
ZIPS=${1:-.zips}
BUDGET_S=${2:-330}
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,temperature.gpu --format=csv || true
exec "$PYTHON" -m tools.bench.gpu --zips "$ZIPS" --budget-s "$BUDGET_S"
