"""Loopback peers for end-to-end tests: a controllable HTTP backend, kubelet-style clients,
and a reader of a running daemon's log.

`Backend` is a tiny HTTP/1.1 server in a thread whose behaviour is switched at run time, so a
test can walk a probed check through every way a real inference server fails:

    normal   answer every request with the configured status and body
    hang     accept, read the request, never answer (held until the peer or the test closes)
    refuse   the listening socket is closed: connects are refused (same port when it reopens)
    reset    accept, read the request, close with SO_LINGER 0 (the peer sees an RST)
    drip     answer one byte per `drip_every` seconds, never finishing within any test deadline

It counts the requests it has seen and the replies it gave per status, so tests can reason
about "how many polls happened" without timing. The probe helpers speak to probed the way the
kubelet does: a new connection per probe, `User-Agent: kube-probe/1.31`, `Accept: */*`,
`Connection: close`. Loopback only; every socket operation has a timeout.
"""

import http.client
import os
import socket
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

MODES = ("normal", "hang", "refuse", "reset", "drip")
KUBELET_HEADERS = {"User-Agent": "kube-probe/1.31", "Accept": "*/*", "Connection": "close"}
BACKEND_READ_LIMIT = 1 << 20  # a request larger than this is not something a test sends
IO_TIMEOUT = 5.0  # every blocking socket call in this module ends within this


class RecordedRequest:
    """What the backend saw: method, target, lower-cased headers, body."""

    __slots__ = ("method", "target", "headers", "body")

    def __init__(self, method: str, target: str, headers: Dict[str, str], body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return "<RecordedRequest %s %s>" % (self.method, self.target)


def _read_request(sock: socket.socket, stop: threading.Event) -> Optional[RecordedRequest]:
    """One request from `sock` (head and Content-Length body), or None if the peer went away."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = _recv_or_none(sock, stop)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > BACKEND_READ_LIMIT:
            return None
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(rest) < length:
        chunk = _recv_or_none(sock, stop)
        if not chunk:
            return None
        rest += chunk
    return RecordedRequest(parts[0], parts[1], headers, rest[:length])


def _recv_or_none(sock: socket.socket, stop: threading.Event) -> Optional[bytes]:
    """recv in short slices so a stopping backend never leaves a thread blocked."""
    while not stop.is_set():
        try:
            return sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return None
    return None


class Backend:
    """A loopback HTTP server in a thread; see the module docstring for the modes."""

    def __init__(self, status: int = 200, body: bytes = b"ok", mode: str = "normal",
                 host: str = "127.0.0.1", content_type: str = "text/plain",
                 drip_every: float = 1.0) -> None:
        self.host = host
        self.status = status
        self.body = body
        self.content_type = content_type
        self.drip_every = drip_every
        self.requests: List[RecordedRequest] = []
        self.replies: Dict[int, int] = {}  # status -> replies fully sent
        self.accepted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._mode = "refuse"
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._threads: List[threading.Thread] = []
        self._held: List[socket.socket] = []
        first = self._bind(0)
        self.port = first.getsockname()[1]
        if mode == "refuse":
            self._listener_close()
        else:
            self._start_listening(first)
        self.set_mode(mode)

    # --- control --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT."""
        return "http://%s:%d" % (self.host, self.port)

    @property
    def mode(self) -> str:
        """The current behaviour."""
        return self._mode

    def set_mode(self, mode: str, status: Optional[int] = None,
                 body: Optional[bytes] = None) -> None:
        """Switch behaviour (and optionally the reply) for every request from now on."""
        assert mode in MODES, mode
        with self._lock:
            if status is not None:
                self.status = status
            if body is not None:
                self.body = body
            self._mode = mode
        if mode == "refuse":
            self._listener_close()
        elif self._listener is None:
            self._start_listening()

    def serve(self, status: int, body: Optional[bytes] = None) -> None:
        """Shorthand: normal mode answering `status` (and `body`)."""
        self.set_mode("normal", status, body)

    def held_count(self) -> int:
        """Connections hanging right now (hang mode), each waiting for a reply that never comes."""
        with self._lock:
            return len(self._held)

    def count(self, status: int) -> int:
        """Replies with `status` sent so far."""
        with self._lock:
            return self.replies.get(status, 0)

    def close(self) -> None:
        """Stop accepting, drop held connections, and join every thread."""
        self._stop.set()
        self._listener_close()
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            _close_quietly(sock)
        for thread in list(self._threads):
            thread.join(IO_TIMEOUT)

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- listening ------------------------------------------------------------------------------

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(64)
        sock.settimeout(0.05)
        self._listener = sock
        return sock

    def _start_listening(self, sock: Optional[socket.socket] = None) -> None:
        deadline = time.monotonic() + IO_TIMEOUT
        while sock is None:  # the port can be briefly unavailable after the old listener closed
            try:
                sock = self._bind(self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        thread = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True)
        self._accept_thread = thread
        self._threads.append(thread)
        thread.start()

    def _listener_close(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            _close_quietly(sock)
        thread, self._accept_thread = self._accept_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(IO_TIMEOUT)

    def _accept_loop(self, lsock: socket.socket) -> None:
        while not self._stop.is_set() and self._listener is lsock:
            try:
                conn, _ = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(0.05)
            with self._lock:
                self.accepted += 1
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    # --- one connection -------------------------------------------------------------------------

    def _handle(self, conn: socket.socket) -> None:
        try:
            req = _read_request(conn, self._stop)
            if req is None:
                return
            with self._lock:
                self.requests.append(req)
                mode, status, body = self._mode, self.status, self.body
            if mode == "normal":
                self._answer(conn, status, body)
            elif mode == "hang":
                self._hold(conn)
            elif mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif mode == "drip":
                self._drip(conn, status)
            else:  # refuse raced with this accept: behave like a closed port would
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            _close_quietly(conn)

    def _answer(self, conn: socket.socket, status: int, body: bytes) -> None:
        head = ("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                "Connection: close\r\n\r\n" % (
                    status, http.client.responses.get(status, "Status"), self.content_type,
                    len(body))).encode("latin-1")
        conn.settimeout(IO_TIMEOUT)
        try:
            conn.sendall(head + body)
        except OSError:
            return
        with self._lock:
            self.replies[status] = self.replies.get(status, 0) + 1

    def _hold(self, conn: socket.socket) -> None:
        with self._lock:
            self._held.append(conn)
        while not self._stop.is_set():  # until the client gives up (EOF) or the test ends
            try:
                if not conn.recv(4096):
                    break
            except socket.timeout:
                continue
            except OSError:
                break
        with self._lock:
            if conn in self._held:
                self._held.remove(conn)

    def _drip(self, conn: socket.socket, status: int) -> None:
        data = ("HTTP/1.1 %d Dripping\r\nContent-Length: 1000000\r\n\r\n" % status).encode()
        for i in range(len(data)):
            if self._stop.wait(self.drip_every if i else 0):
                return
            try:
                conn.send(data[i:i + 1])
            except OSError:
                return


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


# --- probe clients -------------------------------------------------------------------------------

class ProbeReply:
    """Status, lower-cased headers and body of one reply."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return "<ProbeReply %d %r>" % (self.status, self.body[:200])


def kubelet_probe(port: int, path: str, method: str = "GET", host: str = "127.0.0.1",
                  headers: Optional[Dict[str, str]] = None,
                  timeout: float = IO_TIMEOUT) -> ProbeReply:
    """One probe the way the kubelet sends it (http.client, new connection, Connection: close)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in dict(KUBELET_HEADERS, **(headers or {})).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        return ProbeReply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, host: str = "127.0.0.1",
                 timeout: float = IO_TIMEOUT) -> bytes:
    """Send raw bytes on a new connection and return everything until the server closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_eof(sock, timeout)


def read_until_eof(sock: socket.socket, timeout: float = IO_TIMEOUT) -> bytes:
    """Everything the peer sends until it closes; AssertionError if it stays open past timeout."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise AssertionError("connection still open after %ss" % timeout)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError("connection still open after %ss" % timeout) from None
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class ResponseReader:
    """Reads successive HTTP/1.1 responses from one socket (keep-alive and pipelining)."""

    def __init__(self, sock: socket.socket, timeout: float = IO_TIMEOUT) -> None:
        sock.settimeout(timeout)
        self.file = sock.makefile("rb")

    def read(self, head_request: bool = False) -> ProbeReply:
        """The next response; HEAD replies carry no body whatever Content-Length says."""
        status_line = self.file.readline(65536)
        if not status_line:
            raise EOFError("connection closed before a response")
        status = int(status_line.split(b" ", 2)[1])
        headers: Dict[str, str] = {}
        while True:
            line = self.file.readline(65536)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_request else int(headers.get("content-length", "0"))
        body = self.file.read(length) if length else b""
        return ProbeReply(status, headers, body)

    def at_eof(self) -> bool:
        """True when the server has closed the connection (nothing more to read)."""
        try:
            return self.file.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        """Close the reader's file object (the socket is closed by its owner)."""
        self.file.close()


