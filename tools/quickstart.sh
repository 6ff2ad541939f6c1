#!/usr/bin/env bash
# Sets up the environment and runs recsearch's main job on the embedded default data:
# generates a synthetic Criteo-like dataset (with its known AUC ceiling) and prints its statistics.
# Output goes to runs/quickstart/ (override with OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install.sh
OUT=${OUT:-runs/quickstart}
.venv/bin/recsearch data synth --config configs/data/quickstart.yaml --out "$OUT/data"
.venv/bin/recsearch data stats "$OUT/data" --out "$OUT/data/stats.json"
