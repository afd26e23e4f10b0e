"""`probed bench` against a known loopback server: one new connection per probe with the
kubelet's headers, counts and statuses, percentile order, --json, --mode tcp, exit codes."""

import json
import socket
import subprocess
import sys
import threading
from typing import Dict, Iterator, List

import pytest
from conftest import REPO, free_port

from probed.probebench import bench_main, kubelet_request, percentile, run_bench


class KnownServer:
    """Answers every request with one fixed status, one connection at a time, and records
    each connection's request bytes (b"" for a bare TCP probe)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: List[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if data:
                        body = b"status %d" % self.status
                        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close"
                                     b"\r\n\r\n%s" % (self.status, len(body), body))
                except OSError:
                    pass
                self.requests.append(data)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def server_factory() -> Iterator:
    made: List[KnownServer] = []

    def make(status: int = 200) -> KnownServer:
        made.append(KnownServer(status))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _wait_requests(server: KnownServer, count: int) -> None:
    # The server records a connection after the client has already read its reply.
    for _ in range(100):
        if len(server.requests) >= count:
            return
        threading.Event().wait(0.02)


def test_http_probes_are_counted_with_statuses_and_ordered_percentiles(server_factory):
    server = server_factory(200)
    result = run_bench("http://127.0.0.1:%d/readyz" % server.port, n=60, concurrency=3,
                       warmup=5)
    assert result["probes"] == 60 and result["errors"] == 0
    assert result["statuses"] == {"200": 60}
    assert 0 < result["p50_us"] <= result["p90_us"] <= result["p99_us"] <= result["max_us"]
    assert result["probes_per_second"] > 0
    _wait_requests(server, 65)
    assert len(server.requests) == 65  # warm-up + timed, each on its own connection


def test_requests_carry_the_kubelet_headers(server_factory):
    server = server_factory(200)
    run_bench("http://127.0.0.1:%d/livez?verbose" % server.port, n=3, warmup=0)
    _wait_requests(server, 3)
    for raw in server.requests:
        head = raw.decode("ascii").split("\r\n")
        assert head[0] == "GET /livez?verbose HTTP/1.1"
        fields: Dict[str, str] = dict(line.split(": ", 1) for line in head[1:] if line)
        assert fields["Host"] == "127.0.0.1:%d" % server.port
        assert fields["User-Agent"].startswith("kube-probe/")
        assert fields["Connection"] == "close" and fields["Accept"] == "*/*"
    assert kubelet_request("::1", 80, "/").startswith(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n")


def test_failing_status_is_reported_not_an_error(server_factory):
    server = server_factory(503)
    result = run_bench("http://127.0.0.1:%d/readyz" % server.port, n=10, warmup=0)
    assert result["statuses"] == {"503": 10} and result["errors"] == 0


def test_tcp_mode_connects_and_sends_nothing(server_factory):
    server = server_factory(200)
    result = run_bench("http://127.0.0.1:%d/" % server.port, n=20, mode="tcp", warmup=2)
    assert result["probes"] == 20 and result["mode"] == "tcp"
    assert result["statuses"] == {"0": 20}
    _wait_requests(server, 22)
    assert server.requests == [b""] * 22


def test_json_output_shape_and_exit_0(server_factory, capsys):
    server = server_factory(200)
    url = "http://127.0.0.1:%d/readyz" % server.port
    code = bench_main([url, "-n", "25", "-c", "2", "--warmup", "0", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(data) == {"url", "mode", "concurrency", "probes", "errors", "statuses", "p50_us",
                         "p90_us", "p99_us", "max_us", "probes_per_second", "first_error"}
    assert (data["url"], data["mode"], data["concurrency"], data["probes"]) == (url, "http", 2, 25)
    assert data["statuses"] == {"200": 25}
    assert data["p50_us"] <= data["p90_us"] <= data["p99_us"] <= data["max_us"]


def test_text_output_names_the_percentiles(server_factory, capsys):
    server = server_factory(200)
    assert bench_main(["http://127.0.0.1:%d/" % server.port, "-n", "5", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "probes=5 errors=0" in out
    for word in ("p50 ", "p90 ", "p99 ", "max ", "probes/s", "statuses: 200 x5"):
        assert word in out


def test_nothing_listening_exits_3_with_every_probe_an_error(capsys):
    url = "http://127.0.0.1:%d/readyz" % free_port()
    assert bench_main([url, "-n", "4", "--warmup", "1", "--timeout", "1", "--json"]) == 3
    data = json.loads(capsys.readouterr().out)  # strict JSON: no NaN
    assert data["probes"] == 0 and data["errors"] == 4 and data["max_us"] is None
    assert data["p50_us"] is None and data["first_error"] == "Connection refused"


def test_a_closed_port_says_why_in_words(capsys):
    # issue 14: it printed "p50 nanus" and a Python dict
    url = "http://127.0.0.1:%d/readyz" % free_port()
    assert bench_main([url, "-n", "3", "--warmup", "0", "--timeout", "1"]) == 3
    out = capsys.readouterr().out
    assert "no probe was answered: Connection refused" in out and "nan" not in out


@pytest.mark.parametrize("args", [["-n", "0"], ["-c", "0"], ["--mode", "udp"], []])
def test_usage_errors_exit_2(args):
    with pytest.raises(SystemExit) as info:
        bench_main((["http://127.0.0.1:1/"] if args else []) + args)
    assert info.value.code == 2


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


def test_bench_through_the_command_line(server_factory):
    server = server_factory(200)
    result = subprocess.run([sys.executable, "-m", "probed", "bench", "--json", "-n", "5",
                             "--warmup", "0", "http://127.0.0.1:%d/" % server.port],
                            cwd=str(REPO), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["statuses"] == {"200": 5}
