#!/usr/bin/env bash
# Sets up the environment and runs recsearch's main job on the embedded default data:
#  1. generates a synthetic Criteo-like dataset with a known Bayes-optimal AUC (the ceiling),
#  2. prints per-table statistics (saved for placement),
#  3. trains the quickstart DLRM on it and reports val/test AUC against the ceiling.
# Output goes to runs/quickstart/ (override with OUT=...); view with `tensorboard --logdir runs/quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install.sh
OUT=${OUT:-runs/quickstart}
.venv/bin/recsearch data synth --config configs/data/quickstart.yaml --out "$OUT/data" --force
.venv/bin/recsearch data stats "$OUT/data" --out "$OUT/data/stats.json"
.venv/bin/recsearch train --config configs/train/quickstart.yaml \
  data_dir="$OUT/data" output_dir="$OUT/train"
