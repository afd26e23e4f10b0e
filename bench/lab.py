"""Processes of a bench run: start peers, wait until they answer, read their CPU time, stop them.

Every process is started here, remembered by PID and stopped by PID (SIGTERM, then SIGKILL after
a grace period), also on error: `Lab` is a context manager. Children also get SIGTERM from the
kernel if this process dies without cleaning up (PR_SET_PDEATHSIG), and the Python peers end
themselves when their parent goes (bench/peers/lifeline.py). Loopback only.
"""

import http.client
import os
import signal
import socket
import subprocess
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
READY_POLL = 0.05
PR_SET_PDEATHSIG = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel for SIGTERM when the parent dies."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """One started process and the PIDs whose CPU time counts as its own."""

    def __init__(self, name: str, popen: "subprocess.Popen[bytes]", log_path: str) -> None:
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.pids = [popen.pid]

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the process printed (for error notes)."""
        try:
            with open(self.log_path, "rb") as fh:
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()  # fields from `state` on; comm may hold spaces


def descendants(pid: int) -> List[int]:
    """PIDs of every live descendant of pid (nginx's workers, for instance)."""
    parents: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                parents[int(entry)] = int(fields[1])
    found: List[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def cpu_seconds(pids: Sequence[int]) -> Tuple[float, float]:
    """(user, system) CPU time of these processes, all their threads (dead ones too)."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            user += int(fields[11])  # utime, in clock ticks
            system += int(fields[12])  # stime
    return user / float(CLK_TCK), system / float(CLK_TCK)


def http_get(url_host: str, port: int, path: str, timeout: float = 1.0) -> Optional[tuple]:
    """(status, body) of one GET, or None when nothing answers."""
    conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Lab:
    """Starts processes and guarantees they are stopped, by PID, when the block ends."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.procs: List[Proc] = []

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], cwd: Optional[str] = None,
              env: Optional[Dict[str, str]] = None) -> Proc:
        """Start argv with output to LOG_DIR/NAME.log; it is stopped by stop_all()."""
        log_path = os.path.join(self.log_dir, name + ".log")
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, port: int, path: str,
                   ok: Callable[[int, bytes], bool], timeout: float) -> None:
        """Poll GET path until ok(status, body); RuntimeError with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError("%s exited with %s before answering:\n%s" % (
                    proc.name, proc.popen.returncode, proc.log_tail()))
            last = http_get("127.0.0.1", port, path)
            if last is not None and ok(last[0], last[1]):
                proc.pids = [proc.pid] + descendants(proc.pid)
                return
            time.sleep(READY_POLL)
        raise RuntimeError("%s: no good answer on port %d%s within %.0fs (last: %r):\n%s" % (
            proc.name, port, path, timeout, last, proc.log_tail()))

    def wait_listening(self, proc: Proc, port: int, timeout: float) -> None:
        """Wait until something accepts TCP connections on the loopback port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError("%s exited with %s:\n%s" % (
                    proc.name, proc.popen.returncode, proc.log_tail()))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(READY_POLL)
        raise RuntimeError("%s: nothing listens on port %d after %.0fs" % (
            proc.name, port, timeout))

    def stop(self, proc: Proc) -> Optional[int]:
        """SIGTERM by PID, SIGKILL after STOP_GRACE; then any leftover descendant by PID."""
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(STOP_GRACE)
        for pid in proc.pids[1:]:
            fields = _stat_fields(pid)
            if fields and fields[0] != "Z":
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.popen.returncode

    def stop_all(self) -> None:
        """Stop every process still running, newest first."""
        for proc in list(reversed(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                print("bench: could not stop %s (pid %d): %s" % (proc.name, proc.pid, exc))
