#!/usr/bin/env bash
# The one command for a fresh machine: install ferroloop (built from this
# checkout; needs a Rust toolchain) with the benchmark dependencies (uvloop,
# httptools, aiohttp), then run the benchmark driver. Arguments go to the
# driver:
#
#   benchmarks/run.sh              # full run
#   benchmarks/run.sh --quick      # ~4 min
#   benchmarks/run.sh --list       # the plan and its estimated duration
#
# PYTHON=/path/to/python benchmarks/run.sh uses another interpreter (default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
"$python" -m pip install '.[bench]'
exec "$python" -m benchmarks "$@"
