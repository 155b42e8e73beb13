#!/usr/bin/env bash
# Start an MLflow tracking server for l2d runs: sqlite backend, artifact serving, loopback only.
#   ./mlflow_server.sh [PORT]        (default 8080; data in ./mlflow_server/)
# Then train with --tracking-uri http://127.0.0.1:PORT. The server's PID is written to
# mlflow_server/server.pid; stop it (and its workers) with:  kill "$(cat mlflow_server/server.pid)"
set -euo pipefail
cd "$(dirname "$0")"
port="${1:-8080}"
. ./setup_env.sh
data="$PWD/mlflow_server"
mkdir -p "$data"
export MLFLOW_DISABLE_TELEMETRY=true
echo $$ > "$data/server.pid"
echo "MLflow server on http://127.0.0.1:$port (PID $$; stop: kill \"\$(cat $data/server.pid)\")"
exec .venv/bin/mlflow server --host 127.0.0.1 --port "$port" --workers 1 \
  --backend-store-uri "sqlite:///$data/mlflow.db" --artifacts-destination "$data/mlartifacts"
