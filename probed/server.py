"""Listening sockets on the asyncio loop: accept, read, parse, reply, with bounded everything.

The fast path avoids asyncio transports and protocols altogether: the loop watches raw sockets
(`add_reader`), a new connection is read at once (a kubelet's request is usually already
there), answered with one `send`, and closed, without a Connection object or a selector
registration. Anything else (keep-alive, pipelining, slow or partial input, long polls) is a
small Connection object; deadlines are checked by one sweep timer instead of a timer per
connection. Nothing here logs per request. Gated ports listen only while their group passes.
"""

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .connection import (IDLE, LINGERING, OPENED, OTHER_PATH_LABEL, PRESSURE_TIMEOUT, READING,
                         WRITING, Connection, ServerStats, expired, pick_eviction)
from .fdlimit import fit_connection_cap
from .h2frames import H2_PREFACE
from .httpproto import (DateCache, HTTPError, PreparedResponse, RequestParser,
                        build_error_response, is_head_request)
from .listeners import bind_listener, pause_accepting

if TYPE_CHECKING:  # the name only: the HTTP/2 server is built when a gRPC client first connects
    from .h2server import H2Server


ACCEPTS_PER_WAKEUP = 64  # bounded so one busy listener cannot starve the pollers
RECV_SIZE = 65536
SWEEP_INTERVAL = 0.25  # how often deadlines are checked; timeouts are this coarse
LINGER_SECONDS = 2.0  # after an error reply, read and drop input this long before closing
PIPELINE_BATCH = 16  # requests answered per wakeup; the rest wait their turn behind others
TLS_HANDSHAKE = b"\x16\x03"  # a TLS record of type handshake, version 3.x: a ClientHello
# Accepted sockets stay in blocking mode (CPython's accept4 sets only SOCK_CLOEXEC; switching
# costs an ioctl per connection), so every recv and send here passes MSG_DONTWAIT.
NOWAIT = socket.MSG_DONTWAIT
# With the connection closing right after, MSG_MORE holds the reply until close() adds the FIN
# to the same segment: one packet fewer per probe for both ends.
LAST_REPLY = socket.MSG_DONTWAIT | socket.MSG_MORE


