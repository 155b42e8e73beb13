#!/usr/bin/env bash
# Train a learning-to-defer system: ./run.sh [l2d train flags...]
# Sets up .venv beside this script once. With no arguments it builds the demo dataset (digits
# shipped with scikit-learn, two specialist experts) under ./demo_data and trains on it; with
# arguments they go to `python -m l2d train` unchanged. Relative paths in the flags, mlflow.db and
# artifacts/ are taken from the folder you run it in, like `python -m l2d`.
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
(cd "$root" && . ./setup_env.sh)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# How an interrupted run says to continue: ./run.sh --resume --run-id ID.
export L2D_LAUNCHER="$root/run.sh"
if [ "$#" -eq 0 ]; then
  exec "$root/.venv/bin/python" -m l2d demo
fi
exec "$root/.venv/bin/python" -m l2d train "$@"
