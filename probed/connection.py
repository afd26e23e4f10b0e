"""One client connection's state, the server's counters, and the rules over open connections
that need no socket: which one gives way at the cap, and which ones are past their deadline.

Pure logic over plain objects (no I/O, no clock reads): the server passes the time in.
"""

import asyncio
import socket
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

from .httpproto import PreparedResponse

PRESSURE_TIMEOUT = 1.0  # at the cap, idle and silent connections get this long
MAX_INPUT_BUFFER = 256 * 1024  # unparsed input one client may leave with us
# Requests are counted by (path, status); paths outside `counted_paths` share this label so a
# client cannot grow the counter dict (statuses are the few the router produces).
OTHER_PATH_LABEL = "other"

# OPENED: accepted, not a byte yet (its first bytes go to the server's first-bytes check);
# READING: a request is (partly) here; IDLE: between keep-alive requests; WRITING: output
# waits for the client to read; LINGERING: after the last reply, input is drained and dropped.
OPENED, READING, IDLE, WRITING, LINGERING = 0, 1, 2, 3, 4


class Connection:
    """One client connection: its socket, input not yet parsed, unsent output, and a deadline.

    `buf[pos:]` is the input not parsed yet (`buf` is empty when there is none).
    `reading`/`writing` say whether the loop watches the socket, so every
    change of interest goes through one place; `waiting` holds the future of a deferred reply.
    """

    __slots__ = ("sock", "fd", "buf", "pos", "out", "phase", "deadline", "close_after",
                 "reading", "writing", "waiting", "linger")

    def __init__(self, sock: socket.SocketType, deadline: float, phase: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.pos = 0
        self.out = b""
        self.phase = phase
        self.deadline = deadline
        self.close_after = False
        self.reading = False
        self.writing = False
        self.waiting: Optional["asyncio.Future[PreparedResponse]"] = None
        self.linger = False  # an error reply: shut down writing and drain before closing

    def holds_nothing(self) -> bool:
        """Idle or silent: no input, no output, no reply being waited for."""
        return self.waiting is None and not self.buf and not self.out

    def append(self, data: bytes) -> bool:
        """Keep `data` after the input not parsed yet (one copy per read, never one per
        request); False, keeping nothing, when that would pass MAX_INPUT_BUFFER."""
        unparsed = len(self.buf) - self.pos
        if unparsed + len(data) > MAX_INPUT_BUFFER:
            return False
        self.buf = self.buf[self.pos:] + data if unparsed else data
        self.pos = 0
        return True

    def consumed(self, pos: int) -> None:
        """Input up to `pos` is parsed: `buf` is emptied once nothing is left."""
        if pos >= len(self.buf):
            self.buf, self.pos = b"", 0
        else:
            self.pos = pos

    def await_next(self, now: float, read_timeout: float, idle_timeout: float) -> None:
        """A reply is out: the next request is partly here (read deadline) or not (idle)."""
        self.phase = READING if self.buf else IDLE
        self.deadline = now + (read_timeout if self.buf else idle_timeout)


class ServerStats:
    """Counters the /metrics page reads. Requests are counted by the paths in `counted_paths`
    (the router's own); any other path is OTHER_PATH_LABEL, so clients cannot add series."""

    __slots__ = ("accepted", "refused_at_cap", "evicted_at_cap", "open", "requests",
                 "counted_paths", "grpc_calls")

    def __init__(self, counted_paths: Iterable[str] = ()) -> None:
        self.accepted = 0
        self.refused_at_cap = 0  # at the cap with nothing to evict (every slot a long poll)
        self.evicted_at_cap = 0  # closed at the cap to make room for a new connection
        self.open = 0  # accepted and not closed yet, answered on the fast path or not
        self.requests: Dict[Tuple[str, int], int] = {}
        self.counted_paths: FrozenSet[str] = frozenset(counted_paths)
        self.grpc_calls: Dict[Tuple[str, str], int] = {}  # (method, first answer): calls

    def count(self, path: str, status: int) -> None:
        """One request answered with `status`."""
        key = (path if path in self.counted_paths else OTHER_PATH_LABEL, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def count_grpc(self, method: str, answer: str) -> None:
        """One gRPC health call answered (Check, Watch or other; its status or error code)."""
        key = (method, answer)
        self.grpc_calls[key] = self.grpc_calls.get(key, 0) + 1


def pick_eviction(oldest_first: Iterable[Connection]) -> Optional[Connection]:
    """The connection that gives way at the cap: the one that has gone longest without a
    request answered (idle, silent, half-sent, or not reading its reply). A connection
    waiting on a deferred reply is kept; None when every one is."""
    for conn in oldest_first:
        if conn.waiting is None:
            return conn
    return None


def expired(conns: Iterable[Connection], now: float, pressure: bool) -> List[Connection]:
    """Connections past their deadline at `now`. Under `pressure` (the cap was reached since
    the last look), those holding nothing get at most PRESSURE_TIMEOUT from now first."""
    if pressure:
        for conn in conns:
            if conn.holds_nothing():
                conn.deadline = min(conn.deadline, now + PRESSURE_TIMEOUT)
    return [c for c in conns if c.deadline < now]
