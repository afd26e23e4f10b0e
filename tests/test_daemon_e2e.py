"""probed as a subprocess, probed the way the kubelet probes it, with a controllable backend.

Covers the listener contract of DESIGN.md section 3 over real sockets (http.client, curl, raw
bytes): endpoints, aliases, queries, errors and limits; the lifecycle (started latch, live
before start, --startup-timeout, hysteresis, staleness, SIGTERM drain, gated TCP ports);
connection handling (keep-alive, pipelining, cap, read and idle timeouts); configuration from
flags, PROBED_* variables and --config, with errors that exit 2; and logs that record each
transition once and never a probe.
"""

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from backends import (
    Backend,
    LogTail,
    ResponseReader,
    distinct_free_ports,
    kubelet_probe,
    parse_reply,
    port_open,
    raw_exchange,
    read_until_eof,
    wait_for,
    wait_status,
)
from conftest import REPO, free_port, wait_listening

CURL = "/usr/bin/curl"
FAST = "interval=200ms timeout=500ms"
KUBELET_RAW = (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.31\r\n"
               b"Accept: */*\r\nConnection: close\r\n\r\n")


def http_check(backend: Backend, name: str = "backend", probes: str = "live,ready,started",
               extra: str = "") -> str:
    """A fast http check text for --check."""
    return "http url=%s/health name=%s probes=%s %s %s" % (
        backend.url, name, probes, FAST, extra)


def run_probed(args: List[str], env: Optional[Dict[str, str]] = None,
               timeout: float = 20.0) -> "subprocess.CompletedProcess[str]":
    """Run `python -m probed ARGS` to completion (for commands that exit by themselves)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PROBED_")}
    full["PYTHONPATH"] = str(REPO)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "probed"] + args, cwd=str(REPO), env=full,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)


def group_json(port: int, path: str) -> Dict[str, Any]:
    """A group's ?format=json reply."""
    return json.loads(kubelet_probe(port, path + ("&" if "?" in path else "?") +
                                    "format=json").body)


def raw(port: int, request: bytes) -> Any:
    """Send raw bytes, read until the daemon closes, parse the one reply."""
    return parse_reply(raw_exchange(port, request))


@pytest.fixture
def backend() -> Any:
    with Backend(body=b"ok") as b:
        yield b


@pytest.fixture
def ready_daemon(start_daemon: Any, backend: Backend) -> Any:
    """A daemon with one passing http check in every group."""
    daemon = start_daemon(["--check", http_check(backend)])
    wait_status(daemon.port, "/readyz", 200)
    return daemon


@pytest.fixture
def two_checks(start_daemon: Any, backend: Backend) -> Any:
    """`backend` (live, ready, started) passing and `extra` (ready only) refused."""
    closed, port = distinct_free_ports(2)
    daemon = start_daemon(["--check", http_check(backend),
                           "--check", "tcp addr=127.0.0.1:%d name=extra probes=ready %s" % (
                               closed, FAST)], port=port)
    wait_status(daemon.port, "/startupz", 200)
    wait_for(lambda: group_json(daemon.port, "/readyz")["checks"][1]["status"] == "fail",
             what="extra to fail")
    return daemon


# --- kubelet-style probes ------------------------------------------------------------------------

def test_kubelet_probes_from_http_client(ready_daemon: Any) -> None:
    port = ready_daemon.port
    for path, body in (("/livez", b"ok\n"), ("/readyz", b"ok\n"), ("/startupz", b"ok\n"),
                       ("/healthz", b"ok\n"), ("/health", b"Healthy"), ("/ready", b"OK")):
        reply = kubelet_probe(port, path)
        assert (reply.status, reply.body) == (200, body), path
        assert reply.headers["content-type"].startswith("text/plain")
        assert reply.headers["content-length"] == str(len(body))
        assert reply.headers["connection"] == "close"
        assert reply.headers["cache-control"] == "no-store"
        assert "date" in reply.headers
        assert "location" not in reply.headers
    # The daemon closes its side after the reply, as Connection: close asks.
    data = raw_exchange(port, KUBELET_RAW % b"/readyz")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nok\n")


