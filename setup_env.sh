# Sourced by run.sh, mlflow_server.sh and .ci/run: create ./.venv from requirements.txt once.
# The environment is rebuilt when requirements.txt changes (its hash is kept in the venv).
wanted="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/requirements.sha256 2>/dev/null)" != "$wanted" ]; then
  echo "l2d: setting up .venv from requirements.txt (once; a few minutes)" >&2
  rm -rf .venv
  "${PYTHON:-python3}" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt >&2
  echo "$wanted" > .venv/requirements.sha256
fi
