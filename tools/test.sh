#!/usr/bin/env bash
# Sets up the environment (tools/install.sh) and runs the whole test suite, slow tests included.
# Extra arguments go to pytest, e.g. `tools/test.sh -m "not slow" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install.sh
# as recsearch's CLI does for its commands: tests train in-process, beside subprocess trials
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python -m pytest "$@"