def test_kubelet_probes_from_curl(ready_daemon: Any, backend: Backend) -> None:
    base = "http://127.0.0.1:%d" % ready_daemon.port
    kubelet = ["-H", "User-Agent: kube-probe/1.31", "-H", "Accept: */*", "-H",
               "Connection: close"]

    def curl(*args: str) -> str:
        done = subprocess.run([CURL, "-sS", "--max-time", "5"] + kubelet + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        assert done.returncode == 0, done.stderr
        return done.stdout.decode("latin-1")  # keep the CRLFs as sent

    out = curl("-i", base + "/readyz")
    assert out.startswith("HTTP/1.1 200 OK\r\n") and out.endswith("\r\n\r\nok\n")
    assert curl("--http1.0", "-o", "/dev/null", "-w", "%{http_code}", base + "/livez") == "200"
    head = curl("-I", base + "/health")
    assert head.startswith("HTTP/1.1 200") and "Content-Length: 7" in head
    assert curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", base + "/readyz") == "405"
    backend.serve(503, b"engine dead")
    wait_status(ready_daemon.port, "/readyz", 503)
    assert curl("-o", "/dev/null", "-w", "%{http_code}", base + "/readyz") == "503"
    assert curl(base + "/health") == "Unhealthy"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", base + "/healthz") == "503"


def test_failing_probes_bodies(ready_daemon: Any, backend: Backend) -> None:
    port = ready_daemon.port
    backend.serve(503, b"engine dead")
    said = ("backend: HTTP 503 from GET %s/health: engine dead\n" % backend.url).encode()
    assert wait_status(port, "/readyz", 503).body == b"readyz failed: " + said
    assert kubelet_probe(port, "/livez").body == b"livez failed: " + said
    assert kubelet_probe(port, "/healthz").status == 503
    assert (kubelet_probe(port, "/health").status, kubelet_probe(port, "/health").body) == (
        503, b"Unhealthy")
    ready = kubelet_probe(port, "/ready")
    assert ready.status == 503 and ready.body != b"OK"
    assert kubelet_probe(port, "/startupz").status == 200  # latched


def test_bare_tcp_connects_are_normal_and_silent(start_daemon: Any, backend: Backend) -> None:
    daemon = start_daemon(["--check", http_check(backend)])
    log = LogTail(daemon.proc.stderr)
    wait_status(daemon.port, "/readyz", 200)
    log.wait_line("group changed", "group=ready", "to=pass")
    time.sleep(0.5)
    before = log.lines()
    for _ in range(100):  # a tcpSocket probe: connect, send nothing, close
        socket.create_connection(("127.0.0.1", daemon.port), timeout=5).close()
    held = [socket.create_connection(("127.0.0.1", daemon.port), timeout=5) for _ in range(10)]
    assert kubelet_probe(daemon.port, "/readyz").status == 200  # served while they sit idle
    for sock in held:
        sock.close()
    assert kubelet_probe(daemon.port, "/livez").status == 200
    time.sleep(0.3)
    assert daemon.proc.poll() is None
    assert log.lines() == before


@pytest.mark.slow
def test_two_hundred_probes_log_nothing_and_each_transition_logs_once(
        start_daemon: Any, backend: Backend) -> None:
    daemon = start_daemon(["--check", http_check(backend)])
    log = LogTail(daemon.proc.stderr)
    port = daemon.port
    wait_status(port, "/readyz", 200)
    log.wait_line("group changed", "group=ready", "to=pass")
    time.sleep(0.5)
    before = log.lines()
    paths = ["/livez", "/readyz", "/startupz", "/health", "/readyz?verbose", "/nope",
             "/readyz?bogus=1", "/readyz?format=json", "/", "/readyz/backend"]
    for i in range(200):
        assert kubelet_probe(port, paths[i % len(paths)]).status in (200, 400, 404)
    assert log.lines() == before

    backend.serve(503, b"engine dead")
    wait_status(port, "/readyz", 503)
    base = backend.count(503)
    wait_for(lambda: backend.count(503) >= base + 4, what="more failing polls")
    backend.serve(200, b"ok")
    wait_status(port, "/readyz", 200)
    wait_for(lambda: backend.count(200) >= 4, what="more passing polls")
    new = log.lines()[len(before):]
    changes = [line for line in new if 'msg="check changed"' in line]
    assert len(changes) == 2, new
    assert "check=backend" in changes[0] and "from=pass to=fail" in changes[0]
    assert 'reason="HTTP 503 from GET %s/health: engine dead"' % backend.url in changes[0]
    assert "from=fail to=pass" in changes[1]
    for group in ("ready", "live"):
        lines = [line for line in new
                 if 'msg="group changed"' in line and "group=%s " % group in line]
        assert len(lines) == 2 and "to=fail" in lines[0] and "to=pass" in lines[1], new
    assert not [line for line in new if "group=started" in line]  # latched: no change
    assert len(new) == 6, new


def test_json_log_format(start_daemon: Any, backend: Backend) -> None:
    daemon = start_daemon(["--log-format", "json", "--check", http_check(backend)])
    log = LogTail(daemon.proc.stderr)
    wait_status(daemon.port, "/readyz", 200)
    log.wait_line('"group changed"', '"ready"')
    records = [json.loads(line) for line in log.lines()]
    assert records[0]["msg"] == "probed serving"
    change = [r for r in records if r["msg"] == "check changed"][0]
    assert (change["check"], change["from"], change["to"]) == ("backend", "pending", "pass")


# --- connections: keep-alive, pipelining, HEAD ---------------------------------------------------

def test_pipelined_requests_answered_in_order(ready_daemon: Any) -> None:
    with socket.create_connection(("127.0.0.1", ready_daemon.port), timeout=5) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                     b"HEAD /health HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n")
        reader = ResponseReader(sock)
        first = reader.read()
        assert (first.status, first.body) == (200, b"ok\n")
        head = reader.read(head_request=True)
        assert (head.status, head.headers["content-length"]) == (200, "7")
        third = reader.read()
        assert (third.status, third.body) == (200, b"OK")
        assert "connection" not in third.headers
        fourth = reader.read()
        assert fourth.status == 404 and fourth.headers["connection"] == "close"
        assert reader.at_eof()  # an error closes; the fifth request is never answered
        reader.close()


