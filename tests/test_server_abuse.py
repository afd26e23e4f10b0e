"""Hostile clients on the probe port: probes keep being answered within the kubelet's 1 s
timeout, memory stays bounded, and held-open sockets cannot lock probes out for long."""

import http.client
import signal
import socket
import threading
import time
from typing import Any, List

import pytest
from backends import Backend
from conftest import free_port, wait_listening

pytestmark = pytest.mark.slow

KUBELET_TIMEOUT = 1.0  # the kubelet's default probe timeout: a probe slower than this fails


def probe(port: int, path: str = "/livez") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=KUBELET_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        return conn.getresponse().status
    finally:
        conn.close()


def rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as fh:
        return int([l for l in fh if l.startswith("VmRSS")][0].split()[1])


def test_a_pipelining_client_cannot_stall_probes_or_grow_memory(start_daemon: Any) -> None:
    daemon = start_daemon([])
    before = rss_kb(daemon.proc.pid)
    stop = threading.Event()

    def flood(path: bytes) -> None:  # pipelines requests and reads the replies as they come
        request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
            sock.settimeout(0.2)
            drain = threading.Thread(target=read_all, args=(sock,))
            drain.start()
            while not stop.is_set():
                try:
                    sock.sendall(request * 3000)
                except (socket.timeout, OSError):
                    time.sleep(0.05)
            sock.shutdown(socket.SHUT_RDWR)
            drain.join(timeout=10)

    def read_all(sock: socket.socket) -> None:
        while not stop.is_set():
            try:
                if not sock.recv(1 << 20):
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    floods = [threading.Thread(target=flood, args=(p,)) for p in (b"/metrics", b"/livez") * 3]
    for thread in floods:
        thread.start()
    try:
        time.sleep(0.5)
        statuses = [probe(daemon.port) for _ in range(30)]  # each within the 1 s timeout
        assert statuses == [200] * 30
        grown = rss_kb(daemon.proc.pid) - before
        assert grown < 64 * 1024, "RSS grew by %d KB under a pipelining flood" % grown
    finally:
        stop.set()
        for thread in floods:
            thread.join(timeout=10)


def test_a_flood_of_empty_lines_is_a_400_not_a_busy_loop(start_daemon: Any) -> None:
    daemon = start_daemon([])
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(b"\r\n" * 4096)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400 ") and b"empty lines" in reply
    assert probe(daemon.port) == 200


def test_at_the_cap_the_oldest_held_connection_gives_way_to_a_probe(start_daemon: Any) -> None:
    daemon = start_daemon(["--max-connections", "20"])
    held: List[socket.socket] = []
    try:
        for _ in range(20):  # silent connections, as an attacker would hold them
            held.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=5))
        time.sleep(0.3)
        assert probe(daemon.port) == 200  # at the cap: let in at once, not locked out
        held[0].settimeout(2)
        assert held[0].recv(100) == b""  # ...because the oldest was closed to make room
        for sock in held[1:]:  # and only that one
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(100)
    finally:
        for sock in held:
            sock.close()


def test_a_drain_caller_that_hangs_up_does_not_hold_shutdown(start_daemon: Any) -> None:
    admin = free_port()
    with Backend(body=b"x 5\n") as busy:  # 5 requests in flight, for ever
        daemon = start_daemon(["--admin-addr", "127.0.0.1:%d" % admin, "--drain-seconds", "0",
                               "--check", "inflight url=%s/metrics metric=x" % busy.url])
        wait_listening("127.0.0.1", admin)
        with socket.create_connection(("127.0.0.1", admin), timeout=5) as sock:
            sock.sendall(b"GET /wait-for-drain?timeout=1h HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(1.0)  # the wait is open: 5 in flight
            with pytest.raises(socket.timeout):
                sock.recv(100)
        time.sleep(0.5)  # the caller hung up: the wait must be over, not held for an hour
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=5) == 0
