"""Tests for probed/client.py against real peers on loopback.

Scripted peers are plain threaded sockets, so each test controls the exact bytes (and the
timing and the RST) the client sees; http.server and an ssl-wrapped http.server are the
real-world peers.
"""

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, List

import pytest

from probed.client import (
    CLIENT_MAX_HEAD_BYTES,
    CLIENT_USER_AGENT,
    FetchError,
    Response,
    TLSOptions,
    fetch,
    read_bearer_token,
    split_url,
)

REPO = Path(__file__).resolve().parents[1]
SLACK = 2.5  # seconds a deadline test may overrun on a loaded CI box (functional bound only)
SECRET = "TOPSECRET-7f3a"

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]


def get(url: str, **kwargs) -> Response:
    return asyncio.run(fetch(url, **kwargs))


def fetch_error(url: str, **kwargs) -> FetchError:
    with pytest.raises(FetchError) as info:
        get(url, **kwargs)
    return info.value


def read_request(conn: socket.socket) -> bytes:
    """One request: head plus a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += conn.recv(65536)
    return head + b"\r\n\r\n" + rest


class ScriptedPeer:
    """A loopback server that reads each request, then runs `script(conn, stop)` in its thread."""

    def __init__(self, script: Callable[[socket.socket, threading.Event], None],
                 host: str = "127.0.0.1", family: int = socket.AF_INET,
                 read_first: bool = True) -> None:
        self.script = script
        self.read_first = read_first
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(8)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.requests = []  # type: List[bytes]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    if self.read_first:
                        self.requests.append(read_request(conn))
                    self.script(conn, self.stop)
                except OSError:
                    pass

    def url(self, path: str = "/") -> str:
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def serve():
    peers = []  # type: List[ScriptedPeer]

    def start(script, **kwargs) -> ScriptedPeer:
        peer = ScriptedPeer(script, **kwargs)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.close()


def reply(data: bytes, keep_open: bool = False):
    """Send `data`; then close, or hold the connection open until the test ends."""
    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(data)
        if keep_open:
            stop.wait(10)
    return script


def silent(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(10)


def drip(prefix: bytes, byte: bytes = b"x", every: float = 0.2):
    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(prefix)
        while not stop.wait(every):
            conn.sendall(byte)
    return script


def reset_after(data: bytes):
    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(data)
        time.sleep(0.1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # linger 0: RST instead of FIN
    return script


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ok(body: bytes, *headers: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Length: %d" % len(body)] + list(headers)
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# --- split_url -----------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:8000/metrics", ("http", "127.0.0.1", 8000, "/metrics")),
    ("https://example.com", ("https", "example.com", 443, "/")),
    ("HTTP://Example.COM/a?b=1&c=2", ("http", "example.com", 80, "/a?b=1&c=2")),
    ("http://[::1]:8000/x", ("http", "::1", 8000, "/x")),
    ("http://h/a b?q=x y#fragment", ("http", "h", 80, "/a%20b?q=x%20y")),
    ("http://h?x=1", ("http", "h", 80, "/?x=1")),
    ("http://h/%7Euser/", ("http", "h", 80, "/%7Euser/")),
])
def test_split_url(url, expected):
    assert split_url(url) == expected


@pytest.mark.parametrize("url", [
    "ftp://h/", "h:80", "http:///path", "http://h:99999/", "http://h:port/",
    "http://user:%s@h/" % SECRET,
])
def test_split_url_rejects(url):
    with pytest.raises(ValueError) as info:
        split_url(url)
    assert SECRET not in str(info.value)


# --- framing -------------------------------------------------------------------------------

def test_content_length_response_and_request_defaults(serve):
    body = json.dumps({"ok": True}).encode()
    peer = serve(reply(ok(body, "Content-Type: application/json", "X-Dup: a", "x-dup: b"),
                       keep_open=True))  # the body ends by length, not by close
    response = get(peer.url("/v1/models?x=1"), timeout=3)
    assert (response.status, response.reason, response.body) == (200, "OK", body)
    assert response.json() == {"ok": True}
    assert response.headers["x-dup"] == "a, b"
    assert response.headers["content-type"] == "application/json"
    assert response.elapsed > 0
    request = peer.requests[0].decode()
    lines = request.split("\r\n")
    assert lines[0] == "GET /v1/models?x=1 HTTP/1.1"
    assert "Host: 127.0.0.1:%d" % peer.port in lines
    assert "User-Agent: %s" % CLIENT_USER_AGENT in lines
    assert "Accept: */*" in lines
    assert "Connection: close" in lines
    assert "content-length" not in request.lower()


def test_chunked_with_extensions_and_trailers(serve):
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n")
    peer = serve(reply(raw, keep_open=True))
    response = get(peer.url(), timeout=3)
    assert response.body == b"hello world"
    assert "x-checksum" not in response.headers  # trailers are checked, then dropped


def test_chunked_without_trailers(serve):
    peer = serve(reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n0\r\n\r\n", keep_open=True))
    assert get(peer.url(), timeout=3).body == b"abc"


def test_close_delimited_body(serve):
    body = bytes(range(256)) * 800  # 200 KiB: several reads
    peer = serve(reply(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body))
    response = get(peer.url(), timeout=3)
    assert response.body == body


@pytest.mark.parametrize("method, raw", [
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"),
], ids=["head", "204", "304"])
def test_responses_without_a_body(serve, method, raw):
    peer = serve(reply(raw, keep_open=True))  # reading a body here would hit the deadline
    response = get(peer.url(), method=method, timeout=3)
    assert response.body == b""
    assert peer.requests[0].startswith(method.encode() + b" / HTTP/1.1\r\n")


def test_interim_responses_are_skipped(serve):
    raw = (b"HTTP/1.1 100 Continue\r\n\r\n"
           b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n" + ok(b"ok"))
    response = get(serve(reply(raw)).url(), timeout=3)
    assert (response.status, response.body) == (200, b"ok")
    assert "link" not in response.headers


@pytest.mark.parametrize("raw, reason, headers", [
    (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", "", {}),
    (b"HTTP/1.0 200 OK\nContent-Length: 2\n\nok", "OK", {}),
    (b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "OK", {}),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", "OK", {}),
    (b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 2\r\n\r\nok", "OK",
     {"x-fold": "a b"}),
    (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nok",
     "Service Unavailable", {}),
], ids=["no-reason", "bare-lf", "leading-crlf", "same-length-twice", "folded", "503"])
def test_tolerated_response_shapes(serve, raw, reason, headers):
    response = get(serve(reply(raw, keep_open=True)).url(), timeout=3)
    assert (response.reason, response.body) == (reason, b"ok")
    for name, value in headers.items():
        assert response.headers[name] == value


def test_header_block_just_under_the_limit_is_fine(serve):
    pads = ["X-Pad-%04d: %s" % (i, "p" * 100) for i in range(CLIENT_MAX_HEAD_BYTES // 200)]
    pads.append("X-Last: " + "p" * (CLIENT_MAX_HEAD_BYTES - len("\r\n".join(pads)) - 100))
    peer = serve(reply(ok(b"ok", *pads)))
    assert get(peer.url(), timeout=3).body == b"ok"


# --- requests ------------------------------------------------------------------------------

def test_post_body_and_header_overrides(serve):
    peer = serve(reply(ok(b"{}")))
    payload = b'{"prompt": "hi", "max_tokens": 1}'
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + SECRET,
               "Accept": "application/json", "Connection": "keep-alive",
               "Content-Length": "999", "User-Agent": "probed/9.9 check=inference"}
    response = get(peer.url("/v1/completions"), method="post", headers=headers, body=payload,
                   timeout=3)
    assert response.status == 200
    head, _, sent = peer.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/completions HTTP/1.1"
    assert sent == payload
    assert [l for l in lines if l.lower().startswith("content-length")] == [
        "Content-Length: %d" % len(payload)]
    assert [l for l in lines if l.lower().startswith("connection")] == ["Connection: close"]
    assert [l for l in lines if l.lower().startswith("accept")] == ["Accept: application/json"]
    assert "User-Agent: probed/9.9 check=inference" in lines
    assert "Authorization: Bearer " + SECRET in lines


def test_post_without_body_sends_zero_length(serve):
    peer = serve(reply(ok(b"")))
    get(peer.url("/drain"), method="POST", timeout=3)
    assert b"\r\nContent-Length: 0\r\n" in peer.requests[0]


@pytest.mark.parametrize("kwargs", [
    {"headers": {"Authorization": "Bearer " + SECRET + "\r\nX-Evil: 1"}},
    {"headers": {"Bad Name": "x"}},
    {"method": "GET /x"},
    {"timeout": 0},
], ids=["crlf-in-value", "bad-name", "bad-method", "zero-timeout"])
def test_bad_request_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError) as info:
        get("http://127.0.0.1:%d/" % free_port(), **kwargs)
    assert SECRET not in str(info.value)


# --- failures ------------------------------------------------------------------------------

def test_refused():
    error = fetch_error("http://127.0.0.1:%d/" % free_port(), timeout=3)
    assert (error.kind, str(error)) == ("refused", "connection refused")


def test_accepts_and_never_answers_times_out_at_the_deadline(serve):
    peer = serve(silent)
    started = time.monotonic()
    error = fetch_error(peer.url(), timeout=0.5)
    assert time.monotonic() - started < 0.5 + SLACK
    assert error.kind == "timeout"
    assert str(error) == "timed out after 0.5s while waiting for the response headers"


@pytest.mark.parametrize("prefix, phase", [
    (b"HTTP/1.1 200 OK\r\nX-Slow: ", "waiting for the response headers"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", "reading the body"),
], ids=["head", "body"])
def test_slow_drip_times_out_at_the_deadline(serve, prefix, phase):
    peer = serve(drip(prefix))  # one byte per 0.2 s: every per-read timeout is satisfied
    started = time.monotonic()
    error = fetch_error(peer.url(), timeout=1.0)
    assert time.monotonic() - started < 1.0 + SLACK
    assert error.kind == "timeout"
    assert str(error) == "timed out after 1s while " + phase


@pytest.mark.parametrize("sent", [
    b"", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
], ids=["before-response", "mid-body"])
def test_reset(serve, sent):
    error = fetch_error(serve(reset_after(sent)).url(), timeout=3)
    assert error.kind == "reset"
    assert "reset" in str(error)


@pytest.mark.parametrize("sent, words", [
    (b"", "connection closed before the status line"),
    (b"HTTP/1.1 200 OK\r\nX-Half", "connection closed in the middle of the response header"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "connection closed after 3 of 10"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "connection closed"),
], ids=["before-status", "mid-head", "mid-length-body", "mid-chunk"])
def test_closed_early(serve, sent, words):
    error = fetch_error(serve(reply(sent)).url(), timeout=3)
    assert error.kind == "closed"
    assert str(error).startswith(words)


@pytest.mark.parametrize("raw, words", [
    (b"SSH-2.0-OpenSSH_9.6\r\n", "bad status line 'SSH-2.0-OpenSSH_9.6'"),
    (b"HTTP/1.1 abc OK\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 099 Low\r\n\r\n", "status code 99 out of range"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "unexpected 101"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad content-length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
     "bad content-length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported transfer-encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
     "chunk data longer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 10000,
     "chunk size line over"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * (CLIENT_MAX_HEAD_BYTES + 10),
     "response header block over 65536 bytes"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: p\r\n" * 7000, "response header block over"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"X-T: t\r\n" * 9000,
     "trailer block over"),
], ids=["ssh-banner", "status-not-a-number", "status-99", "101", "header-no-colon",
        "negative-length", "conflicting-lengths", "gzip-coding", "chunk-size-not-hex",
        "chunk-overrun", "chunk-line-too-long", "one-huge-header", "too-many-headers",
        "huge-trailers"])
def test_protocol_errors(serve, raw, words):
    peer = serve(reply(raw, keep_open=True))  # held open: the error must come from parsing
    error = fetch_error(peer.url(), timeout=5)
    assert error.kind == "protocol"
    assert str(error).startswith(words)


def _chunked(body: bytes, size: int = 1000) -> bytes:
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("extra", [0, 1])
def test_max_body(serve, framing, extra):
    cap = 5000
    body = b"b" * (cap + extra)
    raw = {
        "length": ok(body),
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(body),
        "close": b"HTTP/1.1 200 OK\r\n\r\n" + body,
    }[framing]
    peer = serve(reply(raw))
    if extra == 0:
        assert get(peer.url(), max_body=cap, timeout=3).body == body
    else:
        error = fetch_error(peer.url(), max_body=cap, timeout=3)
        assert error.kind == "too-large"
        assert str(error).startswith("body over 5000 bytes")


def test_declared_oversize_fails_before_reading(serve):
    peer = serve(reply(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n", keep_open=True))
    error = fetch_error(peer.url(), timeout=5)
    assert error.kind == "too-large"
    assert str(error) == "body over 1048576 bytes (content-length 999999999)"


def test_name_resolution_failure_is_dns():
    error = fetch_error("http://%s.example/" % ("a" * 64), timeout=3)  # label too long: local
    assert error.kind == "dns"


def test_hostname_tries_every_address(serve):
    peer = serve(reply(ok(b"ok")))  # localhost may resolve to ::1 first, where nobody listens
    assert get("http://localhost:%d/" % peer.port, timeout=3).body == b"ok"
    assert b"\r\nHost: localhost:%d\r\n" % peer.port in peer.requests[0]


def test_ipv6_literal(serve):
    try:
        peer = serve(reply(ok(b"six")), host="::1", family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    response = get("http://[::1]:%d/x" % peer.port, timeout=3)
    assert response.body == b"six"
    assert b"\r\nHost: [::1]:%d\r\n" % peer.port in peer.requests[0]


@pytest.mark.parametrize("script", [silent, reset_after(b""), reply(b"garbage\r\n\r\n")],
                         ids=["timeout", "reset", "protocol"])
def test_token_never_in_errors(serve, script):
    peer = serve(script)
    error = fetch_error(peer.url(), headers={"Authorization": "Bearer " + SECRET}, timeout=0.5)
    assert SECRET not in str(error) and SECRET not in repr(error)
    assert error.__cause__ is None


def test_response_repr_is_short():
    response = Response(200, "OK", {"authorization": SECRET}, b"x" * 10, 0.25)
    assert repr(response) == "<Response 200 OK, 10 bytes, 0.250s>"
    with pytest.raises(ValueError):
        Response(200, "OK", {}, b"{not json", 0.1).json()


# --- http.server as a real peer ------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path == "/missing":
            self.send_error(404, "no such thing")
        else:
            self._send(200, json.dumps({"path": self.path}).encode(), self.path != "/close")

    do_HEAD = do_GET

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(200, json.dumps({"echo": body.decode(), "ua": self.headers["User-Agent"],
                                    "connection": self.headers["Connection"]}).encode())


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_against_http_server(http_server):
    base = "http://127.0.0.1:%d" % http_server.server_address[1]
    assert get(base + "/health?x=1", timeout=3).json() == {"path": "/health?x=1"}
    head = get(base + "/health", method="HEAD", timeout=3)
    assert (head.status, head.body) == (200, b"")
    assert int(head.headers["content-length"]) > 0
    missing = get(base + "/missing", timeout=3)
    assert (missing.status, missing.reason) == (404, "no such thing")
    assert get(base + "/close", timeout=3).json() == {"path": "/close"}
    echo = get(base + "/echo", method="POST", body=b"ping", timeout=3).json()
    assert echo == {"echo": "ping", "ua": CLIENT_USER_AGENT, "connection": "close"}


# --- https ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl CLI not found")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if result.returncode != 0:
        pytest.skip("openssl could not make a certificate: %s" % result.stderr[-200:])
    return cert, key


@pytest.fixture
def https_server(certificate):
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_https_insecure(https_server):
    url = "https://127.0.0.1:%d/x" % https_server
    assert get(url, tls=TLSOptions(insecure=True), timeout=3).json() == {"path": "/x"}
    close = get(url.replace("/x", "/close"), tls=TLSOptions(insecure=True), timeout=3)
    assert close.json() == {"path": "/close"}  # close-delimited: EOF without close_notify


def test_https_ca_file(https_server, certificate):
    tls = TLSOptions(ca_file=str(certificate[0]))
    response = get("https://localhost:%d/v" % https_server, tls=tls, timeout=3)
    assert response.json() == {"path": "/v"}
    echo = get("https://localhost:%d/echo" % https_server, method="POST", body=b"x" * 100000,
               tls=tls, timeout=3)
    assert echo.json()["echo"] == "x" * 100000


@pytest.mark.parametrize("host, tls", [("localhost", None), ("localhost", TLSOptions())])
def test_https_verifies_by_default(https_server, host, tls):
    error = fetch_error("https://%s:%d/" % (host, https_server), tls=tls, timeout=3)
    assert error.kind == "tls"
    assert "certificate" in str(error)


def test_https_checks_the_hostname(https_server, certificate):
    tls = TLSOptions(ca_file=str(certificate[0]))  # the cert names localhost, not 127.0.0.1
    error = fetch_error("https://127.0.0.1:%d/" % https_server, tls=tls, timeout=3)
    assert error.kind == "tls"
    assert "mismatch" in str(error)


def test_https_missing_ca_file(tmp_path):
    missing = str(tmp_path / "nope.pem")
    error = fetch_error("https://127.0.0.1:%d/" % free_port(), tls=TLSOptions(ca_file=missing))
    assert error.kind == "tls"
    assert str(error).startswith("cannot load CA file %r" % missing)


def test_https_against_plain_http_peer(serve):
    peer = serve(reply(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
                 read_first=False)
    error = fetch_error("https://127.0.0.1:%d/" % peer.port, tls=TLSOptions(insecure=True),
                        timeout=3)
    assert error.kind == "tls"


# --- process-level properties (fresh interpreters) -----------------------------------------

def _run_python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "always::ResourceWarning", "-c",
         textwrap.dedent(script), str(REPO)] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)


SSL_IMPORT_SCRIPT = """
    import asyncio, socket, sys
    sys.path.insert(0, sys.argv[1])
    # asyncio itself imports ssl on 3.8-3.13, so "ssl in sys.modules" says nothing about this
    # module. Instead, forget ssl and record every later attempt to import it.
    asked = []
    class Recorder:
        def find_spec(self, name, path=None, target=None):
            if name == "ssl":
                asked.append(name)
            return None
    sys.modules.pop("ssl", None)
    sys.meta_path.insert(0, Recorder())
    from probed.client import FetchError, fetch
    assert asked == [], "import probed.client imported ssl"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for scheme in ("http", "https"):
        try:
            asyncio.run(fetch("%s://127.0.0.1:%d/" % (scheme, port), timeout=3))
        except FetchError as exc:
            assert exc.kind == "refused", exc
        if scheme == "http":
            assert asked == [], "an http fetch imported ssl"
    assert asked == ["ssl"], asked  # the https fetch did: the recorder works
    print("ok")
