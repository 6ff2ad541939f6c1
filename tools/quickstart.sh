#!/usr/bin/env bash
# Sets up the environment and runs recsearch's main job on the embedded default data:
#  1. generates a synthetic Criteo-like dataset with a known Bayes-optimal AUC (the ceiling),
#  2. prints per-table statistics (saved for placement and step-cost estimates),
#  3. searches DLRM architectures and hyperparameters on it (configs/search/quickstart.yaml):
#     actor-critic controller, successive halving, sharding-aware memory checks, a latency budget
#     set by the reference DLRM; about a minute and a half on 2 idle CPU cores (README.md: measured run),
#  4. writes the search report: runs/quickstart/search/report/ (report.md, PNGs, best_train.yaml).
# Output goes to runs/quickstart/ (override with OUT=...); view with `tensorboard --logdir runs/quickstart/search`.
# For a smaller run (the test suite runs this script that way): DATA_ARGS and SEARCH_ARGS add key=value
# overrides to the data and search commands, VENV names the environment, QUICKSTART_INSTALL=0 skips setup.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [[ "${QUICKSTART_INSTALL:-1}" != 0 ]]; then VENV="$VENV" tools/install.sh; fi
OUT=${OUT:-runs/quickstart}
read -r -a data_args <<< "${DATA_ARGS:-}"
read -r -a search_args <<< "${SEARCH_ARGS:-}"
"$VENV/bin/recsearch" data synth --config configs/data/quickstart.yaml --out "$OUT/data" --force "${data_args[@]}"
"$VENV/bin/recsearch" data stats "$OUT/data" --out "$OUT/data/stats.json"
rm -rf "$OUT/search"  # a fresh search each time (continue an interrupted one with --resume instead)
"$VENV/bin/recsearch" search --config configs/search/quickstart.yaml --out "$OUT/search" \
  data_dir="$OUT/data" "${search_args[@]}"
"$VENV/bin/recsearch" report "$OUT/search"
