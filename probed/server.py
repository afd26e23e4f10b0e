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
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from .httpproto import HTTPError, PreparedResponse, build_error_response, http_date, parse_request
from .values import ConfigError

ACCEPTS_PER_WAKEUP = 64  # bounded so one busy listener cannot starve the pollers
RECV_SIZE = 65536
SWEEP_INTERVAL = 0.25  # how often deadlines are checked; timeouts are this coarse
LINGER_SECONDS = 2.0  # after an error reply, read and drop input this long before closing
MAX_PENDING_OUTPUT = 1 << 20  # stop reading from a client that does not read its replies
# Requests are counted by (path, status); paths outside `counted_paths` share this label so a
# client cannot grow the counter dict (statuses are the few the router produces).
OTHER_PATH_LABEL = "other"

READING, IDLE, WRITING, LINGERING, WAITING = 0, 1, 2, 3, 4


class Connection:
    """One client connection: its socket, unparsed input, unsent output, and a deadline."""

    __slots__ = ("sock", "fd", "buf", "out", "phase", "deadline", "close_after")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.out = b""
        self.phase = READING
        self.deadline = deadline
        self.close_after = False


class ServerStats:
    """Counters the /metrics page reads."""

    __slots__ = ("accepted", "refused_at_cap", "requests")

    def __init__(self) -> None:
        self.accepted = 0
        self.refused_at_cap = 0
        self.requests: Dict[Tuple[str, int], int] = {}


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
                 max_connections: int = 1024, max_body: int = 0) -> None:
        self.respond = respond
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_body = max_body
        self.conns: Dict[int, Connection] = {}
        self.listeners: Dict[int, socket.socket] = {}
        self.stats = ServerStats()
        self.counted_paths: FrozenSet[str] = frozenset()  # set by the daemon (selfmetrics)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self._date_second = -1
        self._date = b""

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
            if len(self.conns) >= self.max_connections:
                self.stats.refused_at_cap += 1
                sock.close()
                continue
            self.stats.accepted += 1
            sock.setblocking(False)
            conn = Connection(sock, time.monotonic() + self.read_timeout)
            self.conns[conn.fd] = conn
            self._read(conn, first=True)
            if conn.fd in self.conns and conn.phase in (READING, IDLE):
                self._loop.add_reader(conn.fd, self._read, conn)  # type: ignore[union-attr]

    def _pause_accepting(self, lsock: socket.socket, exc: OSError) -> None:
        # Out of file descriptors: stop watching the listener briefly rather than spin.
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            fd = lsock.fileno()
            loop = self._loop
            assert loop is not None
            loop.remove_reader(fd)
            loop.call_later(0.1, lambda: fd in self.listeners and loop.add_reader(
                fd, self._on_accept, lsock))

    def _read(self, conn: Connection, first: bool = False) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn, registered=not first)  # tcpSocket probes end here: normal
            return
        if conn.phase == LINGERING:
            return
        if conn.phase == IDLE:
            conn.phase, conn.deadline = READING, time.monotonic() + self.read_timeout
        conn.buf = conn.buf + data if conn.buf else data
        self._serve(conn, registered=not first)

    def _serve(self, conn: Connection, registered: bool) -> None:
        out: List[bytes] = []
        close = False
        while conn.buf:
            try:
                request, used = parse_request(conn.buf, self.max_body) if self.max_body else \
                    parse_request(conn.buf)
            except HTTPError as err:
                self._count(OTHER_PATH_LABEL, err.status)
                head = conn.buf.lstrip(b"\r\n").startswith(b"HEAD ")  # no body for HEAD, even here
                out.append(self._wire(build_error_response(err, head)))
                close, conn.buf = True, b""
                conn.phase = LINGERING
                break
            if request is None:
                break
            conn.buf = conn.buf[used:]
            reply = self.respond(request)
            if isinstance(reply, asyncio.Future):
                self._defer(conn, reply, out, registered)
                return
            self._count(request.path, reply.status)
            out.append(self._wire(reply))
            if reply.close:
                close = True
                break
        if out:
            self._send(conn, b"".join(out) if len(out) > 1 else out[0], close, registered)

    def _count(self, path: str, status: int) -> None:
        key = (path if path in self.counted_paths else OTHER_PATH_LABEL, status)
        requests = self.stats.requests
        requests[key] = requests.get(key, 0) + 1

    def _defer(self, conn: Connection, future: "asyncio.Future[PreparedResponse]",
               earlier: List[bytes], registered: bool) -> None:
        """A reply that comes later (a long poll such as /wait-for-drain): read nothing more
        from this client until it is sent; replies to earlier pipelined requests go first."""
        if earlier:
            try:
                conn.sock.sendall(b"".join(earlier))  # tiny, and the socket buffer is empty
            except OSError:
                self._close(conn, registered)
                return
        if registered:
            self._loop.remove_reader(conn.fd)  # type: ignore[union-attr]
        conn.phase, conn.deadline = WAITING, float("inf")  # the future bounds its own wait
        future.add_done_callback(lambda done: self._deferred_ready(conn, done))

    def _deferred_ready(self, conn: Connection, future: "asyncio.Future[PreparedResponse]") -> None:
        if self.conns.get(conn.fd) is not conn:
            return  # closed while waiting (server shutdown)
        if future.cancelled() or future.exception() is not None:
            self._close(conn, registered=False)
            return
        reply = future.result()
        conn.phase = READING
        self._send(conn, self._wire(reply), reply.close, registered=False)
        if self.conns.get(conn.fd) is conn and conn.phase not in (WRITING, LINGERING):
            self._loop.add_reader(conn.fd, self._read, conn)  # type: ignore[union-attr]
            if conn.buf:
                self._serve(conn, registered=True)

    def _wire(self, reply: PreparedResponse) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date = now, http_date(now)
        return reply.before + self._date + reply.after

    # --- write and close -----------------------------------------------------------------------

    def _send(self, conn: Connection, data: bytes, close: bool, registered: bool) -> None:
        if conn.out:
            conn.out += data
        else:
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn, registered)
                return
            conn.out = data[sent:]
        conn.close_after = conn.close_after or close
        if conn.out:
            self._wait_writable(conn, registered)
        elif conn.close_after:
            self._finish(conn, registered)
        elif not conn.buf:
            conn.phase, conn.deadline = IDLE, time.monotonic() + self.idle_timeout

    def _wait_writable(self, conn: Connection, registered: bool) -> None:
        loop = self._loop
        assert loop is not None
        if conn.phase != WRITING:
            conn.phase, conn.deadline = WRITING, time.monotonic() + self.write_timeout
            if registered:
                loop.remove_reader(conn.fd)  # backpressure: read no more until this is sent
            loop.add_writer(conn.fd, self._flush, conn)

    def _flush(self, conn: Connection) -> None:
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
        loop = self._loop
        assert loop is not None
        loop.remove_writer(conn.fd)
        if conn.close_after:
            self._finish(conn, registered=False)
            return
        conn.phase, conn.deadline = IDLE, time.monotonic() + self.idle_timeout
        loop.add_reader(conn.fd, self._read, conn)
        if conn.buf:
            conn.phase = READING
            self._serve(conn, registered=True)

    def _finish(self, conn: Connection, registered: bool) -> None:
        """Close after the last reply; linger when unread input could turn into an RST."""
        if conn.phase != LINGERING and not conn.buf:
            self._close(conn, registered)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn, registered)
            return
        conn.phase, conn.buf = LINGERING, b""
        conn.deadline = time.monotonic() + LINGER_SECONDS
        if not registered:
            self._loop.add_reader(conn.fd, self._read, conn)  # type: ignore[union-attr]

    def _close(self, conn: Connection, registered: bool = True) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        loop = self._loop
        if loop is not None and registered:
            loop.remove_reader(conn.fd)
            if conn.out:
                loop.remove_writer(conn.fd)
        conn.sock.close()

    def _sweep(self) -> None:
        now = time.monotonic()
        expired = [c for c in self.conns.values() if c.deadline < now]
        for conn in expired:
            if conn.phase == READING and conn.buf:
                try:  # a request that started but never finished gets told why
                    conn.sock.send(self._wire(build_error_response(
                        HTTPError(408, "request not complete within the read timeout"))))
                except OSError:
                    pass
            self._close(conn)
        loop = self._loop
        assert loop is not None
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