"""


def test_import_does_not_import_ssl():
    result = _run_python(SSL_IMPORT_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_works_without_an_ssl_module():
    script = """
        import asyncio, sys
        sys.path.insert(0, sys.argv[1])
        sys.modules["ssl"] = None  # a Python built without ssl
        from probed.client import FetchError, fetch
        try:
            asyncio.run(fetch("https://127.0.0.1:1/"))
        except FetchError as exc:
            print(exc.kind, exc)
    """
    result = _run_python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tls https needs the ssl module; this Python has none"


NO_LEAK_SCRIPT = """
    import asyncio, gc, socket, struct, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from probed.client import FetchError, TLSOptions, fetch

    def serve(script):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        def loop():
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=script, args=(conn,), daemon=True).start()
        threading.Thread(target=loop, daemon=True).start()
        return listener, "127.0.0.1:%d" % listener.getsockname()[1]

    def silent(conn):
        conn.recv(65536)
        time.sleep(5)
        conn.close()

    def reset(conn):
        conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def answer(conn):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2000\\r\\n\\r\\n" + b"x" * 2000)
        conn.close()

    async def main():
        kinds = []
        servers = [serve(silent), serve(reset), serve(answer)]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            refused = "127.0.0.1:%d" % s.getsockname()[1]
        (_, quiet), (_, rst), (_, good) = servers
        calls = [("http://" + quiet, {"timeout": 0.3}), ("https://" + quiet, {"timeout": 0.3}),
                 ("http://" + rst, {}), ("http://" + refused, {}),
                 ("http://" + good, {"max_body": 100}), ("https://" + good, {}),
                 ("http://" + good, {})]
        for url, kwargs in calls:
            kwargs.setdefault("timeout", 3)
            try:
                await fetch(url, tls=TLSOptions(insecure=True), **kwargs)
                kinds.append("ok")
            except FetchError as exc:
                kinds.append(exc.kind)
        task = asyncio.ensure_future(fetch("http://" + quiet, timeout=5))
        await asyncio.sleep(0.2)
        task.cancel()  # the caller gives up mid-call
        try:
            await task
        except asyncio.CancelledError:
            kinds.append("cancelled")
        for listener, _ in servers:
            listener.close()
        return kinds

    print(" ".join(asyncio.run(main())))
    gc.collect()
