"""Session fixtures for the real-server tests: test models written once per session into a
temporary directory (nothing is downloaded), and the peers they need."""

import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from .peers import llama_vocab_file, vllm_python
from .servers import LlamaServer

HERE = Path(__file__).resolve().parent
MODEL_WRITE_TIMEOUT = 600  # the vLLM venv imports torch and transformers: slow on a busy box


@pytest.fixture(scope="session")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session directory for the test models."""
    return tmp_path_factory.mktemp("real-models")


def _hf_model(real_models: Path, size: str) -> str:
    out = real_models / ("%s-llama" % size)
    if not (out / "config.json").exists():
        proc = subprocess.run([vllm_python(), str(HERE / "hf_model.py"), str(out), size],
                              capture_output=True, timeout=MODEL_WRITE_TIMEOUT,
                              env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
        assert proc.returncode == 0, "writing the %s HF model failed:\n%s" % (
            size, proc.stderr.decode("utf-8", "replace")[-3000:])
    return str(out)


@pytest.fixture(scope="session")
def tiny_hf_model(real_models: Path) -> str:
    """A tiny random-weight Llama for vLLM (hf_model.py, run by the vLLM venv's python)."""
    return _hf_model(real_models, "tiny")


@pytest.fixture(scope="session")
def slow_hf_model(real_models: Path) -> str:
    """A ~400 MB random-weight Llama for vLLM: tens of ms a token, so a few requests keep the
    engine busy for seconds."""
    return _hf_model(real_models, "slow")


def _gguf(real_models: Path, size: str) -> str:
    from .gguf_model import write_gguf_model
    path = real_models / ("%s.gguf" % size)
    if not path.exists():
        write_gguf_model(str(path), llama_vocab_file(), size)
    return str(path)


@pytest.fixture(scope="session")
def tiny_gguf(real_models: Path) -> str:
    """A few-MB random-weight llama GGUF: loads at once, generates fast."""
    return _gguf(real_models, "tiny")


@pytest.fixture(scope="session")
def big_gguf(real_models: Path) -> Iterator[str]:
    """A ~1.9 GB f16 GGUF: with --load-mode dio, "Loading model" lasts seconds; decodes slowly."""
    path = _gguf(real_models, "big")
    yield path
    os.unlink(path)  # 2 GB is too much to leave in /tmp until pytest prunes it


@pytest.fixture(scope="module")
def start_daemon_module() -> Iterator[Any]:
    """tests/conftest.py's start_daemon for module-scoped scenarios: all stopped at the end."""
    from conftest import daemon_factory  # tests/conftest.py (tests/ is on sys.path)

    yield from daemon_factory()


@pytest.fixture(scope="module")
def llama_servers(tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Callable[..., LlamaServer]]:
    """Factory of llama-servers (not started); every one is stopped when the module ends,
    also on failure."""
    workdir = str(tmp_path_factory.mktemp("llama"))
    made: List[LlamaServer] = []

    def make(model: str, **kw: Any) -> LlamaServer:
        server = LlamaServer(workdir, model, **kw)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()
