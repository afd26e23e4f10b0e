"""gRPC health probes end to end: real clients (grpcio; grpc-go, the kubelet's own library) on
the probe port that also answers HTTP/1.1 and bare TCP connects, Watch following a verdict as
it flips, and hostile HTTP/2 clients that get GOAWAY/RST_STREAM or a close within the
timeouts while the daemon keeps answering HTTP/1.1 probes."""

import http.client
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import grpc
import pytest
from conftest import REPO
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_h2proto import parse_frames, request_block, settings
from test_single_file import PYTHONS, python_or_skip, single_file  # noqa: F401 (a fixture)

from probed.h2frames import (
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    H2_PREFACE,
    HEADERS,
    NO_ERROR,
    PING,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    build_frame,
)
from probed.h2proto import STREAMS_AT_ONCE, STREAMS_PER_CONNECTION
from probed.hpack import encode_integer

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
CHECK_MESSAGE = b"\0\0\0\0\x0b\x0a\x09readiness"
WAIT = 10.0  # seconds a state change may take to show (checks poll every 200 ms)


def grpc_check(port: int, service: str) -> Any:
    """One kubelet-style probe: a new channel, one Check, 1 s deadline; status or error code."""
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0).status
        except grpc.RpcError as err:
            return err.code()


def http_status(port: int, path: str = "/readyz") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "not within %ss: %s" % (WAIT, what)
        time.sleep(0.05)


@pytest.fixture
def flag(tmp_path: Path) -> Path:
    path = tmp_path / "ready-flag"
    path.touch()
    return path


def flag_daemon(start_daemon: Any, flag: Path, *extra: str) -> Any:
    """probed with one check, "flag", that passes while the file exists."""
    daemon = start_daemon(["--check", "exec name=flag cmd='test -e %s' interval=200ms" % flag,
                           *extra])
    wait_for(lambda: http_status(daemon.port) == 200, "ready")
    return daemon


def test_check_answers_every_service_name_beside_http_and_tcp(start_daemon: Any,
                                                               flag: Path) -> None:
    daemon = flag_daemon(start_daemon, flag)
    names = ["", "readiness", "readyz", "liveness", "livez", "startup", "startupz", "flag"]
    assert {n: grpc_check(daemon.port, n) for n in names} == {n: SERVING for n in names}
    assert grpc_check(daemon.port, "no-such-check") == grpc.StatusCode.NOT_FOUND
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=1):
        pass  # a tcpSocket probe
    flag.unlink()
    wait_for(lambda: http_status(daemon.port) == 503, "/readyz failing")
    got = {n: grpc_check(daemon.port, n) for n in names}
    assert got == dict({n: NOT_SERVING for n in ("", "readiness", "readyz", "flag")},
                       liveness=SERVING, livez=SERVING, startup=SERVING, startupz=SERVING)
    assert http_status(daemon.port, "/livez") == 200
    # every call is counted on /metrics, by method and first answer
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=1.0)
    conn.request("GET", "/metrics")
    page = conn.getresponse().read().decode()
    conn.close()
    for line in ('probed_grpc_requests_total{method="Check",answer="SERVING"} 12',
                 'probed_grpc_requests_total{method="Check",answer="NOT_SERVING"} 4',
                 'probed_grpc_requests_total{method="Check",answer="NOT_FOUND"} 1'):
        assert line in page.splitlines(), page


def test_watch_gets_each_change_as_it_happens(start_daemon: Any, flag: Path) -> None:
    daemon = flag_daemon(start_daemon, flag)
    seen: List[Tuple[float, int]] = []
    with grpc.insecure_channel("127.0.0.1:%d" % daemon.port) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=3 * WAIT)
        seen.append((time.monotonic(), next(stream).status))
        flag.unlink()
        flipped = time.monotonic()
        seen.append((time.monotonic(), next(stream).status))
        flag.touch()
        seen.append((time.monotonic(), next(stream).status))
        stream.cancel()
    assert [s for _, s in seen] == [SERVING, NOT_SERVING, SERVING]
    # the change arrives within a poll or two (200 ms each), before a kubelet's next probe
    assert seen[1][0] - flipped < WAIT
    with grpc.insecure_channel("127.0.0.1:%d" % daemon.port) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="no-such-check"), timeout=WAIT)
        assert next(stream).status == SERVICE_UNKNOWN
        stream.cancel()
    assert http_status(daemon.port) == 200


