# Sourced by run.sh, mlflow_server.sh and .ci/run: create ./.venv from requirements.txt once.
# The environment is rebuilt when requirements.txt changes (its hash is kept in the venv).
wanted="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/requirements.sha256 2>/dev/null)" != "$wanted" ]; then
  echo "l2d: setting up .venv from requirements.txt (once; a few minutes)" >&2
  rm -rf .venv
  "${PYTHON:-python3}" -m venv .venv
  # --no-compile: Python byte-compiles the modules it imports on first use, a fraction of the
  # thousands that pip would compile up front (about 45 s of a first ./run.sh here).
  .venv/bin/python -m pip install --quiet --no-compile --disable-pip-version-check \
    -r requirements.txt >&2
  echo "$wanted" > .venv/requirements.sha256
fi
