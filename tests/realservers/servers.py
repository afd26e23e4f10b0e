"""One real server process on a loopback port: start, wait until it serves, signal, restart
slow or fast on the same port, stop. Every process is found and signalled by PID (the server's
own and its descendants), never by name; every wait is bounded and names what it waited for.

`VLLMServer` runs vLLM's OpenAI server from the vLLM CPU venv with a tiny model (hf_model.py),
`LlamaServer` runs llama-server with a GGUF (gguf_model.py). Each writes its output to a log
file in the test's work directory; `log_tail()` goes into every failure message.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .peers import llama_server_binary, vllm_python
from .procs import (
    descendants,
    find_descendant,
    kill_tree,
    proc_alive,
    proc_state,
    proc_title,
    send,
)

SERVER_HTTP_TIMEOUT = 5.0
VLLM_START_TIMEOUT = 300.0  # 40-120 s on 2 idle cores; the machine is shared, so generous
LLAMA_START_TIMEOUT = 60.0
ENGINE_TITLE = "VLLM::EngineCore"
LLAMA_LOADED_LINE = "llama_server: model loaded"  # llama-server's log once it serves
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_tcp_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url: str, body: Optional[Any] = None, headers: Optional[Dict[str, str]] = None,
            method: Optional[str] = None, timeout: float = SERVER_HTTP_TIMEOUT
            ) -> Tuple[int, Dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one request; HTTP errors are answers too.
    A dict or list body is sent as JSON."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode("utf-8") if not isinstance(body, bytes) else body
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with _NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def port_refuses(port: int) -> bool:
    """True when a connect to 127.0.0.1:port is refused right now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


