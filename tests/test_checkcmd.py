"""`probed check URL`: every exit code (0 pass, 1 fail, 2 usage, 3 unreachable or timed out),
-v, headers, https, and the same through `python -m probed` and the single file probed.py."""

import http.server
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from conftest import REPO, free_port

from probed.checkcmd import check_main


class _Handler(http.server.BaseHTTPRequestHandler):
    routes = {"/ok": (200, b"all good\n"), "/bad": (503, b"Unhealthy"),
              "/moved": (302, b""), "/teapot": (418, b"short and stout")}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/echo":
            status, body = 200, ("x-test=%s" % self.headers.get("X-Test")).encode()
        else:
            status, body = self.routes.get(self.path, (404, b"no such path"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 302:
            self.send_header("Location", "/bad")  # must not be followed
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(server: http.server.HTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def http_port() -> Iterator[int]:
    yield from _serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl CLI not found")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"], capture_output=True, timeout=60)
    if result.returncode != 0:
        pytest.skip("openssl could not make a certificate: %s" % result.stderr[-200:])
    return cert, key


@pytest.fixture
def https_port(certificate) -> Iterator[int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from _serve(server)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections (the kernel completes the handshake) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def run_check(capsys, args: List[str]) -> Tuple[int, str, str]:
    code = check_main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_pass_on_200_prints_the_status_line_only(capsys, http_port):
    code, out, err = run_check(capsys, ["http://127.0.0.1:%d/ok" % http_port])
    assert (code, out, err) == (0, "200 OK\n", "")


def test_fail_on_503(capsys, http_port):
    code, out, _ = run_check(capsys, ["http://127.0.0.1:%d/bad" % http_port])
    assert code == 1 and out == "503 Service Unavailable\n"


def test_fail_on_any_4xx_and_pass_below_400_without_following_redirects(capsys, http_port):
    assert run_check(capsys, ["http://127.0.0.1:%d/teapot" % http_port])[0] == 1
    assert run_check(capsys, ["http://127.0.0.1:%d/missing" % http_port])[0] == 1
    code, out, _ = run_check(capsys, ["http://127.0.0.1:%d/moved" % http_port])
    assert code == 0 and out.startswith("302 ")


def test_verbose_prints_the_body(capsys, http_port):
    code, out, _ = run_check(capsys, ["-v", "http://127.0.0.1:%d/bad" % http_port])
    assert code == 1 and out == "503 Service Unavailable\nUnhealthy\n"
    code, out, _ = run_check(capsys, ["http://127.0.0.1:%d/ok" % http_port, "--verbose"])
    assert code == 0 and out == "200 OK\nall good\n"


def test_headers_are_sent(capsys, http_port):
    code, out, _ = run_check(capsys, ["-v", "-H", "X-Test: hello there",
                                      "http://127.0.0.1:%d/echo" % http_port])
    assert code == 0 and out.endswith("x-test=hello there\n")


@pytest.mark.parametrize("args", [
    [],
    ["ftp://127.0.0.1/readyz"],
    ["http://127.0.0.1:99999/"],
    ["http://127.0.0.1:8080/", "--timeout", "soon"],
    ["http://127.0.0.1:8080/", "--timeout", "0"],
    ["http://127.0.0.1:8080/", "-H", "no-colon"],
    ["http://127.0.0.1:8080/", "--ca-file", "/nonexistent/ca.pem"],
    ["http://127.0.0.1:8080/", "--bogus"],
])
def test_usage_errors_exit_2(capsys, args):
    try:
        code = check_main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    assert capsys.readouterr().err.strip(), "a usage error must say what was wrong"


def test_refused_port_exits_3(capsys):
    port = free_port()
    code, out, err = run_check(capsys, ["http://127.0.0.1:%d/readyz" % port])
    assert code == 3 and out == ""
    assert "connection refused" in err and str(port) in err


def test_server_that_never_answers_exits_3_at_the_timeout(capsys, silent_port):
    code, out, err = run_check(capsys, ["--timeout", "300ms",
                                        "http://127.0.0.1:%d/readyz" % silent_port])
    assert code == 3 and out == ""
    assert "timed out after 0.3s" in err


def test_https_with_a_ca_file_and_with_insecure(capsys, https_port, certificate):
    url = "https://localhost:%d/ok" % https_port
    code, out, _ = run_check(capsys, ["--ca-file", str(certificate[0]), "-v", url])
    assert (code, out) == (0, "200 OK\nall good\n")
    code, out, _ = run_check(capsys, ["-k", "https://127.0.0.1:%d/bad" % https_port])
    assert (code, out) == (1, "503 Service Unavailable\n")


def test_https_with_an_untrusted_certificate_exits_3(capsys, https_port):
    code, _, err = run_check(capsys, ["https://localhost:%d/ok" % https_port])
    assert code == 3 and "certificate" in err


def _cli(args: List[str], single_file: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "probed.py")] if single_file else [
        sys.executable, "-m", "probed"]
    return subprocess.run(cmd + ["check"] + args, cwd=str(REPO), capture_output=True,
                          timeout=60)


@pytest.mark.parametrize("single_file", [False, True], ids=["module", "probed.py"])
def test_exit_codes_through_the_command_line(http_port, https_port, single_file):
    ok = _cli(["http://127.0.0.1:%d/ok" % http_port], single_file)
    assert (ok.returncode, ok.stdout) == (0, b"200 OK\n"), ok.stderr
    assert _cli(["http://127.0.0.1:%d/bad" % http_port], single_file).returncode == 1
    assert _cli(["--timeout"], single_file).returncode == 2
    assert _cli(["http://127.0.0.1:%d/" % free_port()], single_file).returncode == 3
    tls = _cli(["-k", "-v", "https://127.0.0.1:%d/ok" % https_port], single_file)
    assert (tls.returncode, tls.stdout) == (0, b"200 OK\nall good\n"), tls.stderr



def test_the_package_entry_point_adds_its_subcommands_without_touching_the_table(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # issue 15: __main__ mutated cli.SUBCOMMANDS, a module-level table
    import probed.__main__ as entry_module
    from probed import cli
    before = dict(cli.SUBCOMMANDS)
    monkeypatch.setattr("sys.argv", ["probed", "sim", "--help"])
    assert entry_module.entry() == 0 and "usage: probed sim" in capsys.readouterr().out
    assert cli.SUBCOMMANDS == before and "sim" not in cli.SUBCOMMANDS
