"""Listening sockets on the asyncio loop: accept, read, parse, reply, with bounded everything.

The fast path avoids asyncio transports and protocols altogether: the loop watches raw
non-blocking sockets (`add_reader`), a new connection is read at once (a kubelet's request is
usually already there), answered with one `send`, and closed. Per-connection state is one small
object; deadlines are checked by one sweep timer instead of a timer per connection. Nothing
here logs per request. Gated ports listen only while their group passes.
"""

import asyncio
import errno
import socket
import time
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

from .h2frames import H2_PREFACE
from .h2server import H2Server
from .httpproto import HTTPError, PreparedResponse, build_error_response, http_date, parse_request
from .values import ConfigError

ACCEPTS_PER_WAKEUP = 64  # bounded so one busy listener cannot starve the pollers
RECV_SIZE = 65536
SWEEP_INTERVAL = 0.25  # how often deadlines are checked; timeouts are this coarse
LINGER_SECONDS = 2.0  # after an error reply, read and drop input this long before closing
PRESSURE_TIMEOUT = 1.0  # at the cap, idle and silent connections get this long
PIPELINE_BATCH = 16  # requests answered per wakeup; the rest wait their turn behind others
MAX_INPUT_BUFFER = 256 * 1024  # unparsed input one client may leave with us
# Requests are counted by (path, status); paths outside `counted_paths` share this label so a
# client cannot grow the counter dict (statuses are the few the router produces).
OTHER_PATH_LABEL = "other"

READING, IDLE, WRITING, LINGERING = 0, 1, 2, 3


class Connection:
    """One client connection: its socket, unparsed input, unsent output, and a deadline.

    `reading`/`writing` say whether the loop watches the socket, so every change of interest
    goes through one place; `waiting` holds the future of a deferred reply (a long poll).
    """

    __slots__ = ("sock", "fd", "buf", "out", "phase", "deadline", "close_after", "reading",
                 "writing", "waiting", "linger")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.out = b""
        self.phase = READING
        self.deadline = deadline
        self.close_after = False
        self.reading = False
        self.writing = False
        self.waiting: Optional["asyncio.Future[PreparedResponse]"] = None
        self.linger = False  # an error reply: shut down writing and drain before closing


class ServerStats:
    """Counters the /metrics page reads. Requests are counted by the paths in `counted_paths`
    (the router's own); any other path is OTHER_PATH_LABEL, so clients cannot add series."""

    __slots__ = ("accepted", "refused_at_cap", "open", "requests", "counted_paths")

    def __init__(self, counted_paths: Iterable[str] = ()) -> None:
        self.accepted = 0
        self.refused_at_cap = 0
        self.open = 0
        self.requests: Dict[Tuple[str, int], int] = {}
        self.counted_paths: FrozenSet[str] = frozenset(counted_paths)


def bind_listener(host: str, port: int, flag: str) -> socket.socket:
    """A non-blocking listening socket; an empty host means dual-stack all interfaces."""
    where = "%s %s" % (flag, ("[%s]:%d" if ":" in host else "%s:%d") % (host, port))
    families = [socket.AF_INET6, socket.AF_INET] if not host else [
        socket.AF_INET6 if ":" in host else socket.AF_INET]
    last: Optional[OSError] = None
    for family in families:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and not host:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                break
    assert last is not None
    if last.errno == errno.EADDRINUSE:
        raise ConfigError("%s: port %d is already in use" % (where, port))
    if last.errno == errno.EACCES:
        raise ConfigError("%s: permission denied (ports below 1024 need privileges)" % where)
    raise ConfigError("%s: cannot listen: %s" % (where, last.strerror or last))


