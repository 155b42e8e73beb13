#!/usr/bin/env bash
# The checks besides the tests (CI runs both): ruff, the import-linter contracts of
# pyproject.toml and a strict build of the documentation site. Installs requirements-dev.txt
# into ./.venv (set up from requirements.txt first, as test.sh does).
set -euo pipefail
# mkdocs-material prints a banner about its future on every build unless told not to.
export NO_MKDOCS_2_WARNING=1
cd "$(dirname "$0")"
. ./setup_env.sh
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt >&2
.venv/bin/ruff check .
.venv/bin/lint-imports
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
.venv/bin/mkdocs build --strict --quiet --site-dir "$site"
echo "l2d: ruff, import contracts and the docs site: all good" >&2