def parse_reply(data: bytes) -> ProbeReply:
    """One complete response from raw bytes (as read_until_eof returns them)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return ProbeReply(status, headers, body)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> None:
    """Poll `predicate` until true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    if predicate():
        return
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def wait_status(port: int, path: str, status: int, timeout: float = 10.0) -> ProbeReply:
    """Probe `path` until it answers `status`; returns that reply."""
    last: List[Optional[ProbeReply]] = [None]

    def check() -> bool:
        reply = last[0] = kubelet_probe(port, path)
        return reply.status == status

    try:
        wait_for(check, timeout, what="%s -> %d" % (path, status))
    except AssertionError:
        raise AssertionError("%s never answered %d within %ss; last: %r" % (
            path, status, timeout, last[0])) from None
    assert last[0] is not None
    return last[0]


def distinct_free_ports(count: int, host: str = "127.0.0.1") -> List[int]:
    """`count` ports nobody listens on, all different (bound together, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            socks.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connect to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def process_group_alive(pgid: int) -> List[Tuple[int, str]]:
    """(pid, state) of every non-zombie process whose process group is `pgid` (from /proc)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as fh:
                stat = fh.read().decode("latin-1")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            alive.append((int(entry), state))
    return alive


class LogTail:
    """Collects a running daemon's stderr lines in a thread, so tests can read the log live.

    Attach right after start; the daemon's `stderr_text()` must not be used afterwards.
    """

    def __init__(self, stream: Any) -> None:
        self._lines: List[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        try:
            for raw in iter(stream.readline, b""):
                with self._lock:
                    self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
        except (OSError, ValueError):
            pass  # the stream was closed under us at teardown

    def lines(self) -> List[str]:
        """Every line so far."""
        with self._lock:
            return list(self._lines)

    def matching(self, *needles: str) -> List[str]:
        """Lines containing every one of `needles`."""
        return [line for line in self.lines() if all(n in line for n in needles)]

    def wait_line(self, *needles: str, timeout: float = 10.0) -> str:
        """The first line containing all `needles`, waiting up to `timeout` seconds for it."""
        wait_for(lambda: bool(self.matching(*needles)), timeout,
                 what="a log line with %r (log: %r)" % (needles, self.lines()[-10:]))
        return self.matching(*needles)[0]

    def join(self, timeout: float = IO_TIMEOUT) -> None:
        """Wait for the end of the stream (after the daemon exited)."""
        self._thread.join(timeout)
