"""HTTP/2 connections the probe server hands over after the client preface (gRPC probes).

Only moves bytes: between each socket and its sans-I/O HTTP/2 machine (h2proto), whose events
go to the gRPC health calls (grpchealth). Like server.py it watches raw non-blocking sockets on
the asyncio loop, and one sweep timer, running only while connections are open, applies the
machine's deadlines and the write timeout. Nothing here logs per request.
"""

import asyncio
import socket
import time
from typing import Dict, List, Optional

from .grpchealth import GrpcHealthService, HealthCalls
from .h2frames import NO_ERROR, H2Event
from .h2proto import H2Connection

H2_SWEEP_INTERVAL = 0.25  # how often deadlines are checked, as for HTTP/1.1
H2_RECV_SIZE = 65536
H2_OUTPUT_LIMIT = 64 * 1024  # unsent bytes one connection may hold; beyond, it is not read
H2_LINGER_SECONDS = 2.0  # after GOAWAY, read and drop input this long so it is not an RST


class H2Link:
    """One handed-over connection: socket, machine, calls, unsent output and timers."""

    __slots__ = ("sock", "fd", "h2", "calls", "out", "reading", "writing", "write_deadline",
                 "linger_until", "shed_at", "resuming", "closed")

    def __init__(self, sock: socket.SocketType, h2: H2Connection) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.h2 = h2
        self.calls: Optional[HealthCalls] = None
        self.out = b""
        self.reading = self.writing = False
        self.write_deadline: Optional[float] = None  # output waiting since + write timeout
        self.linger_until: Optional[float] = None  # set once GOAWAY is out and writing shut
        self.shed_at: Optional[float] = None  # at the connection cap: close then, if idle
        self.resuming = False  # a turn to handle frames left over is scheduled
        self.closed = False


class H2Server:
    """Serves gRPC health calls on the connections given to `adopt`."""

    def __init__(self, service: GrpcHealthService, read_timeout: float = 10.0,
                 write_timeout: float = 10.0, idle_timeout: float = 120.0) -> None:
        self.service = service
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        self.links: Dict[int, H2Link] = {}
        self.huffman_cache: Dict[bytes, bytes] = {}  # shared by the connections' decoders
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._sweeper: Optional[asyncio.TimerHandle] = None

    @property
    def open(self) -> int:
        """Connections held (they count against the probe server's --max-connections)."""
        return len(self.links)

    def adopt(self, sock: socket.SocketType, data: bytes) -> None:
        """Take over a connected non-blocking socket whose first bytes (`data`) start with
        the HTTP/2 client preface."""
        loop = self._loop = asyncio.get_running_loop()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames, at once
        except OSError:
            pass
        link = H2Link(sock, H2Connection(time.monotonic(), self.read_timeout, self.idle_timeout,
                                         self.huffman_cache))
        link.calls = HealthCalls(self.service, link.h2, lambda: self._flush(link))
        self.links[link.fd] = link
        if self._sweeper is None:
            self._sweeper = loop.call_later(H2_SWEEP_INTERVAL, self._sweep)
        self._feed(link, data)

    def _feed(self, link: H2Link, data: bytes) -> None:
        self._handle(link, link.h2.receive(data, time.monotonic()))

    def _handle(self, link: H2Link, events: List[H2Event]) -> None:
        calls = link.calls
        assert calls is not None
        for event in events:
            calls.handle(event)
        self._flush(link)

    def _watch(self, link: H2Link, read: Optional[bool] = None,
               write: Optional[bool] = None) -> None:
        loop = self._loop
        assert loop is not None
        if read is not None and read != link.reading:
            link.reading = read
            if read:
                loop.add_reader(link.fd, self._on_readable, link)
            else:
                loop.remove_reader(link.fd)
        if write is not None and write != link.writing:
            link.writing = write
            if write:
                loop.add_writer(link.fd, self._on_writable, link)
            else:
                loop.remove_writer(link.fd)

    def _on_readable(self, link: H2Link) -> None:
        try:
            data = link.sock.recv(H2_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(link)
        elif link.linger_until is None:
            self._feed(link, data)

    def _flush(self, link: H2Link) -> None:
        """Send what the machine queued; then read, wait for the socket, or finish."""
        if link.closed or link.linger_until is not None:
            return
        data = link.h2.data_to_send()
        if data and not link.out:
            try:
                sent = link.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(link)
                return
            link.out = data[sent:]
        elif data:
            link.out += data
        h2 = link.h2
        if link.out:
            if link.write_deadline is None:
                link.write_deadline = time.monotonic() + self.write_timeout
            self._watch(link, write=True)
        else:
            link.write_deadline = None
            self._watch(link, write=False)
            if h2.ended:
                self._finish(link)
                return
        room = len(link.out) <= H2_OUTPUT_LIMIT  # a client that does not read is not read
        self._watch(link, read=room and not h2.more and not h2.ended)
        if room and h2.more and not link.resuming:
            link.resuming = True  # fairness: leftover frames wait behind other connections
            self._loop.call_soon(self._resume, link)  # type: ignore[union-attr]

    def _resume(self, link: H2Link) -> None:
        link.resuming = False
        if not link.closed:
            self._feed(link, b"")

    def _on_writable(self, link: H2Link) -> None:
        try:
            sent = link.sock.send(link.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(link)
            return
        link.out = link.out[sent:]
        if not link.out:
            self._flush(link)

    def _finish(self, link: H2Link) -> None:
        """GOAWAY is out: stop writing, drain the client's input a while, then close."""
        try:
            link.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(link)
            return
        link.linger_until = time.monotonic() + H2_LINGER_SECONDS
        self._watch(link, read=True, write=False)
        assert link.calls is not None
        link.calls.close()

    def _close(self, link: H2Link) -> None:
        if link.closed:
            return
        link.closed = True
        self._watch(link, read=False, write=False)
        link.sock.close()
        self.links.pop(link.fd, None)
        assert link.calls is not None
        link.calls.close()

    def _sweep(self) -> None:
        now = time.monotonic()
        for link in list(self.links.values()):
            if link.linger_until is not None:
                if now >= link.linger_until:
                    self._close(link)
            elif link.write_deadline is not None and now >= link.write_deadline:
                self._close(link)  # the client reads nothing: nothing more can reach it
            elif link.shed_at is not None and now >= link.shed_at and link.h2.idle:
                self._handle(link, link.h2.shutdown(NO_ERROR, "server at its connection limit"))
            elif now >= link.h2.next_deadline():
                self._handle(link, link.h2.expire(now))
        loop = self._loop
        assert loop is not None
        self._sweeper = loop.call_later(H2_SWEEP_INTERVAL, self._sweep) if self.links else None

    def shed_idle(self, deadline: float) -> None:
        """The probe server is at its connection cap: idle connections go at `deadline`."""
        for link in self.links.values():
            if link.h2.idle:
                link.shed_at = deadline if link.shed_at is None else min(link.shed_at, deadline)

    def close(self) -> None:
        """Close every connection (the daemon is stopping)."""
        for link in list(self.links.values()):
            self._close(link)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
