"""Attacks on probed's listeners (issue 17): floods of held, half-sent and dripping
connections, a low open-file limit, long pipelines, `Expect: 100-continue` and TLS on the plain
port. Each must leave kubelet-style probes (a new connection, `GET /readyz`, kube-probe
User-Agent, `Connection: close`, answered within the kubelet's 1 s timeout) answered.

Bounded: loopback only, at most a few hundred sockets, a few seconds per attack.
"""

import asyncio
import json
import resource
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest
from backends import Backend, LogTail, parse_reply, read_until_eof
from conftest import REPO, free_port, wait_listening

import probed.httpproto as httpproto
from probed.httpproto import Request, build_response, connection_mode
from probed.server import ProbeServer, bind_listener

KUBELET_TIMEOUT = 1.0  # the kubelet's default timeoutSeconds
ANSWERED_SHARE = 0.95  # of kubelet-style probes answered within KUBELET_TIMEOUT under attack
KUBELET_REQUEST = (b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.31\r\n"
                   b"Accept: */*\r\nConnection: close\r\n\r\n")
PARTIAL_HEAD = b"GET /readyz HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n"


def timed_probe(port: int, request: bytes = KUBELET_REQUEST) -> Optional[int]:
    """The status of one kubelet-style probe, or None unless it is answered in time."""
    deadline = time.monotonic() + KUBELET_TIMEOUT
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=KUBELET_TIMEOUT) as sock:
            sock.sendall(request)
            data = b""
            while time.monotonic() < deadline:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    if time.monotonic() > deadline or not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data[9:12])


def probe_series(port: int, count: int = 60, gap: float = 0.03,
                 request: bytes = KUBELET_REQUEST) -> List[Optional[int]]:
    """`count` probes, one after another, `gap` apart."""
    out = []
    for _ in range(count):
        out.append(timed_probe(port, request))
        time.sleep(gap)
    return out


class Flood:
    """One thread holding `count` connections to a port the way an attacker would, and
    reopening each one the server closes, as fast as it can, until stopped.

    silent:    connect, send nothing
    partial:   send a request head without its blank line, then nothing
    slowloris: send a never-ending head one byte per `drip` seconds
    idle:      send a whole keep-alive request, then hold the connection idle
    """

    def __init__(self, port: int, mode: str, count: int, drip: float = 0.1) -> None:
        self.port, self.mode, self.count, self.drip = port, mode, count, drip
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Flood":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _open(self, sel: selectors.BaseSelector) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
            first = {"silent": b"", "partial": PARTIAL_HEAD, "slowloris": b"G",
                     "idle": b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"}[self.mode]
            if first:
                sock.sendall(first)
        except OSError:
            time.sleep(0.01)  # refused or reset: try again on the next turn
            return
        sock.setblocking(False)
        self.opened += 1
        sel.register(sock, selectors.EVENT_READ, data=[1])  # data: bytes of the drip sent

    def _run(self) -> None:
        drip = (PARTIAL_HEAD + b"X-Pad: " + b"p" * 4000)[1:]
        with selectors.DefaultSelector() as sel:
            next_drip = time.monotonic() + self.drip
            while not self._stop.is_set():
                while len(sel.get_map()) < self.count and not self._stop.is_set():
                    self._open(sel)
                for key, _ in sel.select(timeout=0.02):
                    try:
                        gone = not key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    except OSError:
                        gone = True
                    if gone:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]
                if self.mode == "slowloris" and time.monotonic() >= next_drip:
                    next_drip = time.monotonic() + self.drip
                    for key in list(sel.get_map().values()):
                        sent = key.data[0]
                        try:
                            key.fileobj.send(drip[sent - 1:sent])  # type: ignore[union-attr]
                            key.data[0] = sent + 1 if sent < len(drip) else 1
                        except OSError:
                            pass
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]


def assert_mostly_answered(statuses: List[Optional[int]], want: int = 200) -> None:
    answered = sum(1 for s in statuses if s == want)
    assert answered >= ANSWERED_SHARE * len(statuses), (
        "%d of %d probes answered %d within %ss: %s" % (
            answered, len(statuses), want, KUBELET_TIMEOUT, statuses))


# --- 17.9: connections past --max-connections ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("modes", [["silent"], ["partial"], ["slowloris"], ["idle"],
                                   ["silent", "partial", "slowloris", "idle"]])
