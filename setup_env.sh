# Sourced by run.sh, mlflow_server.sh and .ci/run: create ./.venv from requirements.txt once.
# The environment is rebuilt when requirements.txt changes (its hash is kept in the venv).
wanted="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/requirements.sha256 2>/dev/null)" != "$wanted" ]; then
  echo "l2d: setting up .venv from requirements.txt (once; a few minutes)" >&2
  rm -rf .venv
  "${PYTHON:-python3}" -m venv .venv
  # pip byte-compiles the installed packages on one core; compileall -j 0 does the same on every
  # core (here: 61 s for both steps instead of 87 s). Byte-compiled up front, every later
  # launch skips it, even where PYTHONDONTWRITEBYTECODE is set.
  .venv/bin/python -m pip install --quiet --no-compile --disable-pip-version-check \
    -r requirements.txt >&2
  .venv/bin/python -m compileall -q -j 0 .venv/lib >&2
  echo "$wanted" > .venv/requirements.sha256
fi
