"""What probed answered over time: a thread polls /livez, /readyz and /startupz (JSON, so the
reason comes along) every TIMELINE_STEP, the way a kubelet would if it probed very often, and
keeps every answer with its monotonic time. Scenario tests then ask questions of the record:
when did ready first fail after the fault, did live ever fail in this window, what was the reason.

A LatenessMeter (procs.py) runs beside it, so detection bounds can allow for the times this
process itself got no CPU (the probes of a frozen process are answered late, not wrong). On this
2-core VM other processes were seen frozen for seconds while vLLM generates, so every round also
reads the evidence of a stall outside this process: probed's own wait for a CPU
(/proc/PID/schedstat) and the kernel's machine-wide "full" I/O and memory stall time
(/proc/pressure). A probe without a reply is excused only when such evidence covers it.
"""

import http.client
import json
import threading
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .procs import LatenessMeter

GROUP_PATHS = {"live": "/livez", "ready": "/readyz", "started": "/startupz"}
TIMELINE_STEP = 0.2
PROBE_TIMEOUT = 2.0  # a reply slower than this is recorded as an error: replies never wait
STALL_EVIDENCE = 1.0  # seconds of stall (probed runnable without a CPU, or the machine stalled
# on I/O or memory) within a probe's window that explain its missing reply: half its timeout
PRESSURE_FILES = ("/proc/pressure/io", "/proc/pressure/memory")


def stall_seconds(pid: Optional[int]) -> float:
    """Seconds probed has waited for a CPU, plus the machine's "full" I/O and memory stall
    time, all cumulative (a growth between two readings is a stall in between)."""
    total = 0.0
    paths = ["/proc/%d/schedstat" % pid] if pid else []
    for path in paths + list(PRESSURE_FILES):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        if path.endswith("schedstat"):
            total += int(text.split()[1]) / 1e9  # run delay, ns
        else:
            for line in text.splitlines():
                if line.startswith("full "):
                    total += int(line.rsplit("total=", 1)[1]) / 1e6  # microseconds
    return total


class Answer(NamedTuple):
    at: float  # time.monotonic() when the reply arrived
    group: str
    ok: Optional[bool]  # None: no reply (connection error, timeout)
    reason: str
    stalled_before: Optional[float] = None  # stall_seconds() just before the request was sent


def probe_group(port: int, group: str, timeout: float = PROBE_TIMEOUT) -> Answer:
    """One JSON probe of `group`; connection errors become an Answer with ok=None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", GROUP_PATHS[group] + "?format=json")
        resp = conn.getresponse()
        doc = json.loads(resp.read().decode("utf-8"))
        return Answer(time.monotonic(), group, resp.status == 200, str(doc.get("reason", "")))
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Answer(time.monotonic(), group, None, "no reply: %r" % exc)
    finally:
        conn.close()


def group_json(port: int, group: str, query: str = "") -> Dict[str, Any]:
    """The whole JSON verdict of `group` (checks, reasons, detail)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", GROUP_PATHS[group] + "?format=json" + query)
        return json.loads(conn.getresponse().read().decode("utf-8"))
    finally:
        conn.close()


def check_row(port: int, group: str, name: str) -> Dict[str, Any]:
    """One check's row of a group's JSON verdict."""
    for row in group_json(port, group)["checks"]:
        if row["name"] == name:
            return row
    raise AssertionError("no check %s in %s" % (name, group))


