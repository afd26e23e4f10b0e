"""What every real-server scenario does: run probed against the server as a user would
(`python3 -m probed --vllm URL ...`, started like tests/conftest.py's start_daemon), watch its
three groups with a Timeline, check a detection time against a bound that allows for this
process's own stalls, and note the measured row for the closing table.
"""

import json
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from backends import LogTail  # tests/ is on sys.path (as for test_ray_e2e.py)
from conftest import free_port

from .servers import request
from .timeline import Answer, Timeline

TABLE_ENV = "PROBED_REALSERVERS_TABLE"  # a file that collects the measured rows (JSON lines)
PROBE_SLACK = 1.0  # a verdict reaches the Timeline within one of its steps plus a reply


class Probed:
    """A running probed daemon: its probe port, admin port, and its log read live."""

    def __init__(self, daemon: Any, admin_port: int) -> None:
        self.daemon = daemon
        self.port = daemon.port
        self.admin_port = admin_port
        assert daemon.proc.stderr is not None
        self.log = LogTail(daemon.proc.stderr)

    @property
    def pid(self) -> int:
        return self.daemon.proc.pid

    def admin(self, path: str, method: str = "GET", timeout: float = 120.0) -> str:
        """One admin call; its body."""
        status, _, body = request("http://127.0.0.1:%d%s" % (self.admin_port, path),
                                  method=method, timeout=timeout)
        assert status == 200, "admin %s: HTTP %d %r" % (path, status, body[:300])
        return body.decode("utf-8", "replace")

    def lines(self, *needles: str) -> List[str]:
        return self.log.matching(*needles)

    def restarts(self) -> List[str]:
        """The `backend restarted` log lines so far."""
        return self.log.matching('msg="backend restarted"')


def start_probed(start_daemon: Callable[..., Any], args: Sequence[str],
                 env: Optional[Dict[str, str]] = None) -> Probed:
    """probed with `args`, an admin listener on loopback and the text log."""
    admin = free_port()
    # Blank the key variables the test environment may set, so only `args` and `env` give
    # probed a key (an empty variable counts as unset).
    blank = {k: "" for k in ("VLLM_API_KEY", "OPENAI_API_KEY", "LLAMA_API_KEY")
             if k in os.environ}
    daemon = start_daemon(list(args) + ["--admin-addr", "127.0.0.1:%d" % admin],
                          env=dict(blank, **(env or {})))
    return Probed(daemon, admin)


def bound(nominal: float, timeline: Timeline) -> float:
    """A detection bound: the nominal time plus this process's own worst stall so far."""
    return nominal + timeline.worst_lateness + PROBE_SLACK


def assert_detected(timeline: Timeline, group: str, ok: bool, since: float, nominal: float,
                    what: str) -> Answer:
    """Wait for `group` to answer `ok` after `since`, and that it came within the bound."""
    answer = timeline.wait(group, ok, since, nominal * 3 + 30)
    took = answer.at - since
    limit = bound(nominal, timeline)
    assert took <= limit, "%s: %s %s after %.1fs, bound %.1fs\n%s" % (
        what, group, "passed" if ok else "failed", took, limit, timeline.lines(since))
    return answer


def never(timeline: Timeline, group: str, since: float, until: float, what: str,
          frozen: bool = False) -> None:
    """`group` answered 200 the whole window (every probe, not only the first and last).
    A probe without a reply counts too, unless a stall outside probed's control covers it
    (Timeline.stall_covering: the machine froze, not probed's verdict); `frozen`: the test
    stopped probed itself in the window, so only a 503 counts."""
    bad = [a for a in timeline.failures(group, since, until)
           if a.ok is False or not (frozen or timeline.stall_covering(a))]
    assert not bad, "%s: %s failed %d times in the window, first: %s\n%s" % (
        what, group, len(bad), bad[0], timeline.lines(since))


def verbose(port: int, group: str) -> str:
    """The ?verbose body of a group (kube-apiserver style, every check's reason)."""
    path = {"live": "/livez", "ready": "/readyz", "started": "/startupz"}[group]
    return request("http://127.0.0.1:%d%s?verbose" % (port, path))[2].decode("utf-8")


def record_row(server: str, event: str, timeline: Timeline, since: float, until: float,
               detection: str, note: str = "") -> None:
    """One measured row of the closing table: what each group said in the window."""
    row = {"server": server, "event": event, "detection": detection, "note": note}
    for group in ("live", "ready", "started"):
        seen = [(a.ok, a.reason) for a in timeline.snapshot(group, since, until)]
        statuses = []
        for ok, reason in seen:
            item = "%s %s" % ({True: 200, False: 503}.get(ok, "ERR"), reason)
            if not statuses or statuses[-1] != item:
                statuses.append(item)
        row[group] = statuses
    path = os.environ.get(TABLE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    print("\nmeasured %s %s: %s" % (server, event, json.dumps(row)))


class Load:
    """Requests sent from threads (a burst, or one long generation); joined on exit."""

    def __init__(self, send: Callable[[], Any], count: int = 1) -> None:
        self.results: List[Any] = []
        self.finished_at: List[float] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._one, args=(send,), daemon=True)
                         for _ in range(count)]

    def _one(self, send: Callable[[], Any]) -> None:
        try:
            result = send()
        except Exception as exc:  # a request that fails is a result too
            result = exc
        with self._lock:
            self.results.append(result)
            self.finished_at.append(time.monotonic())

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not self.alive(), "requests still running after %gs" % timeout

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        for t in self._threads:
            t.join(300)
