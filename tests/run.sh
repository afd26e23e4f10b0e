#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs pytest.
# README.md prints this exact command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check pytest pytest-timeout
# Every pyenv Python runs the single-file smoke test; each needs nothing installed.
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