class ProbeServer:
    """Serves `respond(request)` on any number of listening sockets.

    `respond` returns a PreparedResponse, or an asyncio.Future of one for a reply that must
    wait (the admin listener's /wait-for-drain); the probe port only ever returns the former.
    At `max_connections` (lowered at start to what the open-file limit allows) a new connection
    is let in by closing the one that has gone longest without a request answered, so held or
    half-sent connections can never lock a kubelet out.
    """

    def __init__(self, respond: Callable[..., Any], read_timeout: float = 10.0,
                 write_timeout: float = 10.0, idle_timeout: float = 120.0,
                 max_connections: int = 1024, max_body: int = 0,
                 stats: Optional[ServerStats] = None,
                 make_h2: Optional[Callable[[], "H2Server"]] = None) -> None:
        self.respond = respond
        # Takes connections that start with the HTTP/2 preface (gRPC probes). Built at the first
        # one: the HTTP/2 stack is about 0.4 MB that most pods, probed over HTTP/1.1, never use.
        self.make_h2 = make_h2
        self.h2: Optional["H2Server"] = None
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        self.cap = fit_connection_cap(max_connections)
        self.max_connections = self.cap.cap
        self.parser = RequestParser(max_body) if max_body else RequestParser()
        # Oldest first: accepted, or moved to the end when a request is answered (eviction order)
        self.conns: Dict[int, Connection] = {}
        self.listeners: Dict[int, socket.socket] = {}
        self.stats = stats if stats is not None else ServerStats()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self._dates = DateCache()
        self._under_pressure = False  # the cap was reached since the last sweep

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

    # --- accept and the first bytes ------------------------------------------------------------

    def _on_accept(self, lsock: socket.socket) -> None:
        # The C socket type's accept, without the Python wrapper's work per connection.
        accept = lsock._accept  # type: ignore[attr-defined]
        family, conns, stats = lsock.family, self.conns, self.stats
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                fd, _addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                assert self._loop is not None
                pause_accepting(self._loop, lsock, exc, self.listeners, self._on_accept)
                return
            try:
                sock = socket.SocketType(family, socket.SOCK_STREAM, 0, fd)
            except OSError:
                os.close(fd)
                continue
            held = len(conns) + (self.h2.open if self.h2 is not None else 0)
            if held >= self.max_connections and not self._make_room():
                stats.refused_at_cap += 1
                sock.close()
                continue
            stats.accepted += 1
            stats.open += 1
            self._open(sock)

    def _open(self, sock: socket.SocketType) -> None:
        """Read a new connection at once: a kubelet's request is usually here already."""
        try:
            data = sock.recv(RECV_SIZE, NOWAIT)
        except (BlockingIOError, InterruptedError):
            self._watch(self._adopt(sock, OPENED), read=True)
            return
        except OSError:
            data = b""
        if data:
            self._first_bytes(sock, data)
        else:
            self.stats.open -= 1
            sock.close()  # a tcpSocket probe: connect and close, the normal case

    def _first_bytes(self, sock: socket.SocketType, data: bytes) -> None:
        """The one place that looks at what a connection sends first and decides how to serve
        it (a protocol detector, such as HTTP/2's preface, belongs here). The connection has
        no Connection object at this point; the general path makes one when needed."""
        if data[:1] == b"P" and self.make_h2 is not None and H2_PREFACE.startswith(
                data[:len(H2_PREFACE)]):
            self._hand_over_h2(sock, data)
        elif data.startswith(TLS_HANDSHAKE):
            # A TLS client on the plain port. A 400 starting with "HTTP/" lets Go clients (the
            # kubelet) report "server gave HTTP response to HTTPS client"; others fail the
            # handshake at once either way, instead of holding the slot for the read timeout.
            conn = self._adopt(sock, READING)
            conn.linger = True
            self._count(OTHER_PATH_LABEL, 400)
            self._send(conn, self._wire(build_error_response(HTTPError(
                400, "this port speaks plain HTTP, and a TLS handshake arrived"))), True)
        elif not self._answer_at_once(sock, data):
            self._take(self._adopt(sock, READING), data)

    def _hand_over_h2(self, sock: socket.SocketType, data: bytes) -> None:
        """HTTP/2 with prior knowledge (the kubelet's grpc probe): once the whole client
        preface is here the connection moves to the HTTP/2 server, still counted against the
        cap; while only a part of it is, it waits as an OPENED connection holding those bytes."""
        if len(data) < len(H2_PREFACE):
            conn = self._adopt(sock, OPENED)
            conn.buf = data
            self._watch(conn, read=True)
            return
        self.stats.open -= 1  # the HTTP/2 server counts it from here
        sock.setblocking(False)  # the HTTP/2 server reads and writes on readiness
        if self.h2 is None:
            assert self.make_h2 is not None  # _first_bytes hands over only when it is set
            self.h2 = self.make_h2()
        self.h2.adopt(sock, data)

    def _answer_at_once(self, sock: socket.SocketType, data: bytes) -> bool:
        """The kubelet's case start to finish, without a Connection: one whole request that
        closes the connection. False, having done nothing, for anything else."""
        try:
            request, used = self.parser.parse(data)
        except HTTPError:
            return False
        if request is None or used != len(data) or request.keep_alive or request.body_pending:
            return False
        reply = self.respond(request)
        if not isinstance(reply, PreparedResponse):  # a reply that waits: a Connection holds it
            self._defer(self._adopt(sock, READING), reply, [])
            return True
        self._count(request.path, reply.status)
        wire = self._wire(reply)
        try:
            sent = sock.send(wire, LAST_REPLY if reply.close else NOWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = len(wire)  # the client is gone: nothing more to do than close
        if sent == len(wire) and reply.close:
            self.stats.open -= 1
            sock.close()
            return True
        conn = self._adopt(sock, READING)
        self._send(conn, wire[sent:], reply.close)
        self._after_serve(conn, False)
        return True

    def _adopt(self, sock: socket.SocketType, phase: int) -> Connection:
        conn = Connection(sock, time.monotonic() + self.read_timeout, phase)
        self.conns[conn.fd] = conn
        return conn

    def _make_room(self) -> bool:
        """At the cap: close the connection `pick_eviction` names; False when none may go."""
        self._under_pressure = True
        victim = pick_eviction(self.conns.values())
        if victim is None:
            if self.h2 is not None:  # every HTTP/1.1 slot waits on a reply: idle gRPC goes soon
                self.h2.shed_idle(time.monotonic() + PRESSURE_TIMEOUT)
            return False
        self.stats.evicted_at_cap += 1
        self._close(victim)
        return True

    # --- read and serve ------------------------------------------------------------------------

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
            data = conn.sock.recv(RECV_SIZE, NOWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # tcpSocket probes end here: normal; a long poll's caller gave up
            if conn.waiting is not None:
                conn.waiting.cancel()
            self._close(conn)
        elif conn.phase == LINGERING:
            return
        elif conn.phase == OPENED:  # its first bytes: from here as if they came with the accept
            held, conn.buf = conn.buf, b""  # a part of an HTTP/2 preface may wait here
            self._release(conn)
            self._first_bytes(conn.sock, held + data if held else data)
        else:
            self._take(conn, data)

    def _take(self, conn: Connection, data: bytes) -> None:
        """Input for a connection: kept after what is not parsed yet, served when it can be."""
        if not conn.append(data):
            self._close(conn)  # parser limits bound one request; this bounds a pipeline
            return
        if conn.phase == IDLE:
            conn.phase, conn.deadline = READING, time.monotonic() + self.read_timeout
        if conn.waiting is None and not conn.writing:
            self._serve(conn)

    def _serve(self, conn: Connection) -> None:
        """Answer up to PIPELINE_BATCH complete requests from the buffer, parsing each from
        its offset (re-slicing the buffer per request would cost its length every time)."""
        out: List[bytes] = []
        close = more = False
        buf, pos = conn.buf, conn.pos
        for _ in range(PIPELINE_BATCH):
            if pos >= len(buf):
                break
            try:
                request, end = self.parser.parse(buf, pos)
            except HTTPError as err:
                self._count(OTHER_PATH_LABEL, err.status)
                out.append(self._wire(build_error_response(err, is_head_request(buf, pos))))
                close, conn.linger, pos = True, True, len(buf)
                break
            if request is None:
                break
            pos = end
            conn.linger = conn.linger or request.body_pending > 0  # the body is drained, unread
            reply = self.respond(request)
            if not isinstance(reply, PreparedResponse):
                conn.consumed(pos)
                self._defer(conn, reply, out)
                return
            self._count(request.path, reply.status)
            out.append(self._wire(reply))
            if reply.close:
                close = True
                break
        else:
            more = pos < len(buf)
        conn.consumed(pos)
        if out:
            if not close:  # a request answered: this connection goes last in eviction order
                del self.conns[conn.fd]
                self.conns[conn.fd] = conn
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
        self.stats.count(path, status)

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
        return reply.wire(self._dates.at(time.time()))

    # --- write and close -----------------------------------------------------------------------

    def _send(self, conn: Connection, data: bytes, close: bool) -> None:
        if conn.out:
            conn.out += data
        else:
            try:
                sent = conn.sock.send(data, NOWAIT)
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
            conn.await_next(time.monotonic(), self.read_timeout, self.idle_timeout)

    def _serve_or_listen(self, conn: Connection) -> None:
        if conn.buf:
            self._serve(conn)
        else:
            self._watch(conn, read=True)

    def _on_writable(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.out, NOWAIT)
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
            conn.await_next(time.monotonic(), self.read_timeout, self.idle_timeout)
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
        conn.phase, conn.buf, conn.pos = LINGERING, b"", 0
        conn.deadline = time.monotonic() + LINGER_SECONDS
        self._watch(conn, read=True)

    def _release(self, conn: Connection) -> bool:
        """Forget `conn` (the socket stays open); False if it was already gone."""
        if self.conns.pop(conn.fd, None) is None:
            return False
        if conn.reading or conn.writing:
            self._watch(conn, read=False, write=False)
        return True

    def _close(self, conn: Connection) -> None:
        if self._release(conn):
            self.stats.open -= 1
            conn.sock.close()

    def _sweep(self) -> None:
        pressure, self._under_pressure = self._under_pressure, False
        if pressure and self.h2 is not None:
            self.h2.shed_idle(time.monotonic() + PRESSURE_TIMEOUT)
        for conn in expired(list(self.conns.values()), time.monotonic(), pressure):
            if conn.phase == READING and conn.buf:
                self._count(OTHER_PATH_LABEL, 408)
                try:  # a request that started but never finished gets told why
                    conn.sock.send(self._wire(build_error_response(
                        HTTPError(408, "request not complete within the read timeout"))), NOWAIT)
                except OSError:
                    pass
            self._close(conn)
        loop = self._loop
        assert loop is not None
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
