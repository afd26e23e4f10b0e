#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs pytest.
# README.md prints this exact command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
pip_install pytest pytest-timeout
# Real peers and validators the tests use; none of this is a runtime dependency of probed:
# a Ray cluster (multi-node checks), the Kubernetes schemas (deploy/ manifests), and
# Prometheus with promtool (a real consumer of /metrics).
"$PY" -c "import ray" 2>/dev/null || pip_install "ray[default]==2.60.0"
pip_install "kubernetes-validate==1.37.0"
if [ "$(id -u)" = 0 ] && ! command -v promtool >/dev/null; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null
fi
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