def test_http11_keep_alive(ready_daemon: Any) -> None:
    with socket.create_connection(("127.0.0.1", ready_daemon.port), timeout=5) as sock:
        reader = ResponseReader(sock)
        for path in (b"/livez", b"/readyz?verbose", b"/startupz", b"/health"):
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\nUser-Agent: kube-probe/1.31\r\n\r\n"
                         % path)
            reply = reader.read()
            assert reply.status == 200 and "connection" not in reply.headers
        sock.sendall(b"GET /livez HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert reader.read().headers["connection"] == "close"
        assert reader.at_eof()
        reader.close()


def test_http10_keep_alive_and_close(ready_daemon: Any) -> None:
    with socket.create_connection(("127.0.0.1", ready_daemon.port), timeout=5) as sock:
        reader = ResponseReader(sock)
        for _ in range(3):
            sock.sendall(b"GET /readyz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            reply = reader.read()
            assert reply.status == 200
            assert reply.headers["connection"].lower() == "keep-alive"
        sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")  # 1.0 without keep-alive: closes
        assert reader.read().body == b"ok\n"
        assert reader.at_eof()
        reader.close()


def test_head_everywhere(two_checks: Any) -> None:
    port = two_checks.port
    for path in ("/livez", "/readyz", "/health", "/readyz?verbose", "/readyz/extra", "/",
                 "/readyz?format=json"):
        full = kubelet_probe(port, path)
        data = raw_exchange(port, b"HEAD %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                            % path.encode())
        reply = parse_reply(data)
        assert reply.status == full.status, path
        assert reply.body == b"", path
        if "json" in path:  # ages and poll counts move between the two requests
            assert int(reply.headers["content-length"]) > 0
        else:
            assert int(reply.headers["content-length"]) == len(full.body), path
    missing = parse_reply(raw_exchange(port, b"HEAD /nope HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert missing.status == 404 and missing.body == b""


# --- errors and limits ---------------------------------------------------------------------------

def test_404_405_400_each_close_the_connection(two_checks: Any) -> None:
    port = two_checks.port
    reply = raw(port, b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n")  # keep-alive asked, closed anyway
    assert reply.status == 404 and b"/nope" in reply.body
    for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"):
        reply = raw(port, b"%s /readyz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n" % method)
        assert reply.status == 405, method
        assert reply.headers["allow"] == "GET, HEAD"
        assert reply.headers["connection"] == "close"
    assert raw(port, b"POST /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n").status == 404
    for query in (b"bogus=1", b"exclude=nosuch", b"format=xml", b"exclude=backend&bogus"):
        reply = raw(port, b"GET /readyz?%s HTTP/1.1\r\nHost: a\r\n\r\n" % query)
        assert reply.status == 400, query
        assert reply.headers["connection"] == "close"
    assert raw(port, b"GET /livez?exclude=extra HTTP/1.1\r\n\r\n").status == 400  # not in live
    for garbage in (b"HELLO\r\n\r\n", b"GET /livez HTTP/9.9\r\n\r\n", b"GET livez HTTP/1.1\r\n\r\n",
                    b"GET /livez HTTP/1.1\r\nBad Header\r\n\r\n"):
        assert raw(port, garbage).status in (400, 505), garbage
    assert kubelet_probe(port, "/startupz").status == 200  # still serving


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET /livez HTTP/1.1\r\nX-Big: " + b"b" * 40000 + b"\r\n\r\n", 431),
    (b"GET /livez HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n",
     431),
    (b"POST /readyz HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n", 413),
], ids=["414-uri", "431-big-header", "431-many-fields", "413-body"])
def test_limits_over_the_wire_close_the_connection(ready_daemon: Any, request_bytes: bytes,
                                                   status: int) -> None:
    data = raw_exchange(ready_daemon.port, request_bytes)  # returns only once the daemon closed
    reply = parse_reply(data)
    assert reply.status == status
    assert reply.headers["connection"] == "close"
    assert b"%d " % status in reply.body
    assert kubelet_probe(ready_daemon.port, "/livez").status == 200


def test_percent_encoded_and_absolute_form_paths(two_checks: Any) -> None:
    port = two_checks.port
    assert kubelet_probe(port, "/%72eadyz?exclude=extra").status == 200
    assert kubelet_probe(port, "/%6C%69%76%65%7A").body == b"ok\n"
    assert kubelet_probe(port, "/readyz/%62ackend").status == 200
    assert kubelet_probe(port, "/readyz/ext%72a").status == 503
    assert kubelet_probe(port, "/livez%3Fverbose").status == 404  # an encoded ? is not a query
    assert raw(port, b"GET /%ff HTTP/1.1\r\n\r\n").status == 400
    assert raw(port, b"GET http://pod:8080/livez HTTP/1.1\r\nHost: pod\r\n"
               b"Connection: close\r\n\r\n").status == 200


# --- queries, single checks, the index -----------------------------------------------------------

def test_verbose_exclude_and_json(two_checks: Any) -> None:
    port = two_checks.port
    reply = kubelet_probe(port, "/readyz")
    assert (reply.status, reply.body) == (503, b"readyz failed: extra: connection refused\n")
    verbose = kubelet_probe(port, "/readyz?verbose")
    assert verbose.status == 503
    assert verbose.text.splitlines() == [
        "[+]backend ok: HTTP 200", "[-]extra failed: connection refused",
        "readyz check failed: extra: connection refused"]
    assert kubelet_probe(port, "/livez?verbose").text.splitlines() == [
        "[+]backend ok: HTTP 200", "livez check passed"]
    excluded = kubelet_probe(port, "/readyz?exclude=extra&verbose=1")
    assert excluded.status == 200
    assert "[+]extra excluded: ok" in excluded.text and "[-]" not in excluded.text
    assert kubelet_probe(port, "/readyz?exclude=extra").body == b"ok\n"
    assert kubelet_probe(port, "/readyz?exclude=extra&exclude=backend").status == 200

    doc = group_json(port, "/readyz")
    assert (doc["group"], doc["status"], doc["started"]) == ("ready", "fail", True)
    assert [(c["name"], c["kind"], c["status"]) for c in doc["checks"]] == [
        ("backend", "http", "pass"), ("extra", "tcp", "fail")]
    assert doc["checks"][1]["reason"] == "connection refused"
    by_accept = kubelet_probe(port, "/readyz", headers={"Accept": "application/json"})
    assert by_accept.status == 503
    assert by_accept.headers["content-type"] == "application/json"
    assert json.loads(by_accept.body)["checks"][0]["name"] == "backend"
    assert json.loads(kubelet_probe(port, "/livez?format=json").body)["status"] == "pass"
    assert kubelet_probe(port, "/readyz?format=text").body == reply.body


def test_threshold_overrides(two_checks: Any, backend: Backend) -> None:
    port = two_checks.port
    backend.serve(503, b"Loading model")
    wait_status(port, "/livez", 503)
    assert kubelet_probe(port, "/livez?backend.expect=200-599").status == 200
    assert kubelet_probe(port, "/livez?backend.expect=503&backend.contains=Loading").status == 200
    lacking = kubelet_probe(port, "/livez?backend.expect=503&backend.contains=ok&verbose")
    assert lacking.status == 503 and "lacks 'ok'" in lacking.text
    assert kubelet_probe(port, "/readyz/backend?backend.expect=503").status == 200
    assert kubelet_probe(port, "/livez").status == 503  # overrides never stick
    for query in ("nosuch.expect=200", "backend.url=http://x/", "backend.colour=red",
                  "backend.expect=abc", "extra.expect=200"):
        reply = kubelet_probe(port, "/livez?" + query)
        assert reply.status == 400, query
        assert reply.headers["connection"] == "close"
    assert b"nosuch" in kubelet_probe(port, "/livez?nosuch.expect=200").body
    assert b"abc" in kubelet_probe(port, "/livez?backend.expect=abc").body


def test_single_check_paths_and_index(two_checks: Any) -> None:
    port = two_checks.port
    assert kubelet_probe(port, "/readyz/backend").status == 200
    assert kubelet_probe(port, "/readyz/extra").status == 503
    assert kubelet_probe(port, "/startupz/backend").status == 200
    assert kubelet_probe(port, "/livez/backend?verbose").text.startswith("[+]backend ok")
    assert kubelet_probe(port, "/livez/extra").status == 404  # extra is not a live check
    assert kubelet_probe(port, "/readyz/nosuch").status == 404
    index = kubelet_probe(port, "/")
    assert index.status == 200
    for word in ("/livez", "/readyz", "/startupz", "/healthz", "/health", "/ready",
                 "backend", "extra", "http", "tcp"):
        assert word in index.text, word


# --- a backend that hangs, goes stale -----------------------------------------------------------

@pytest.mark.slow
def test_probes_answered_at_once_while_the_backend_hangs(start_daemon: Any,
                                                         backend: Backend) -> None:
    daemon = start_daemon(["--check", "http url=%s/health name=backend probes=live,ready,started "
                                      "interval=200ms timeout=2s" % backend.url])
    port = daemon.port
    wait_status(port, "/readyz", 200)
    backend.set_mode("hang")
    wait_for(lambda: backend.held_count() >= 1, what="a poll to hang")
    for path in ("/readyz", "/livez", "/startupz", "/readyz?verbose", "/readyz?format=json",
                 "/health", "/") * 2:
        assert backend.held_count() >= 1  # a poll is stuck right now...
        reply = kubelet_probe(port, path, timeout=1.0)  # ...and the probe is answered anyway
        assert reply.status in (200, 503)
        assert backend.held_count() >= 1
    with socket.create_connection(("127.0.0.1", port), timeout=1.0):
        pass
    reply = wait_status(port, "/readyz?verbose", 503)
    assert "[-]backend failed: timed out after 2s" in reply.text
    backend.serve(200)
    wait_status(port, "/readyz", 200)


@pytest.mark.slow
def test_stale_result_fails_before_the_deadline_ends_the_poll(start_daemon: Any,
                                                              backend: Backend) -> None:
    daemon = start_daemon(["--check", "http url=%s/health name=backend probes=ready,started "
                                      "interval=200ms timeout=2s stale-after=600ms" % backend.url])
    port = daemon.port
    wait_status(port, "/readyz", 200)
    backend.set_mode("hang")
    reply = wait_status(port, "/readyz?verbose", 503, timeout=5)
    assert backend.held_count() >= 1  # the poll that went stale is still running
    assert "[-]backend failed: stale: no result within 600ms (last: HTTP 200)" in reply.text
    wait_for(lambda: "timed out after 2s" in kubelet_probe(port, "/readyz?verbose").text, 10,
             what="the poll's deadline")
    backend.serve(200)
    wait_status(port, "/readyz", 200)


@pytest.mark.slow
def test_stale_check_does_not_pass_again_on_a_failing_result(start_daemon: Any,
                                                             backend: Backend) -> None:
    daemon = start_daemon(["--check", "http url=%s/health name=backend probes=ready,started "
                                      "interval=200ms timeout=1500ms stale-after=500ms "
                                      "fail-after=3" % backend.url])
    port = daemon.port
    wait_status(port, "/readyz", 200)
    backend.set_mode("hang")
    wait_status(port, "/readyz", 503, timeout=5)  # stale
    seen = set()
    deadline = time.monotonic() + 3.0  # past the first timed-out result (1.5 s in)
    while time.monotonic() < deadline:
        seen.add(kubelet_probe(port, "/readyz").status)
        time.sleep(0.03)
    assert seen == {503}, "ready passed again while every poll hung: %s" % seen


# --- lifecycle -----------------------------------------------------------------------------------

def test_hysteresis_fail_after_and_pass_after(start_daemon: Any, backend: Backend) -> None:
    daemon = start_daemon(["--check", http_check(backend, extra="fail-after=3 pass-after=2")])
    log = LogTail(daemon.proc.stderr)
    port = daemon.port
    wait_status(port, "/readyz", 200)
    assert backend.count(200) >= 2  # pass-after=2 from pending too
    backend.serve(503, b"busy")
    wait_status(port, "/readyz", 503)
    assert backend.count(503) >= 3  # two failures were not enough
    line = log.wait_line("check changed", "to=fail")
    assert "consecutive=3" in line
    passes = backend.count(200)
    backend.serve(200, b"ok")
    wait_status(port, "/readyz", 200)
    assert backend.count(200) - passes >= 2
    assert "consecutive=2" in log.wait_line("check changed", "from=fail to=pass")


def test_started_latch_and_live_before_and_after_start(start_daemon: Any,
                                                       backend: Backend) -> None:
    backend.serve(503, b"Loading model")
    daemon = start_daemon(["--check", http_check(backend)])
    port = daemon.port
    wait_for(lambda: backend.count(503) >= 2, what="polls of the loading backend")
    assert kubelet_probe(port, "/startupz").status == 503
    live = kubelet_probe(port, "/livez")
    assert (live.status, live.body) == (200, b"ok\n")  # loading must not be killed
    ready = kubelet_probe(port, "/readyz")
    assert ready.status == 503 and b"not started" in ready.body

    backend.serve(200, b"ok")
    wait_status(port, "/startupz", 200)
    wait_status(port, "/readyz", 200)
    assert kubelet_probe(port, "/livez").status == 200

    backend.serve(503, b"engine dead")
    live = wait_status(port, "/livez", 503)  # after start, a failing live check fails live
    assert b"engine dead" in live.body
    base = backend.count(503)
    wait_for(lambda: backend.count(503) >= base + 3, what="more failing polls")
    assert kubelet_probe(port, "/startupz").status == 200  # latched
    assert kubelet_probe(port, "/readyz").status == 503
    assert group_json(port, "/startupz")["status"] == "pass"


def test_refused_after_a_pass_is_a_restart_that_unlatches_started(
        start_daemon: Any, backend: Backend) -> None:
    daemon = start_daemon(["--check", http_check(backend)])
    log = LogTail(daemon.proc.stderr)
    port = daemon.port
    wait_status(port, "/startupz", 200)
    backend.set_mode("refuse")
    wait_status(port, "/startupz", 503)  # the kubelet's startupProbe must wait for the reload
    assert kubelet_probe(port, "/livez").status == 200  # and liveness must not kill it
    assert kubelet_probe(port, "/readyz").status == 503
    assert log.wait_line("started unlatched")
    backend.serve(200)
    wait_status(port, "/startupz", 200)
    wait_status(port, "/readyz", 200)


@pytest.mark.slow
def test_engine_death_then_refused_unlatches_started(start_daemon: Any,
                                                     backend: Backend) -> None:
    # DESIGN 4: vLLM answers 503 on engine death and the process exits ~5 s later.
    daemon = start_daemon(["--check", http_check(backend)])
    port = daemon.port
    wait_status(port, "/startupz", 200)
    backend.serve(503, b"")
    wait_status(port, "/livez", 503)
    backend.set_mode("refuse")  # the process is gone; a new one will load
    wait_status(port, "/startupz", 503, timeout=3)
    assert kubelet_probe(port, "/livez").status == 200


@pytest.mark.slow
def test_startup_timeout_fails_live_when_never_started(start_daemon: Any,
                                                       backend: Backend) -> None:
    backend.serve(503, b"Loading model")
    daemon = start_daemon(["--startup-timeout", "2s", "--check", http_check(backend)])
    port = daemon.port
    assert kubelet_probe(port, "/livez").status == 200
    live = wait_status(port, "/livez", 503)
    assert b"not started within 2s" in live.body
    backend.serve(200, b"ok")
    wait_status(port, "/startupz", 200)
    wait_status(port, "/livez", 200)


@pytest.mark.slow
def test_sigterm_drains_then_exits_zero(start_daemon: Any, backend: Backend) -> None:
    gate, port = distinct_free_ports(2)
    daemon = start_daemon(["--drain-seconds", "2s", "--tcp-ready", str(gate),
                           "--check", http_check(backend)], port=port)
    log = LogTail(daemon.proc.stderr)
    port = daemon.port
    wait_status(port, "/readyz", 200)
    wait_for(lambda: port_open(gate), what="the ready gate to open")
    t0 = time.monotonic()
    daemon.signal(signal.SIGTERM)
    ready = wait_status(port, "/readyz", 503, timeout=1.0)
    assert b"shutting down" in ready.body
    assert "shutting down" in kubelet_probe(port, "/readyz?verbose").text
    assert kubelet_probe(port, "/livez").status == 200
    assert kubelet_probe(port, "/startupz").status == 200
    wait_for(lambda: not port_open(gate), 2, what="the ready gate to close")
    while time.monotonic() < t0 + 1.2:  # still answering well into the drain
        assert kubelet_probe(port, "/livez").status == 200
        assert kubelet_probe(port, "/readyz").status == 503
        time.sleep(0.05)
    assert daemon.proc.poll() is None
    assert daemon.proc.wait(timeout=10) == 0
    log.join()
    assert log.matching("shutting down", "SIGTERM")
    assert log.matching("probed stopped")


def test_second_signal_stops_at_once(start_daemon: Any, backend: Backend) -> None:
    daemon = start_daemon(["--drain-seconds", "60s", "--check", http_check(backend)])
    wait_status(daemon.port, "/readyz", 200)
    daemon.signal(signal.SIGTERM)
    wait_status(daemon.port, "/readyz", 503)
    daemon.signal(signal.SIGINT)
    assert daemon.proc.wait(timeout=5) == 0


def test_gated_ports_follow_their_groups(start_daemon: Any, backend: Backend) -> None:
    live, ready, started, port = distinct_free_ports(4)  # while the backend holds its port
    backend.set_mode("refuse")
    daemon = start_daemon(["--tcp-live", str(live), "--tcp-ready", str(ready),
                           "--tcp-started", str(started), "--check", http_check(backend)],
                          port=port)
    wait_for(lambda: port_open(live), what="live gate open before start")
    assert not port_open(ready) and not port_open(started)

    backend.serve(200)
    wait_for(lambda: port_open(ready) and port_open(started), what="ready+started gates")
    assert port_open(live)
    assert kubelet_probe(ready, "/readyz").status == 200  # a gate port also answers HTTP

    backend.serve(503, b"engine dead")
    wait_for(lambda: not port_open(ready) and not port_open(live), what="gates to close")
    assert port_open(started)  # latched

    backend.serve(200)
    wait_for(lambda: port_open(ready) and port_open(live), what="gates to reopen")
    backend.set_mode("refuse")  # refused after a pass: a restart, so started unlatches too
    wait_for(lambda: not port_open(ready) and not port_open(started), what="gates to close")
    assert port_open(live)  # loading again: live passes
    assert daemon.proc.poll() is None


# --- connection cap and timeouts -----------------------------------------------------------------

def test_connection_cap(start_daemon: Any) -> None:
    daemon = start_daemon(["--max-connections", "5"])
    port = daemon.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
    try:
        time.sleep(0.2)  # all five accepted: the cap is reached
        # A new connection is let in: the oldest idle one is closed (no reply) to make room.
        assert kubelet_probe(port, "/livez", timeout=2.0).status == 200
        assert read_until_eof(idle[0], timeout=2.0) == b""
        for sock in idle[1:]:  # the others stay open
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in idle:
            sock.close()

    def probe_ok() -> bool:
        try:
            return kubelet_probe(port, "/livez", timeout=2.0).status == 200
        except (OSError, http.client.HTTPException):
            return False

    wait_for(probe_ok, what="probes to work again")
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    assert probe_ok()  # under the cap again: served normally
    for sock in held:
        sock.close()


def test_read_timeout_answers_408_to_half_a_request(start_daemon: Any) -> None:
    daemon = start_daemon(["--read-timeout", "500ms"])
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: a\r\n")
        data = read_until_eof(sock, timeout=5)
    reply = parse_reply(data)
    assert reply.status == 408
    assert reply.headers["connection"] == "close"
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        assert read_until_eof(sock, timeout=5) == b""  # sent nothing: closed, no reply
    assert kubelet_probe(daemon.port, "/livez").status == 200


def test_read_timeout_bounds_the_whole_request_not_each_byte(start_daemon: Any) -> None:
    daemon = start_daemon(["--read-timeout", "500ms"])
    request = b"GET /readyz HTTP/1.1\r\nX-Slow: " + b"s" * 200
    got = b""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.settimeout(0.1)
        deadline = time.monotonic() + 5
        for i in range(len(request)):  # one byte every 0.1 s: never idle for long
            if time.monotonic() > deadline:
                break
            try:
                sock.send(request[i:i + 1])
                got += sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                break
            if got:
                break
    assert got.startswith(b"HTTP/1.1 408 "), got


def test_idle_timeout_closes_keep_alive_connections(start_daemon: Any) -> None:
    daemon = start_daemon(["--idle-timeout", "500ms"])
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n")
        assert reader.read().status == 200
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n")  # still open right after
        assert reader.read().status == 200
        assert reader.at_eof()  # then closed by the daemon, without a reply
        reader.close()


@pytest.mark.slow
def test_write_timeout_closes_a_client_that_never_reads(start_daemon: Any) -> None:
    daemon = start_daemon(["--write-timeout", "500ms"])
    # The index reply is ~30x its request: the daemon's send buffer fills long before ours.
    request = b"GET / HTTP/1.1\r\n\r\n"
    stream = request * (65536 // len(request) + 1)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast, stays small
        sock.settimeout(5)
        sock.connect(("127.0.0.1", daemon.port))
        sock.setblocking(False)
        sent, closed = 0, False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # pipeline, never read, until the daemon gives up
            offset = sent % len(request)  # the stream repeats, so any cut continues it
            try:
                sent += sock.send(stream[offset:])
            except BlockingIOError:
                select.select([], [sock], [], 0.1)
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                closed = True
                break
        assert closed, "the daemon kept a client that never reads open for 15 s"
    assert kubelet_probe(daemon.port, "/livez").status == 200


def test_ipv6_loopback_listener() -> None:
    port = free_port("::1")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "probed", "--addr", "[::1]:%d" % port,
                             "--allow-no-checks"],
                            cwd=str(REPO), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_listening("::1", port)
        reply = kubelet_probe(port, "/livez", host="::1")
        assert (reply.status, reply.body) == (200, b"ok\n")
    finally:
        proc.kill()
        proc.wait(timeout=10)


# --- configuration -------------------------------------------------------------------------------

def _one_error_line(done: "subprocess.CompletedProcess[str]") -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_port_in_use_is_a_one_line_error_naming_the_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = _one_error_line(run_probed(["--addr", "127.0.0.1:%d" % port, "--allow-no-checks"]))
        assert "--addr" in line and str(port) in line and "in use" in line
        line = _one_error_line(run_probed(["--addr", "127.0.0.1:%d" % free_port(),
                                           "--tcp-ready", str(port), "--allow-no-checks"]))
        assert "--tcp-ready" in line and str(port) in line


@pytest.mark.parametrize("args,env,needles", [
    (["--read-timeout", "soon"], {}, ["--read-timeout=soon", "duration"]),
    (["--idle-timeout=-1s"], {}, ["--idle-timeout=-1s"]),
    (["--max-connections", "0"], {}, ["--max-connections=0"]),
    (["--tcp-ready", "70000"], {}, ["--tcp-ready=70000"]),
    (["--log-format", "xml"], {}, ["--log-format=xml"]),
    ([], {"PROBED_READ_TIMEOUT": "soon"}, ["PROBED_READ_TIMEOUT=soon"]),
    (["--check", "bogus url=http://127.0.0.1:1/"], {}, ["--check #1", "'bogus'", "http"]),
    (["--check", "http url=http://127.0.0.1:1/ colour=red"], {}, ["'colour'", "url"]),
    (["--check", "http url=http://127.0.0.1:1/ interval=fast"], {}, ["interval=fast"]),
    (["--check", "http url=ftp://127.0.0.1/"], {}, ["url=ftp://127.0.0.1/"]),
    (["--check", "http url=http://127.0.0.1:1/ expect=ok"], {}, ["expect=ok"]),
    (["--check", "http"], {}, ["'url'"]),
    (["--check", "tcp addr=nowhere"], {}, ["addr=nowhere"]),
    (["--check", "tcp addr=127.0.0.1:1", "--check", "tcp addr=127.0.0.1:2"], {},
     ["--check #2", "'tcp'"]),
    ([], {"PROBED_CHECK": "http url=http://127.0.0.1:1/ probes=sometimes"},
     ["PROBED_CHECK line 1", "probes=sometimes"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_config_errors_exit_2_naming_flag_and_value(args: List[str], env: Dict[str, str],
                                                    needles: List[str]) -> None:
    line = _one_error_line(run_probed(["--addr", "127.0.0.1:%d" % free_port()] + args, env))
    assert line.startswith("probed: error: ")
    for needle in needles:
        assert needle in line, (needle, line)


def test_config_file_errors_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "probed.json"
    for content, needle in (('{"read-timeout": "soon"}', "'read-timeout'"),
                            ('{"colour": 1}', "'colour'"),
                            ('{"checks": [{"kind": "http", "url": "x"}]}', "url=x"),
                            ('{"checks": [', "not valid JSON")):
        path.write_text(content)
        line = _one_error_line(run_probed(["--config", str(path)]))
        assert str(path) in line and needle in line, (content, line)
    line = _one_error_line(run_probed(["--config", str(tmp_path / "missing.json")]))
    assert "missing.json" in line


def test_config_error_never_echoes_a_header_token() -> None:
    done = run_probed(["--check", "http url=http://127.0.0.1:1/ "
                                  "header='Authorization: Bearer s3cr3t-token"])
    assert done.returncode == 2
    assert "--check #1" in done.stderr
    assert "s3cr3t" not in done.stderr


def test_credentials_in_a_check_url_are_a_config_error() -> None:
    done = run_probed(["--addr", "127.0.0.1:%d" % free_port(), "--print-config",
                       "--check", "http url=http://user:s3cr3t@127.0.0.1:1/health"])
    assert done.returncode == 2
    assert "url" in done.stderr
    assert "s3cr3t" not in done.stdout + done.stderr


def test_environment_variables_and_precedence(start_daemon: Any, backend: Backend) -> None:
    env = {"PROBED_READ_TIMEOUT": "3s", "PROBED_MAX_CONNECTIONS": "7",
           "PROBED_DRAIN_SECONDS": "250ms",
           "PROBED_CHECK": "tcp addr=127.0.0.1:9 name=a\n\n%s" % http_check(backend, "b")}
    done = run_probed(["--print-config", "--read-timeout", "4s"], env)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["read-timeout"] == "4s"  # the command line beats the environment
    assert shown["max-connections"] == 7
    assert shown["drain-seconds"] == "250ms"
    assert [c["name"] for c in shown["checks"]] == ["a", "b"]

    daemon = start_daemon([], env={"PROBED_CHECK": http_check(backend, "fromenv"),
                                   "PROBED_IDLE_TIMEOUT": "300ms"})
    assert wait_status(daemon.port, "/readyz?verbose", 200).text.startswith("[+]fromenv ok")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"GET /livez HTTP/1.1\r\n\r\n")
        assert reader.read().status == 200
        assert reader.at_eof()  # PROBED_IDLE_TIMEOUT took effect
        reader.close()


def test_config_file_settings_and_checks(start_daemon: Any, backend: Backend,
                                         tmp_path: Path) -> None:
    path = tmp_path / "probed.json"
    path.write_text(json.dumps({
        "idle-timeout": "300ms", "drain-seconds": 0.25,
        "checks": [{"kind": "http", "url": backend.url + "/health", "name": "fromfile",
                    "probes": ["live", "ready", "started"], "interval": "200ms",
                    "timeout": 0.5, "header": ["X-From: file"], "expect": "200-299"}]}))
    daemon = start_daemon(["--config", str(path), "--check", http_check(backend, "fromflag")])
    reply = wait_status(daemon.port, "/readyz?verbose", 200)
    assert reply.text.splitlines()[:2] == ["[+]fromfile ok: HTTP 200", "[+]fromflag ok: HTTP 200"]
    assert any(r.headers.get("x-from") == "file" for r in backend.requests)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"GET /livez HTTP/1.1\r\n\r\n")
        assert reader.read().status == 200
        assert reader.at_eof()  # idle-timeout from the file took effect
        reader.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0  # drain-seconds from the file: a quick exit


def test_print_config_never_shows_a_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-from-file\n")
    config = tmp_path / "probed.json"
    config.write_text(json.dumps({"checks": [{
        "kind": "http", "url": "http://127.0.0.1:1/v1/models", "name": "jsonauth",
        "header": ["Authorization: Bearer s3cr3t-in-json"]}]}))
    done = run_probed(
        ["--print-config", "--config", str(config),
         "--check", "http url=http://127.0.0.1:1/health name=flagauth "
                    "header='Authorization: Bearer s3cr3t-on-flag' header='X-Api-Key: s3cr3t-key' "
                    "token-file=%s" % token_file],
        {"PROBED_CHECK": "http url=http://127.0.0.1:1/ name=envauth "
                         "header='Authorization: Bearer s3cr3t-in-env'"})
    assert done.returncode == 0, done.stderr
    assert "s3cr3t" not in done.stdout + done.stderr
    shown = json.loads(done.stdout)
    by_name = {c["name"]: c for c in shown["checks"]}
    assert set(by_name) == {"jsonauth", "flagauth", "envauth"}
    assert by_name["flagauth"]["token-file"] == str(token_file)  # the path, not the content
    assert "<redacted>" in json.dumps(by_name["flagauth"]["header"])


def test_head_with_an_oversized_request_line_gets_a_414_without_a_body(start_daemon: Any) -> None:
    daemon = start_daemon([])
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(b"HEAD /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 ") and b"Content-Length: " in head
    assert body == b""
