#!/usr/bin/env bash
# Train a learning-to-defer system: ./run.sh [l2d train flags...]
# Sets up ./.venv once. With no arguments it builds the demo dataset (digits shipped with
# scikit-learn, two specialist experts) under ./demo_data and trains on it; with arguments they go
# to `python -m l2d train` unchanged.
set -euo pipefail
cd "$(dirname "$0")"
. ./setup_env.sh
if [ "$#" -eq 0 ]; then
  exec .venv/bin/python -m l2d demo
fi
exec .venv/bin/python -m l2d train "$@"
