#!/usr/bin/env bash
# Set up ./.venv once (from requirements.txt) and run the test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")"
. ./setup_env.sh
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest -q "$@"
