#!/usr/bin/env bash
# Set up ./.venv once (from requirements.txt) and run the test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")"
. ./setup_env.sh
export JAX_PLATFORMS=cpu

# pytest, where exit code 5 (the selection given held none of these tests) is no failure.
run_pytest() {
  local status=0
  .venv/bin/python -m pytest -q "$@" || status=$?
  [ "$status" -eq 5 ] && status=0
  return "$status"
}
# Two workers (pytest-xdist) share the 2 cores, since most tests wait on one-threaded work
# (tracing, subprocess start-up); the tests marked "alone" run after them, by themselves.
run_pytest -n 2 --dist load -m "not alone" "$@"
run_pytest -m alone "$@"
