"""Shared test helpers: free loopback ports, a probed daemon subprocess, fixture paths."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # copies of real captures; see its README.md


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (good enough for tests)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until a TCP connect to host:port succeeds, or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("nothing listening on %s:%d after %ss" % (host, port, timeout))


class DaemonProcess:
    """A `python -m probed` subprocess on a loopback port, stopped by PID."""

    def __init__(self, args: List[str], port: int, env: Optional[dict] = None,
                 python: str = sys.executable, script: Optional[str] = None) -> None:
        self.port = port
        cmd = [python, script] if script else [python, "-m", "probed"]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(REPO)
        full_env.update(env or {})
        # The harness starts daemons to test the server as much as the checks, so an empty check
        # set is meant here (probed refuses one otherwise); tests of that refusal call main().
        self.proc = subprocess.Popen(
            cmd + ["--addr", "127.0.0.1:%d" % port, "--allow-no-checks"] + args, cwd=str(REPO),
            env=full_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_listening("127.0.0.1", port)
        except AssertionError:
            self.stop()
            raise AssertionError("probed did not start: %s" % self.stderr_text())

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon (and only to it)."""
        self.proc.send_signal(signum)

    def stop(self) -> int:
        """SIGKILL if still running; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=10)

    def stderr_text(self) -> str:
        """Everything the daemon logged (stops it first if needed)."""
        self.stop()
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode("utf-8", "replace")


def daemon_factory() -> Iterator:
    """Yields start(args, env=None, port=None) -> DaemonProcess; stops them all when resumed
    (the body of start_daemon and of module-scoped variants)."""
    started: List[DaemonProcess] = []

    def start(args: List[str], env: Optional[dict] = None, **kw: object) -> DaemonProcess:
        port = kw.pop("port", None) or free_port()
        daemon = DaemonProcess(args, port, env, **kw)  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
        for stream in (daemon.proc.stdout, daemon.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def start_daemon() -> Iterator:
    """Factory fixture: start_daemon(args, env=None) -> DaemonProcess; all stopped at the end."""
    yield from daemon_factory()
