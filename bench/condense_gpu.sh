#!/usr/bin/env bash
# The papers' settings of bench/condense.py, for a machine with a CUDA GPU (not run on the 2-core
# CPU machine): ConvNet width 128, 256 real images per class per matching step, K = 1000 outer
# iterations with each paper's (T, varsigma_theta) loops, DCC's warm-up (250, 10), 5 condensations
# x 20 fresh networks per cell, 300 evaluation epochs; segmentation: 200 iterations of T = 10 steps,
# 500 training steps, 5 seeds. Expect hours per classification cell (the papers' counts).
#
#   bash bench/condense_gpu.sh [OUT]        # default bench/results/condense
#
# Every cell is stored in OUT/results.json when done and skipped on a re-run; condensations resume
# from their checkpoints, so the script can be stopped and started again.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench/results/condense}"
PY="${PYTHON:-.venv/bin/python}"
COMMON=(--out "$OUT" --profile paper --device cuda --threads 8)

"$PY" bench/condense.py classification "${COMMON[@]}" --datasets fashion --ipc 1,10 --methods random,dc,dcc,full
"$PY" bench/condense.py classification "${COMMON[@]}" --datasets fashion-cluttered --ipc 1,10 --methods random,dc,dcc,full
"$PY" bench/condense.py segmentation "${COMMON[@]}" --seg-methods dcc,dc,init,random
"$PY" bench/condense.py table --out "$OUT" --profile paper