class ProbeServer:
    """Serves `respond(request)` on any number of listening sockets.

    `respond` returns a PreparedResponse, or an asyncio.Future of one for a reply that must
    wait (the admin listener's /wait-for-drain); the probe port only ever returns the former.
    """

    def __init__(self, respond: Callable[..., Any], read_timeout: float = 10.0,
                 write_timeout: float = 10.0, idle_timeout: float = 120.0,
                 max_connections: int = 1024, max_body: int = 0,
                 stats: Optional[ServerStats] = None, h2: Optional[H2Server] = None) -> None:
        self.respond = respond
        self.h2 = h2  # takes connections that start with the HTTP/2 preface (gRPC probes)
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_body = max_body
        self.conns: Dict[int, Connection] = {}
        self.listeners: Dict[int, socket.socket] = {}
        self.stats = stats if stats is not None else ServerStats()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self._date_second = -1
        self._date = b""
        self._under_pressure = False  # a connection was refused at the cap since the last sweep

    # --- listeners -----------------------------------------------------------------------------

    def add_listener(self, sock: socket.socket) -> None:
        """Start accepting on `sock` (already bound and listening)."""
        loop = self._loop_or_start()
        self.listeners[sock.fileno()] = sock
        loop.add_reader(sock.fileno(), self._on_accept, sock)

    def remove_listener(self, sock: socket.socket) -> None:
        """Stop accepting on `sock` and close it; open connections are left to finish."""
        fd = sock.fileno()
        if self.listeners.pop(fd, None) is not None and self._loop is not None:
            self._loop.remove_reader(fd)
        sock.close()

    def _loop_or_start(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
        return self._loop

    def close(self) -> None:
        """Close every listener and connection."""
        for sock in list(self.listeners.values()):
            self.remove_listener(sock)
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.h2 is not None:
            self.h2.close()
        if self._sweeper is not None:
            self._sweeper.cancel()

    # --- accept and read -------------------------------------------------------------------------

    def _on_accept(self, lsock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._pause_accepting(lsock, exc)
                return
            if len(self.conns) + (self.h2.open if self.h2 else 0) >= self.max_connections:
                self.stats.refused_at_cap += 1
                sock.close()
                self._under_pressure = True
                continue
            self.stats.accepted += 1
            sock.setblocking(False)
            conn = Connection(sock, time.monotonic() + self.read_timeout)
            self.conns[conn.fd] = conn
            self.stats.open += 1
            self._on_readable(conn)  # a kubelet's request is usually here already
            if (self.conns.get(conn.fd) is conn and not conn.buf and not conn.out
                    and conn.waiting is None and conn.phase == READING):
                self._watch(conn, read=True)  # nothing arrived yet (or a bare TCP probe)

    def _pause_accepting(self, lsock: socket.socket, exc: OSError) -> None:
        # Out of file descriptors: stop watching the listener briefly rather than spin.
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            fd = lsock.fileno()
            loop = self._loop
            assert loop is not None
            loop.remove_reader(fd)
            loop.call_later(0.1, lambda: self.listeners.get(fd) is lsock and loop.add_reader(
                fd, self._on_accept, lsock))

    def _watch(self, conn: Connection, read: Optional[bool] = None,
               write: Optional[bool] = None) -> None:
        """Start or stop watching `conn` for reading and writing (idempotent)."""
        loop = self._loop
        assert loop is not None
        if read is not None and read != conn.reading:
            conn.reading = read
            if read:
                loop.add_reader(conn.fd, self._on_readable, conn)
            else:
                loop.remove_reader(conn.fd)
        if write is not None and write != conn.writing:
            conn.writing = write
            if write:
                loop.add_writer(conn.fd, self._on_writable, conn)
            else:
                loop.remove_writer(conn.fd)

    def _on_readable(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # tcpSocket probes end here: normal; a long poll's caller gave up
            if conn.waiting is not None:
                conn.waiting.cancel()
            self._close(conn)
            return
        if conn.phase == LINGERING:
            return
        if (conn.buf or data)[:1] == b"P" and self.h2 is not None and conn.phase == READING \
                and self._hand_over_h2(conn, data):
            return
        if len(conn.buf) + len(data) > MAX_INPUT_BUFFER:
            self._close(conn)  # parser limits bound one request; this bounds a pipeline
            return
        if conn.phase == IDLE:
            conn.phase, conn.deadline = READING, time.monotonic() + self.read_timeout
        conn.buf = conn.buf + data if conn.buf else data
        if conn.waiting is None and not conn.writing:
            self._serve(conn)

    def _hand_over_h2(self, conn: Connection, data: bytes) -> bool:
        """HTTP/2 with prior knowledge (the kubelet's grpc probe): once the whole client
        preface is here the connection moves to the HTTP/2 server, still counted against the
        cap; while only a part of it is, wait. False: not a preface, serve it as HTTP/1.1."""
        buf = conn.buf + data
        if not H2_PREFACE.startswith(buf[:len(H2_PREFACE)]):
            return False
        if len(buf) < len(H2_PREFACE):
            conn.buf = buf
            self._watch(conn, read=True)
            return True
        self._watch(conn, read=False, write=False)
        del self.conns[conn.fd]
        self.h2.adopt(conn.sock, buf)  # type: ignore[union-attr]
        return True

    def _serve(self, conn: Connection) -> None:
        """Answer up to PIPELINE_BATCH complete requests from the buffer."""
        out: List[bytes] = []
        close = more = False
        for _ in range(PIPELINE_BATCH):
            if not conn.buf:
                break
            try:
                request, used = parse_request(conn.buf, self.max_body) if self.max_body else \
                    parse_request(conn.buf)
            except HTTPError as err:
                self._count(OTHER_PATH_LABEL, err.status)
                head = conn.buf.lstrip(b"\r\n").startswith(b"HEAD ")  # no body for HEAD, even here
                out.append(self._wire(build_error_response(err, head)))
                close, conn.buf, conn.linger = True, b"", True
                break
            if request is None:
                break
            conn.buf = conn.buf[used:]
            reply = self.respond(request)
            if isinstance(reply, asyncio.Future):
                self._defer(conn, reply, out)
                return
            self._count(request.path, reply.status)
            out.append(self._wire(reply))
            if reply.close:
                close = True
                break
        else:
            more = bool(conn.buf)
        if out:
            self._send(conn, b"".join(out) if len(out) > 1 else out[0], close)
        self._after_serve(conn, more)

    def _after_serve(self, conn: Connection, more: bool) -> None:
        if self.conns.get(conn.fd) is not conn or conn.writing or conn.phase == LINGERING:
            return  # closed, or the writer resumes us when the output is gone
        if more:  # fairness: finish this pipeline later, reading nothing more meanwhile
            self._watch(conn, read=False)
            self._loop.call_soon(self._resume, conn)  # type: ignore[union-attr]
        else:
            self._watch(conn, read=True)

    def _resume(self, conn: Connection) -> None:
        if self.conns.get(conn.fd) is conn and not conn.writing and conn.waiting is None:
            self._serve(conn)

    def _count(self, path: str, status: int) -> None:
        key = (path if path in self.stats.counted_paths else OTHER_PATH_LABEL, status)
        requests = self.stats.requests
        requests[key] = requests.get(key, 0) + 1

    def _defer(self, conn: Connection, future: "asyncio.Future[PreparedResponse]",
               earlier: List[bytes]) -> None:
        """A reply that comes later (a long poll such as /wait-for-drain). Replies to earlier
        pipelined requests go first; the socket stays watched so a caller that hangs up
        cancels the wait instead of holding it (and probed's shutdown) open."""
        conn.waiting = future
        conn.deadline = float("inf")  # the future bounds its own wait
        if earlier:
            self._send(conn, b"".join(earlier), False)
        if self.conns.get(conn.fd) is conn and not conn.writing:
            self._watch(conn, read=True)
        future.add_done_callback(lambda done: self._deferred_ready(conn, done))

    def _deferred_ready(self, conn: Connection, future: "asyncio.Future[PreparedResponse]") -> None:
        if self.conns.get(conn.fd) is not conn:
            return  # closed while waiting
        conn.waiting = None
        if future.cancelled() or future.exception() is not None:
            self._close(conn)
            return
        reply = future.result()
        self._send(conn, self._wire(reply), reply.close)
        if self.conns.get(conn.fd) is conn and not conn.writing and conn.phase != LINGERING:
            self._serve_or_listen(conn)

    def _wire(self, reply: PreparedResponse) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date = now, http_date(now)
        return reply.before + self._date + reply.after

    # --- write and close -----------------------------------------------------------------------

    def _send(self, conn: Connection, data: bytes, close: bool) -> None:
        if conn.out:
            conn.out += data
        else:
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            conn.out = data[sent:]
        conn.close_after = conn.close_after or close
        if conn.out:  # backpressure: read no more until this is sent
            conn.phase, conn.deadline = WRITING, time.monotonic() + self.write_timeout
            self._watch(conn, read=False, write=True)
        elif conn.close_after:
            self._finish(conn)
        elif conn.waiting is None:
            self._await_next(conn)

    def _await_next(self, conn: Connection) -> None:
        """A reply is out: the next request is partly here (read deadline) or not (idle)."""
        conn.phase = READING if conn.buf else IDLE
        conn.deadline = time.monotonic() + (self.read_timeout if conn.buf else self.idle_timeout)

    def _serve_or_listen(self, conn: Connection) -> None:
        if conn.buf:
            self._serve(conn)
        else:
            self._watch(conn, read=True)

    def _on_writable(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            return
        self._watch(conn, write=False)
        if conn.close_after:
            self._finish(conn)
        elif conn.waiting is not None:
            conn.deadline = float("inf")  # still waiting for the deferred reply
            self._watch(conn, read=True)
        else:
            self._await_next(conn)
            self._serve_or_listen(conn)

    def _finish(self, conn: Connection) -> None:
        """Close after the last reply; linger when unread input could turn into an RST."""
        if not conn.linger and not conn.buf:
            self._close(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.phase, conn.buf = LINGERING, b""
        conn.deadline = time.monotonic() + LINGER_SECONDS
        self._watch(conn, read=True)

    def _close(self, conn: Connection) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        self.stats.open -= 1
        if self._loop is not None:
            self._watch(conn, read=False, write=False)
        conn.sock.close()

    def _sweep(self) -> None:
        now = time.monotonic()
        if self._under_pressure:  # at the cap: connections holding no request go soon, so
            self._under_pressure = False  # held-open sockets cannot lock probes out for long
            for conn in self.conns.values():
                if conn.waiting is None and not conn.buf and not conn.out:
                    conn.deadline = min(conn.deadline, now + PRESSURE_TIMEOUT)
            if self.h2 is not None:
                self.h2.shed_idle(now + PRESSURE_TIMEOUT)
        expired = [c for c in self.conns.values() if c.deadline < now]
        for conn in expired:
            if conn.phase == READING and conn.buf:
                self._count(OTHER_PATH_LABEL, 408)
                try:  # a request that started but never finished gets told why
                    conn.sock.send(self._wire(build_error_response(
                        HTTPError(408, "request not complete within the read timeout"))))
                except OSError:
                    pass
            self._close(conn)
        loop = self._loop
        assert loop is not None
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