# --- grpc-go: the library the kubelet probes with -------------------------------------------

@pytest.fixture(scope="module")
def go_probe() -> str:
    path = os.environ.get("PROBED_GRPC_GO_PROBE")
    if path:
        return path
    done = subprocess.run(["bash", str(REPO / "tests" / "peers" / "grpc_go_probe.sh")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
    if done.returncode:
        pytest.skip("no grpc-go client: %s" % done.stderr.decode(errors="replace")[-300:])
    return done.stdout.decode().strip()


def run_go(go_probe: str, port: int, *args: str) -> Tuple[int, str]:
    done = subprocess.run([go_probe, "-addr", "127.0.0.1:%d" % port, *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return done.returncode, done.stdout.decode().strip()


def test_grpc_go_probes_like_the_kubelet(start_daemon: Any, flag: Path, go_probe: str) -> None:
    daemon = flag_daemon(start_daemon, flag)
    for name in ("", "readiness", "liveness", "startup", "flag"):
        assert run_go(go_probe, daemon.port, "-service", name) == (0, "SERVING"), name
    assert run_go(go_probe, daemon.port, "-service", "nope") == (
        1, "rpc error: code = NotFound desc = unknown service")
    code, out = run_go(go_probe, daemon.port, "-service", "readiness", "-n", "50")
    assert code == 0 and len(out.split()) == 50  # fifty probes, fifty connections
    watcher = subprocess.Popen([go_probe, "-addr", "127.0.0.1:%d" % daemon.port, "-service",
                                "flag", "-watch", "3", "-timeout", "%ds" % (3 * WAIT)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        flag.unlink()
        wait_for(lambda: http_status(daemon.port) == 503, "/readyz failing")
        assert run_go(go_probe, daemon.port, "-service", "readiness") == (1, "NOT_SERVING")
        flag.touch()
        out, _ = watcher.communicate(timeout=3 * WAIT)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert out.decode().split() == ["SERVING", "NOT_SERVING", "SERVING"]


# --- hostile clients -----------------------------------------------------------------------------

class RawH2:
    """A raw socket speaking (or abusing) HTTP/2 to the probe port."""

    def __init__(self, port: int, preface: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        if preface:
            self.sock.sendall(H2_PREFACE + settings())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "closed after %d bytes" % len(data)
            data += chunk
        return data

    def frames_until_closed(self, timeout: float) -> Tuple[List[Tuple[int, int, int, bytes]],
                                                           float]:
        """Everything the server sends until it closes; and how long that took."""
        start = time.monotonic()
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError("still open after %ss" % timeout) from None
            except ConnectionResetError:
                break
            if not data:
                break
            self.buf += data
        self.sock.close()
        return parse_frames(self.buf), time.monotonic() - start

    def close(self) -> None:
        self.sock.close()


def goaway_of(frames: List[Tuple[int, int, int, bytes]]) -> Optional[Tuple[int, bytes]]:
    found = [(int.from_bytes(p[4:8], "big"), p[8:]) for k, _, _, p in frames if k == GOAWAY]
    return found[-1] if found else None


@pytest.fixture
def hostile_daemon(start_daemon: Any) -> Iterator[Any]:
    daemon = start_daemon(["--read-timeout", "1s", "--write-timeout", "1s", "--idle-timeout",
                           "2s"])
    wait_for(lambda: http_status(daemon.port) == 200, "ready")
    yield daemon
    # whatever happened, both protocols still answer
    assert http_status(daemon.port) == 200
    assert grpc_check(daemon.port, "readiness") == SERVING
    assert daemon.proc.poll() is None


BOMB = b"\x40\x01x" + encode_integer(4000, 7, 0) + b"y" * 4000 + b"\xbe" * 100


@pytest.mark.parametrize("name,attack,code,reason", [
    ("no SETTINGS first", build_frame(PING, 0, 0, b"12345678"), PROTOCOL_ERROR,
     b"the client preface must end with SETTINGS"),
    ("frame over the max size", (1 << 24 - 1).to_bytes(3, "big") + b"\0\0\0\0\0\1",
     FRAME_SIZE_ERROR, b"frame of 8388608 bytes over the 16384 allowed"),
    ("HPACK bomb", build_frame(HEADERS, END_HEADERS, 1, BOMB), COMPRESSION_ERROR,
     b"header list over 16384 bytes"),
    ("window update overflow", build_frame(WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff"),
     FLOW_CONTROL_ERROR, b"connection window over 2^31-1"),
    ("PING flood", build_frame(PING, 0, 0, b"12345678") * 5000, ENHANCE_YOUR_CALM,
     b"too_many_pings"),
    ("CONTINUATION flood", build_frame(HEADERS, 0, 1, b"\x82") +
     build_frame(CONTINUATION, 0, 1, b"") * 5000, ENHANCE_YOUR_CALM,
     b"header block over 16384 bytes"),
])
def test_protocol_abuse_gets_goaway_and_a_close(hostile_daemon: Any, name: str, attack: bytes,
                                                code: int, reason: bytes) -> None:
    client = RawH2(hostile_daemon.port, preface=False)
    client.send(H2_PREFACE + (settings() if name != "no SETTINGS first" else b""))
    try:
        client.send(attack)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close while a flood is still being written
    frames, _ = client.frames_until_closed(5.0)
    assert frames[0][0] == SETTINGS
    assert goaway_of(frames) == (code, reason), name


def test_a_broken_preface_is_answered_as_http_1(hostile_daemon: Any) -> None:
    client = RawH2(hostile_daemon.port, preface=False)
    client.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    client.sock.settimeout(5)
    assert client.sock.recv(100).startswith(b"HTTP/1.1 505 ")
    client.close()


def test_a_preface_split_into_single_bytes_still_switches(hostile_daemon: Any) -> None:
    client = RawH2(hostile_daemon.port, preface=False)
    for byte in H2_PREFACE + settings():
        client.send(bytes((byte,)))
        time.sleep(0.002)
    client.send(build_frame(HEADERS, END_HEADERS, 1, request_block()) +
                build_frame(DATA, END_STREAM, 1, CHECK_MESSAGE) +
                build_frame(0x07, 0, 0, b"\0\0\0\0\0\0\0\0"))  # GOAWAY: we are done
    frames, _ = client.frames_until_closed(5.0)
    kinds = [k for k, _, _, _ in frames]
    assert kinds[:2] == [SETTINGS, SETTINGS] and HEADERS in kinds and DATA in kinds
    assert frames[kinds.index(DATA)][3] == b"\0\0\0\0\2\x08\x01"  # SERVING


def test_a_header_block_never_continued_times_out(hostile_daemon: Any) -> None:
    client = RawH2(hostile_daemon.port)
    client.send(build_frame(HEADERS, 0, 1, request_block()[:10]))
    frames, took = client.frames_until_closed(5.0)
    assert goaway_of(frames) == (ENHANCE_YOUR_CALM, b"frame not complete within the read timeout")
    assert 0.9 < took < 4.0  # --read-timeout 1s, checked every 250 ms, then 2 s linger at most


def test_a_stream_that_never_ends_is_cancelled_then_the_idle_connection_closed(
        hostile_daemon: Any) -> None:
    client = RawH2(hostile_daemon.port)
    client.send(build_frame(HEADERS, END_HEADERS, 1, request_block()) +
                build_frame(DATA, 0, 1, CHECK_MESSAGE))
    assert http_status(hostile_daemon.port) == 200  # served while the stream hangs
    frames, took = client.frames_until_closed(8.0)
    assert (RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big")) in frames
    assert goaway_of(frames) == (NO_ERROR, b"idle")
    assert 2.5 < took < 7.0  # 1 s read timeout, then 2 s idle, then the linger


def test_too_many_streams_are_refused_and_the_rest_answered(hostile_daemon: Any) -> None:
    client = RawH2(hostile_daemon.port)
    count = STREAMS_AT_ONCE + 4
    client.send(b"".join(build_frame(HEADERS, END_HEADERS, 2 * n + 1, request_block(
        huffman=False)) for n in range(count)))
    client.send(b"".join(build_frame(DATA, END_STREAM, 2 * n + 1, CHECK_MESSAGE)
                         for n in range(count)) + build_frame(GOAWAY, 0, 0, b"\0" * 8))
    frames, _ = client.frames_until_closed(5.0)
    refused = {sid for k, _, sid, p in frames if k == RST_STREAM and
               p == REFUSED_STREAM.to_bytes(4, "big")}
    answered = {sid for k, _, sid, p in frames if k == DATA}
    assert refused == {2 * n + 1 for n in range(STREAMS_AT_ONCE, count)}
    assert answered == {2 * n + 1 for n in range(STREAMS_AT_ONCE)}


def test_a_client_that_never_reads_is_closed_within_the_timeouts(hostile_daemon: Any) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: fills at once
    sock.connect(("127.0.0.1", hostile_daemon.port))
    # a thousand Checks (the most one connection may open), and never a byte read
    sock.sendall(H2_PREFACE + settings() + b"".join(
        build_frame(HEADERS, END_HEADERS, 2 * n + 1, request_block()) +
        build_frame(DATA, END_STREAM, 2 * n + 1, CHECK_MESSAGE)
        for n in range(STREAMS_PER_CONNECTION)))
    start = time.monotonic()
    probes = []
    while time.monotonic() - start < 3.5:  # write timeout 1 s (+ sweep) or 2 s of linger
        probes.append(http_status(hostile_daemon.port))  # others keep their pace
        time.sleep(0.05)
    assert set(probes) == {200}
    sock.settimeout(2.0)
    received = b""
    try:
        while True:  # what the kernel holds for us, then the end the server already made
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError("the server still holds a client that never reads") from None
    finally:
        sock.close()
    assert received[3] == SETTINGS  # it was served as HTTP/2 until then


def test_h2_connections_count_against_the_connection_cap(start_daemon: Any) -> None:
    daemon = start_daemon(["--max-connections", "4"])
    wait_for(lambda: http_status(daemon.port) == 200, "ready")
    time.sleep(0.3)  # the probes' connections are gone
    held = [RawH2(daemon.port) for _ in range(4)]
    for client in held:  # each is an HTTP/2 connection now: its SETTINGS came
        assert parse_frames(client.recv_exactly(21))[0][:3] == (SETTINGS, 0, 0)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=2) as extra:
        extra.settimeout(2)
        assert extra.recv(10) == b""  # closed at once: at the cap
    # idle HTTP/2 connections are shed (GOAWAY) within about a second, so probes get in
    for client in held:
        frames, took = client.frames_until_closed(4.0)
        assert goaway_of(frames) == (NO_ERROR, b"server at its connection limit")
    wait_for(lambda: http_status(daemon.port) == 200, "a probe after the shed")


# --- the single file, on every CPython it supports ------------------------------------------

@pytest.mark.parametrize("version", PYTHONS)
def test_the_single_file_answers_grpc_on_each_python(version: str, start_daemon: Any,
                                                     single_file: Path) -> None:
    daemon = start_daemon([], python=python_or_skip(version), script=str(single_file))
    wait_for(lambda: http_status(daemon.port) == 200, "ready")
    assert grpc_check(daemon.port, "readiness") == SERVING
    assert grpc_check(daemon.port, "nope") == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel("127.0.0.1:%d" % daemon.port) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="liveness"), timeout=WAIT)
        assert next(stream).status == SERVING
        stream.cancel()
