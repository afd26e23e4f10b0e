"""Processes by PID, read from /proc: a server's process tree, signals, CPU time, and how late
this test process's own sleeps wake up.

The machine the tests run on is small and shared: while vLLM generates, other processes were
seen frozen for up to 15 s. So detection-time assertions never use a tight clock: a
`LatenessMeter` thread sleeps in short steps and records how late each wake-up was, and a
bound is the nominal time plus the worst lateness seen in the same window.
"""

import os
import signal
import threading
import time
from typing import Dict, List, Optional, Tuple

from ray_cluster import proc_stat  # tests/ is on sys.path: one /proc/PID/stat reader

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
METER_STEP = 0.05  # the meter's sleep; a wake-up later than this is a stall of this process
STALL_KEPT = 0.3  # stalls longer than this are kept with their times (they may explain a probe
# that got no reply: the control process itself was not running)


def proc_state(pid: int) -> str:
    """R, S, T (stopped), Z ...; '' when the process is gone."""
    fields = proc_stat(pid)
    return fields[0] if fields else ""


def proc_alive(pid: int) -> bool:
    """Running or stopped, not gone and not a zombie."""
    return proc_state(pid) not in ("", "Z", "X")


def proc_title(pid: int) -> str:
    """argv[0] as the process shows it (vLLM renames its engine `VLLM::EngineCore`)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")[0].decode("utf-8", "replace")
    except OSError:
        return ""


def children_map() -> Dict[int, List[int]]:
    """ppid -> live child PIDs, for every process on the machine."""
    kids: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields and fields[0] not in ("Z", "X"):
                kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def descendants(pid: int) -> List[int]:
    """Every live descendant of `pid` (children first), found through parent links."""
    kids = children_map()
    found: List[int] = []
    todo = list(kids.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(kids.get(child, []))
    return found


def find_descendant(pid: int, title: str) -> Optional[int]:
    """The first descendant of `pid` whose argv[0] is `title`, or None."""
    for child in descendants(pid):
        if proc_title(child) == title:
            return child
    return None


def send(pid: int, signum: int) -> bool:
    """Signal one process; False when it is already gone."""
    try:
        os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False


def kill_tree(pid: int, grace: float = 5.0) -> None:
    """SIGTERM `pid` and its descendants, SIGKILL what is left after `grace` s (bounded)."""
    tree = [pid] + descendants(pid)
    for p in tree:
        send(p, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        send(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(proc_alive(p) for p in tree):
        time.sleep(0.05)
    tree += [p for p in descendants(pid) if p not in tree]
    for p in tree:
        if proc_alive(p):
            send(p, signal.SIGKILL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far (0.0 when gone)."""
    fields = proc_stat(pid)
    if not fields:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


class LatenessMeter:
    """A thread that sleeps METER_STEP at a time and keeps the worst lateness of its wake-ups:
    how long this process itself got no CPU. Use as a context manager."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.stalls: List[Tuple[float, float]] = []  # (from, to) of each stall over STALL_KEPT
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            before = time.monotonic()
            time.sleep(METER_STEP)
            after = time.monotonic()
            late = after - before - METER_STEP
            if late > self.worst:
                self.worst = late
            if late > STALL_KEPT:
                self.stalls.append((before + METER_STEP, after))

    def reset(self) -> None:
        """Start a new window."""
        self.worst = 0.0

    def __enter__(self) -> "LatenessMeter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)