def test_kubelet_probes_get_through_a_flood_of_held_connections(start_daemon: Any,
                                                                modes: List[str]) -> None:
    cap = 64
    daemon = start_daemon(["--max-connections", str(cap)])
    floods = [Flood(daemon.port, mode, (cap + 40) // len(modes)) for mode in modes]
    for flood in floods:
        flood.__enter__()
    try:
        time.sleep(0.5)  # the cap is reached and the attackers keep reopening
        statuses = probe_series(daemon.port)
        reopened = sum(f.opened for f in floods)
    finally:
        for flood in floods:
            flood.__exit__()
    assert reopened > cap + 40, "the attack did not reach the cap"
    assert_mostly_answered(statuses)


# --- 17.12: the admin listener's 64 slots -------------------------------------------------------

def push(port: int, name: str, token: str) -> Optional[int]:
    """One worker heartbeat push, answered within the kubelet's timeout or None."""
    return timed_probe(port, b"POST /heartbeat/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                       b"%s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % (
                           name.encode(), token.encode()))


@pytest.mark.slow
def test_unauthenticated_slow_connections_cannot_starve_admin_heartbeats(
        start_daemon: Any, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-17\n")
    admin = free_port()
    daemon = start_daemon(["--admin-addr", "127.0.0.1:%d" % admin, "--admin-token-file",
                           str(token), "--check", "heartbeat name=workers expect=1 window=1s "
                           "interval=100ms probes=live"])
    wait_listening("127.0.0.1", admin)
    assert push(admin, "w1", "tok-17") == 200
    with Flood(admin, "slowloris", 45), Flood(admin, "partial", 45) as flood:
        time.sleep(0.5)  # 90 slow connections against 64 slots, reopened as they are closed
        pushes, live = [], []
        for _ in range(40):  # a worker beating every 50 ms, the kubelet's liveness probe
            pushes.append(push(admin, "w1", "tok-17"))
            live.append(timed_probe(daemon.port, KUBELET_REQUEST.replace(b"/readyz", b"/livez")))
            time.sleep(0.05)
        assert flood.opened > 45
    assert_mostly_answered(pushes)
    assert 503 not in live, live  # the beats arrived: liveness never failed
    assert_mostly_answered(live)


# --- 17.10: an open-file limit below --max-connections ------------------------------------------

def run_limited(nofile: int, code: str) -> str:
    """`code` run by a Python whose RLIMIT_NOFILE is (nofile, nofile); its stdout."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    done = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), preexec_fn=limit,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cap_is_fitted_to_the_open_file_limit() -> None:
    code = ("import json, resource; from probed.fdlimit import fit_connection_cap; "
            "print(json.dumps([fit_connection_cap(1024), resource.getrlimit("
            "resource.RLIMIT_NOFILE)[0]]))")
    (requested, cap, soft, hard, reserve), now = json.loads(run_limited(512, code))
    assert (requested, cap, soft, hard, reserve, now) == (1024, 384, 512, 512, 128, 512)
    (_, cap, _, _, reserve), _ = json.loads(run_limited(100, code))
    assert (cap, reserve) == (50, 50)  # a tiny limit keeps half for the pollers
    # With room under the hard limit, the soft one is raised instead and the cap kept.
    raised = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True,
                            text=True, timeout=30, preexec_fn=lambda: resource.setrlimit(
                                resource.RLIMIT_NOFILE, (256, 4096)))
    (_, cap, soft, _, _), now = json.loads(raised.stdout)
    assert (cap, soft, now) == (1024, 1152, 1152)


@pytest.mark.slow
def test_a_flood_under_a_low_open_file_limit_leaves_the_checks_their_descriptors() -> None:
    nofile = 256
    port = free_port()
    with Backend() as backend:
        proc = subprocess.Popen(
            [sys.executable, "-m", "probed", "--addr", "127.0.0.1:%d" % port, "--check",
             "http name=backend url=%s/health interval=100ms timeout=1s" % backend.url],
            cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        try:
            log = LogTail(proc.stderr)
            lowered = log.wait_line("lowered")
            assert "max_connections=128" in lowered and "open_files=%d" % nofile in lowered
            log.wait_line("group changed", "group=ready", "to=pass")
            polls = backend.count(200)
            with Flood(port, "silent", 2 * nofile):
                time.sleep(0.5)
                statuses = probe_series(port, 40)
            assert backend.count(200) > polls + 10  # the checks kept polling meanwhile
            assert 503 not in statuses, statuses  # and kept passing
            assert_mostly_answered(statuses)
            assert timed_probe(port) == 200
        finally:
            proc.kill()
            proc.wait(10)
            assert proc.stderr is not None
            proc.stderr.close()
    assert "Too many open files" not in "\n".join(log.lines())


# --- 17.8: pipelined input is parsed from an offset ---------------------------------------------

class InProcessServer:
    """A ProbeServer on a loopback port, its loop in a thread, answering 200 to anything."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: Optional[ProbeServer] = None
        ready = threading.Event()
        self.port = 0

        def respond(req: Request) -> Any:
            return build_response(200, b"ok\n", mode=connection_mode(req))

        async def start() -> None:
            self.server = ProbeServer(respond)
            sock = bind_listener("127.0.0.1", 0, "--addr")
            self.port = sock.getsockname()[1]
            self.server.add_listener(sock)
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        ready.wait(5)

    def close(self) -> None:
        assert self.server is not None
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def in_process() -> Iterator[InProcessServer]:
    server = InProcessServer()
    yield server
    server.close()


def test_a_long_pipeline_is_parsed_from_offsets_not_copies(in_process: InProcessServer,
                                                            monkeypatch: Any) -> None:
    seen: List[Tuple[int, int]] = []
    real = httpproto.parse_request

    def recording(buf: bytes, *args: Any, **kwargs: Any) -> Any:
        seen.append((id(buf), len(buf)))  # which buffer the parser was handed
        return real(buf, *args, **kwargs)

    import probed.server
    monkeypatch.setattr(httpproto, "parse_request", recording)
    monkeypatch.setattr(probed.server, "parse_request", recording, raising=False)  # old name
    # Distinct heads, so no request is answered from the parser's memory of recent heads.
    pipeline = b"".join(b"GET /livez HTTP/1.1\r\nHost: h%d\r\n\r\n" % i for i in range(8000))
    with socket.create_connection(("127.0.0.1", in_process.port), timeout=10) as sock:
        sock.sendall(pipeline)
        sock.shutdown(socket.SHUT_WR)
        replies = read_until_eof(sock, timeout=20)
    assert replies.count(b"HTTP/1.1 200 OK") == 8000
    # ~260 KB arrive in a handful of reads: the parser sees a handful of buffers, each at
    # rising offsets, where re-slicing after every request made 8000 copies.
    assert 8000 <= len(seen) < 8100
    assert len(set(seen)) < 100


# --- 17.20: Expect: 100-continue and TLS on the plain port --------------------------------------

def test_a_post_expecting_100_continue_gets_its_405_without_sending_the_body(
        start_daemon: Any) -> None:
    daemon = start_daemon(["--read-timeout", "5s"])
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        started = time.monotonic()
        reply = parse_reply(read_until_eof(sock, timeout=KUBELET_TIMEOUT))
        assert time.monotonic() - started < KUBELET_TIMEOUT
    assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD"
    assert reply.headers["connection"] == "close"
    # A GET that asks the same is answered from its head too, and the body is never read.
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        reply = parse_reply(read_until_eof(sock, timeout=KUBELET_TIMEOUT))
    assert reply.status == 200 and reply.headers["connection"] == "close"
    assert timed_probe(daemon.port) == 200


def client_hello() -> bytes:
    """The first bytes a real TLS client (Python's ssl, OpenSSL) sends."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="probed.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_tls_handshake_on_the_plain_port_is_refused_at_once(start_daemon: Any) -> None:
    daemon = start_daemon([])
    hello = client_hello()
    assert hello[:2] == b"\x16\x03"
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(hello)
        reply = parse_reply(read_until_eof(sock, timeout=KUBELET_TIMEOUT))
    assert reply.status == 400 and b"TLS" in reply.body
    # A real TLS client fails its handshake at once instead of waiting out the read timeout.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            ssl.create_default_context().wrap_socket(raw, server_hostname="probed.test")
    assert time.monotonic() - started < KUBELET_TIMEOUT
    assert timed_probe(daemon.port) == 200