class Timeline:
    """Polls probed's three groups in a thread until stopped; a context manager."""

    def __init__(self, port: int, pid: Optional[int] = None, step: float = TIMELINE_STEP) -> None:
        self.port, self.pid, self.step = port, pid, step
        self.answers: List[Answer] = []
        self.stall_readings: List[Tuple[float, float]] = []  # (time, stall_seconds(pid))
        self.meter = LatenessMeter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def worst_lateness(self) -> float:
        """The longest stall while the timeline ran (seconds): this process getting no CPU, or
        the evidence of a stall outside it between two readings (see stall_seconds)."""
        with self._lock:
            readings = list(self.stall_readings)
        outside = [b[1] - a[1] for a, b in zip(readings, readings[1:])]
        return max([self.meter.worst] + outside)

    def stall_covering(self, answer: Answer) -> Optional[str]:
        """Why `answer` (a probe without a reply) is no evidence against probed, or None: this
        process stalled within its window, or probed or the machine stalled (STALL_EVIDENCE)."""
        start = answer.at - PROBE_TIMEOUT - 0.05  # the earliest its request was sent
        for a, b in self.meter.stalls:
            if a < answer.at and b > start and b - a >= STALL_EVIDENCE:
                return "this process stalled %.1fs" % (b - a)
        with self._lock:
            after = [r for r in self.stall_readings if r[0] >= answer.at]
        if answer.stalled_before is not None and after and (
                after[0][1] - answer.stalled_before >= STALL_EVIDENCE):
            return "probed or the machine stalled %.1fs" % (after[0][1] - answer.stalled_before)
        return None

    def __enter__(self) -> "Timeline":
        self.meter.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT * 4)
        self.meter.__exit__()

    def _run(self) -> None:
        while not self._stop.is_set():
            for group in GROUP_PATHS:  # a reading before each probe brackets every answer
                reading = (time.monotonic(), stall_seconds(self.pid))
                answer = probe_group(self.port, group)._replace(stalled_before=reading[1])
                with self._lock:
                    self.stall_readings.append(reading)
                    self.answers.append(answer)
            time.sleep(self.step)

    def snapshot(self, group: str, since: float = 0.0, until: float = float("inf")
                 ) -> List[Answer]:
        """Answers of `group` in [since, until]."""
        with self._lock:
            return [a for a in self.answers if a.group == group and since <= a.at <= until]

    def first(self, group: str, ok: bool, since: float = 0.0) -> Optional[Answer]:
        """The first answer of `group` with verdict `ok` at or after `since`."""
        for answer in self.snapshot(group, since):
            if answer.ok is ok:
                return answer
        return None

    def wait(self, group: str, ok: bool, since: float, timeout: float) -> Answer:
        """Block until `group` answers `ok` (after `since`); AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.first(group, ok, since)
            if found is not None:
                return found
            time.sleep(self.step / 2)
        raise AssertionError("%s never %s within %gs after the event:\n%s" % (
            GROUP_PATHS[group], "200" if ok else "503", timeout, self.lines(since)))

    def wait_reason(self, group: str, text: str, since: float, timeout: float) -> Answer:
        """Block until a failing answer of `group` whose reason contains `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for answer in self.snapshot(group, since):
                if answer.ok is False and text in answer.reason:
                    return answer
            time.sleep(self.step / 2)
        raise AssertionError("%s never failed with %r within %gs:\n%s" % (
            GROUP_PATHS[group], text, timeout, self.lines(since)))

    def failures(self, group: str, since: float, until: float = float("inf")
                 ) -> List[Answer]:
        """Answers of `group` in the window that were not 200 (503 or no reply)."""
        return [a for a in self.snapshot(group, since, until) if a.ok is not True]

    def errors(self) -> List[Answer]:
        """Probes that got no reply at all: probed must always answer."""
        with self._lock:
            return [a for a in self.answers if a.ok is None]

    def reasons(self, group: str, since: float, until: float = float("inf")) -> Sequence[str]:
        """Distinct reasons `group` gave in the window, in order."""
        seen: List[str] = []
        for a in self.snapshot(group, since, until):
            if a.reason not in seen:
                seen.append(a.reason)
        return seen

    def lines(self, since: float = 0.0) -> str:
        """The record as text (changes only), for failure messages and the measured tables."""
        out: List[str] = []
        last: Dict[str, Tuple[Optional[bool], str]] = {}
        with self._lock:
            answers = [a for a in self.answers if a.at >= since]
        for a in answers:
            key = (a.ok, a.reason)
            if last.get(a.group) != key:
                last[a.group] = key
                out.append("%+8.2fs %-7s %s %s" % (a.at - since, a.group,
                                                   {True: 200, False: 503}.get(a.ok, "ERR"),
                                                   a.reason))
        return "\n".join(out)