class RealServer:
    """A server process: its command line comes from the subclass."""

    kind = "server"
    start_timeout = 60.0

    def __init__(self, workdir: str, port: int = 0) -> None:
        self.workdir = workdir
        self.port = port or free_tcp_port()
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.starts = 0
        self.log_path = ""
        self.api_key: Optional[str] = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    @property
    def pid(self) -> int:
        assert self.proc is not None, "%s not started" % self.kind
        return self.proc.pid

    def command(self) -> List[str]:
        raise NotImplementedError

    def environment(self) -> Dict[str, str]:
        return dict(os.environ)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "RealServer":
        """Start a new process (the port may still refuse while it loads)."""
        assert not self.running(), "%s already running" % self.kind
        self.starts += 1
        self.log_path = os.path.join(self.workdir, "%s-%d-%d.log" % (
            self.kind, self.port, self.starts))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.environment(),
                                         cwd=self.workdir, start_new_session=True)
        return self

    def health(self) -> int:
        """The status of GET /health, 0 when the connection fails."""
        try:
            return request(self.url + "/health", timeout=2.0)[0]
        except OSError:
            return 0

    def wait_ready(self, timeout: Optional[float] = None) -> float:
        """Block until /health is 200; seconds waited. Fails with the log if the process exits."""
        return self.wait_until(lambda: self.health() == 200, "/health 200", timeout)

    def wait_until(self, done: Callable[[], bool], what: str,
                   timeout: Optional[float] = None) -> float:
        """Block until `done()`; seconds waited. Fails naming `what`, with the log, when the
        process exits first or `timeout` (default: its start timeout) passes."""
        t0 = time.monotonic()
        limit = timeout if timeout is not None else self.start_timeout
        while not done():
            if not self.running():
                raise AssertionError("%s exited with %s while waiting for %s:\n%s" % (
                    self.kind, self.proc.returncode if self.proc else None, what,
                    self.log_tail()))
            if time.monotonic() - t0 > limit:
                raise AssertionError("%s: no %s within %gs:\n%s" % (
                    self.kind, what, limit, self.log_tail()))
            time.sleep(0.2)
        return time.monotonic() - t0

    def ensure_ready(self) -> None:
        """Start the server if it is not running, and wait until it serves."""
        if not self.running():
            self.start()
        self.wait_ready()

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Signal the server process itself (not its children)."""
        send(self.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        """The exit code once the server process has exited (AssertionError after timeout)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tree = [(p, proc_state(p), proc_title(p)[:40]) for p in
                    [self.proc.pid] + descendants(self.proc.pid)]
            raise AssertionError("%s still running after %gs: %s\n%s" % (
                self.kind, timeout, tree, self.log_tail())) from None

    def stop(self) -> None:
        """SIGTERM the server and its descendants, SIGKILL leftovers; reap it."""
        if self.proc is None:
            return
        kill_tree(self.proc.pid)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            send(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def crash_and_restart(self, closed_for: float) -> float:
        """SIGKILL the server and its descendants, keep the port closed about `closed_for` s,
        start a new process on the same port; the seconds the port really stayed closed."""
        assert self.proc is not None
        tree = [self.proc.pid] + descendants(self.proc.pid)
        for p in tree:
            send(p, signal.SIGKILL)
        self.proc.wait(timeout=10)
        closed_at = time.monotonic()
        deadline = time.monotonic() + 10
        while any(proc_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(max(0.0, closed_for - (time.monotonic() - closed_at)))
        self.start()
        while port_refuses(self.port) and self.running() and \
                time.monotonic() - closed_at < self.start_timeout:
            time.sleep(0.01)
        return time.monotonic() - closed_at

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class VLLMServer(RealServer):
    """vLLM's OpenAI server (CPU build) serving the tiny model as `tiny`."""

    kind = "vllm"
    start_timeout = VLLM_START_TIMEOUT

    def __init__(self, workdir: str, model_dir: str, port: int = 0, max_num_seqs: int = 1,
                 dev_mode: bool = True, api_key: Optional[str] = None,
                 extra: Sequence[str] = ()) -> None:
        super().__init__(workdir, port)
        self.model_dir = model_dir
        self.max_num_seqs = max_num_seqs
        self.dev_mode = dev_mode
        self.api_key = api_key
        self.extra = list(extra)

    def command(self) -> List[str]:
        cmd = [vllm_python(), "-m", "vllm.entrypoints.openai.api_server",
               "--model", self.model_dir, "--served-model-name", "tiny", "--dtype", "float32",
               "--enforce-eager", "--max-model-len", "512", "--host", "127.0.0.1",
               "--port", str(self.port), "--max-num-seqs", str(self.max_num_seqs)]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        return cmd + self.extra

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        env.pop("VLLM_SERVER_DEV_MODE", None)
        if self.dev_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        return env

    def auth(self) -> Dict[str, str]:
        return {"Authorization": "Bearer " + self.api_key} if self.api_key else {}

    def engine_pid(self) -> int:
        """PID of the engine core process (a child of the API server)."""
        pid = find_descendant(self.pid, ENGINE_TITLE)
        assert pid is not None, "no %s under vLLM pid %d" % (ENGINE_TITLE, self.pid)
        return pid

    def complete(self, max_tokens: int = 8, timeout: float = 120.0,
                 prompt: str = "Hello") -> Tuple[int, Dict[str, Any]]:
        """One completion (ignore_eos, so it generates exactly max_tokens): (status, JSON)."""
        status, _, body = request(self.url + "/v1/completions", {
            "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0}, headers=self.auth(), timeout=timeout)
        try:
            return status, json.loads(body.decode("utf-8"))
        except ValueError:
            return status, {"raw": body.decode("utf-8", "replace")}


class LlamaServer(RealServer):
    """llama-server with one GGUF model, `--threads 1` (gentle on a shared 2-core machine)."""

    kind = "llama"
    start_timeout = LLAMA_START_TIMEOUT

    def __init__(self, workdir: str, model_path: str, port: int = 0, parallel: int = 1,
                 metrics: bool = True, api_key: Optional[str] = None,
                 extra: Sequence[str] = ()) -> None:
        super().__init__(workdir, port)
        self.model_path = model_path
        self.parallel = parallel
        self.metrics = metrics
        self.api_key = api_key
        self.extra = list(extra)

    def command(self) -> List[str]:
        cmd = [llama_server_binary(), "-m", self.model_path, "--host", "127.0.0.1",
               "--port", str(self.port), "--parallel", str(self.parallel), "-c", "4096",
               "--threads", "1", "--threads-batch", "1"]
        if self.metrics:
            cmd.append("--metrics")
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        return cmd + self.extra

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        for name in list(env):
            if name.startswith("LLAMA_ARG_") or name == "LLAMA_API_KEY":
                del env[name]  # the command line says everything
        return env

    def auth(self) -> Dict[str, str]:
        return {"Authorization": "Bearer " + self.api_key} if self.api_key else {}

    def wait_loaded(self) -> None:
        """Block until this process's log says its model is loaded: with --reuse-port another
        process may answer /health, so the log is the only word of this one."""
        self.wait_until(lambda: LLAMA_LOADED_LINE in self.log_text(), repr(LLAMA_LOADED_LINE))

    def complete(self, n_predict: int = 8, timeout: float = 120.0,
                 prompt: str = "Hello") -> Tuple[int, Dict[str, Any]]:
        """One /completion generating exactly n_predict tokens: (status, JSON)."""
        status, _, body = request(self.url + "/completion", {
            "prompt": prompt, "n_predict": n_predict, "ignore_eos": True, "temperature": 0},
            headers=self.auth(), timeout=timeout)
        try:
            return status, json.loads(body.decode("utf-8"))
        except ValueError:
            return status, {"raw": body.decode("utf-8", "replace")}
