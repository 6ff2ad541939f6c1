#!/usr/bin/env bash
# Sets up the environment and runs recsearch's main job on the embedded default data:
#  1. generates a synthetic Criteo-like dataset with a known Bayes-optimal AUC (the ceiling),
#  2. prints per-table statistics (saved for placement and step-cost estimates),
#  3. searches DLRM architectures and hyperparameters on it (configs/search/quickstart.yaml):
#     actor-critic controller, successive halving, sharding-aware memory checks, a latency budget
#     set by the reference DLRM; about ten minutes on 2 CPU cores,
#  4. writes the search report: runs/quickstart/search/report/ (report.md, PNGs, best_train.yaml).
# Output goes to runs/quickstart/ (override with OUT=...); view with `tensorboard --logdir runs/quickstart/search`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install.sh
OUT=${OUT:-runs/quickstart}
.venv/bin/recsearch data synth --config configs/data/quickstart.yaml --out "$OUT/data" --force
.venv/bin/recsearch data stats "$OUT/data" --out "$OUT/data/stats.json"
rm -rf "$OUT/search"  # a fresh search each time (continue an interrupted one with --resume instead)
.venv/bin/recsearch search --config configs/search/quickstart.yaml --out "$OUT/search" \
  data_dir="$OUT/data"
.venv/bin/recsearch report "$OUT/search"