"""


def test_no_leaked_sockets_tasks_or_warnings_on_any_path():
    result = _run_python(NO_LEAK_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "timeout", "timeout", "reset", "refused", "too-large", "tls", "ok", "cancelled"]
    for bad in ("ResourceWarning", "unclosed", "was destroyed", "Exception ignored",
                "never awaited", "Traceback"):
        assert bad not in result.stderr, result.stderr


# --- read_bearer_token ---------------------------------------------------------------------

def test_token_file_is_stripped_and_reread(tmp_path):
    path = tmp_path / "token"
    path.write_text("  first-token\n")
    assert read_bearer_token(str(path)) == "first-token"
    path.write_text("second-token\n")
    assert read_bearer_token(str(path)) == "second-token"


def test_token_file_follows_a_kubelet_secret_rotation(tmp_path):
    # kubelet mounts a Secret as token -> ..data/token, ..data -> ..<timestamp>/, and rotates by
    # swapping the ..data symlink atomically.
    for stamp, value in (("..v1", "old"), ("..v2", "new")):
        (tmp_path / stamp).mkdir()
        (tmp_path / stamp / "token").write_text(value)
    os.symlink("..v1", str(tmp_path / "..data"))
    os.symlink("..data/token", str(tmp_path / "token"))
    assert read_bearer_token(str(tmp_path / "token")) == "old"
    os.symlink("..v2", str(tmp_path / "..data_tmp"))
    os.replace(str(tmp_path / "..data_tmp"), str(tmp_path / "..data"))
    assert read_bearer_token(str(tmp_path / "token")) == "new"


def test_token_from_env(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.setenv("PROBED_A", "  ")
    monkeypatch.setenv("PROBED_B", "from-b")
    monkeypatch.setenv("PROBED_C", "from-c")
    names = ("PROBED_UNSET_NAME", "PROBED_A", "PROBED_B", "PROBED_C")
    assert read_bearer_token(None, names) == "from-b"
    assert read_bearer_token(str(empty), names) == "from-b"
    assert read_bearer_token(None, ("PROBED_UNSET_NAME",)) is None
    assert read_bearer_token(None) is None
    (tmp_path / "file").write_text("from-file")
    assert read_bearer_token(str(tmp_path / "file"), names) == "from-file"


def test_token_file_problems_are_reported(tmp_path):
    with pytest.raises(OSError) as missing:
        read_bearer_token(str(tmp_path / "absent"), ("PATH",))
    assert "absent" in str(missing.value)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(ValueError) as info:
        read_bearer_token(str(binary))
    assert "not UTF-8" in str(info.value) and SECRET not in str(info.value)
    big = tmp_path / "big"
    big.write_bytes(b"t" * (1 << 20))
    with pytest.raises(OSError, match="over 65536 bytes"):  # a wrong path, not a token
        read_bearer_token(str(big))
