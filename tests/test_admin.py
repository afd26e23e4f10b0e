"""The admin listener: drain, push heartbeats, llm-d's become-ready SPI, Bearer auth, isolation.

Unit tests drive `AdminRouter.respond` with parsed requests against a real Pod and Scheduler; the
end-to-end tests run probed with `--admin-addr` and speak to both ports over loopback the way
a worker, a controller and the kubelet would, including admin paths sent to the probe port.
"""

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from backends import LogTail, kubelet_probe, wait_status
from conftest import free_port
from fakes import FakeCheck

from probed.admin import (
    AdminRouter,
    AdminToken,
    build_admin,
)
from probed.checks.base import Check, Observation
from probed.flags import parse_admin_addr, parse_serve_args
from probed.settings import Settings, resolve_settings
from probed.beatregistry import HeartbeatRegistry
from probed.checks.base import CheckResources
from probed.cli import main as cli_main
from probed.checkspecs import build_checks
from probed.pod import DRAIN_RULES, Pod
from probed.scheduler import Scheduler, log_events
from probed.eventlog import EventLog
from probed.httpproto import http_date, parse_request
from probed.router import Router
from probed.values import ConfigError

Reply = Tuple[int, Dict[str, str], bytes]


def make_admin(token_file: Optional[str] = None, manual: Optional[str] = "",
               push: bool = True) -> Tuple[AdminRouter, Pod, io.StringIO]:
    """An admin router over an engine with a fake `model` check, a manual check (None: none;
    "": default initial state) and a push heartbeat check."""
    raws: List[Dict[str, str]] = []
    if manual is not None:
        raws.append(dict({"kind": "manual", "name": "spi"}, **({"initial": manual}
                                                               if manual else {})))
    if push:
        raws.append({"kind": "heartbeat", "name": "workers", "expect": "2", "probes": "live"})
    resources = CheckResources()
    checks = [FakeCheck("model")] + build_checks(raws, ["test"] * len(raws), resources)
    log = io.StringIO()
    events = EventLog("text", log)
    pod = Pod(checks, 0.0, 0.0)
    control = Scheduler(pod, checks, events, [log_events(events)])
    control.record("model", Observation(True, "HTTP 200"), 0.001)
    if manual is not None:
        control.record("spi", pod.states["spi"].check.current(), 0.0)  # its first poll
    token = AdminToken(token_file) if token_file else None
    return AdminRouter(pod, control, resources.beats, events, token), pod, log


def call(router: AdminRouter, method: str, target: str, headers: str = "") -> Reply:
    raw = ("%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (method, target, headers)).encode()
    req, _ = parse_request(raw)
    reply = router.respond(req)
    wire = reply.before + http_date(0) + reply.after
    head, _, body = wire.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, body


ADMIN_DRAIN_REASON = DRAIN_RULES["admin"].reason


def ready(engine: Pod) -> Tuple[bool, str]:
    verdict = engine.verdicts["ready"]
    return verdict.ok, verdict.reason


# --- drain ---------------------------------------------------------------------------------------

def test_drain_and_undrain_flip_ready_only() -> None:
    router, engine, log = make_admin(manual="ready", push=False)
    assert ready(engine) == (True, "ok")
    status, _, body = call(router, "POST", "/drain")
    assert (status, body) == (200, b"draining: ready fails until POST /undrain\n")
    assert ready(engine) == (False, ADMIN_DRAIN_REASON)
    assert engine.verdicts["live"].ok, "draining never touches live"
    assert call(router, "POST", "/drain")[0] == 200  # idempotent
    status, _, body = call(router, "POST", "/undrain")
    assert (status, body) == (200, b"undrained (admin): ready follows its checks again\n")
    assert ready(engine) == (True, "ok")
    assert call(router, "POST", "/undrain")[2] == b"not draining\n"
    assert log.getvalue().count('msg="drain set" source=admin active=admin') == 1
    assert log.getvalue().count('msg="drain cleared" source=admin active=none') == 1


def test_undrain_ends_what_can_be_undone_and_says_why_a_shutdown_cannot() -> None:
    router, engine, _ = make_admin(manual="ready", push=False)
    router.control.drain("shutdown")
    status, _, body = call(router, "POST", "/drain")
    assert (status, body) == (200, b"draining: ready fails until POST /undrain (also active: "
                                   b"shutdown)\n")
    assert ready(engine) == (False, "shutting down + " + ADMIN_DRAIN_REASON)
    status, _, body = call(router, "POST", "/undrain")
    assert status == 409 and b"cannot undrain: probed is shutting down" in body
    assert b"a probed that starts again starts undrained (ended: admin)" in body
    assert ready(engine) == (False, "shutting down")


def test_undrain_ends_a_prestop_drain_too() -> None:
    # issue 14: a drain tried on a live pod took it out of service until probed restarted
    router, engine, _ = make_admin(manual="ready", push=False)
    router.control.drain("prestop")
    router.control.drain("admin")
    status, _, body = call(router, "POST", "/undrain")
    assert (status, body) == (200, b"undrained (prestop, admin): ready follows its checks "
                                   b"again\n")
    assert ready(engine) == (True, "ok")


# --- llm-d SPI and the manual check --------------------------------------------------------------

def test_become_ready_and_unready_take_effect_at_once() -> None:
    router, engine, log = make_admin(push=False)
    ok, reason = ready(engine)
    assert not ok and "initial=unready, until POST /v1/become-ready" in reason
    status, _, body = call(router, "POST", "/v1/become-ready")
    assert (status, body) == (200, b"OK\n")  # what llm-d's requester answers
    assert ready(engine) == (True, "ok")
    status, _, body = call(router, "POST", "/v1/become-unready")
    assert (status, body) == (200, b"OK\n")
    ok, reason = ready(engine)
    assert not ok and reason.startswith("spi: POST /v1/become-unready at ")
    assert 'msg="admin set manual check" check=spi to=unready' in log.getvalue()


def test_manual_initial_ready_and_default_probes() -> None:
    router, engine, _ = make_admin(manual="ready", push=False)
    assert ready(engine) == (True, "ok")
    check = engine.states["spi"].check
    assert check.spec.probes == frozenset(("ready",))
    with pytest.raises(ConfigError, match="initial=maybe: expected ready or unready"):
        build_checks([{"kind": "manual", "initial": "maybe"}], ["test"])


def test_become_ready_without_a_manual_check_is_404_and_says_what_to_add() -> None:
    router, _, _ = make_admin(manual=None, push=False)
    status, _, body = call(router, "POST", "/v1/become-ready")
    assert status == 404 and b'add --check "manual"' in body


# --- push heartbeats -----------------------------------------------------------------------------

def test_push_beats_reach_the_heartbeat_check() -> None:
    router, engine, _ = make_admin(manual=None)
    check = engine.states["workers"].check
    assert call(router, "POST", "/heartbeat/w1")[:3:2] == (200, b"OK\n")
    assert [name for name, _ in check.resources.beats.ages()] == ["w1"]
    assert call(router, "POST", "/heartbeat/w2")[0] == 200
    assert router.registry is check.resources.beats
    status, _, body = call(router, "DELETE", "/heartbeat/w2")
    assert (status, body) == (200, b"removed w2\n")
    assert call(router, "DELETE", "/heartbeat/w2")[2] == b"w2 was not known\n"


@pytest.mark.parametrize("target", ["/heartbeat/", "/heartbeat/a/b", "/heartbeat/..",
                                    "/heartbeat/.x", "/heartbeat/%2e%2e%2fetc",
                                    "/heartbeat/" + "x" * 129, "/heartbeat/a%00"])
def test_bad_heartbeat_names_are_400(target: str) -> None:
    router, _, _ = make_admin(manual=None)
    status, _, body = call(router, "POST", target)
    assert status == 400 and b"expected 1-128 letters" in body
    assert router.registry.beats == {}


def test_a_full_registry_refuses_new_names_with_503() -> None:
    router, _, log = make_admin(manual=None)
    router.registry.max_names = 2
    assert call(router, "POST", "/heartbeat/a")[0] == 200
    assert call(router, "POST", "/heartbeat/b")[0] == 200
    for name in ("c", "d", "e"):
        status, _, body = call(router, "POST", "/heartbeat/" + name)
        assert status == 503 and b"heartbeat registry full" in body
    assert call(router, "POST", "/heartbeat/a")[0] == 200, "known names keep beating"
    assert log.getvalue().count("heartbeat name refused") == 1, "warned once, not per call"


def test_beats_without_a_push_check_are_404() -> None:
    router, _, _ = make_admin(push=False)
    status, _, body = call(router, "POST", "/heartbeat/w1")
    assert status == 404 and b"no heartbeat check reads pushed beats" in body


# --- paths and methods ---------------------------------------------------------------------------

def test_index_methods_paths_and_queries() -> None:
    router, _, _ = make_admin()
    status, _, body = call(router, "GET", "/")
    assert status == 200
    for path in (b"/drain", b"/undrain", b"/heartbeat/NAME", b"/v1/become-ready",
                 b"/v1/become-unready"):
        assert path in body
    status, fields, body = call(router, "HEAD", "/")
    assert status == 200 and body == b"" and int(fields["Content-Length"]) > 100
    status, fields, _ = call(router, "GET", "/drain")
    assert status == 405 and fields["Allow"] == "POST"
    status, fields, _ = call(router, "GET", "/heartbeat/w1")
    assert status == 405 and fields["Allow"] == "POST, DELETE"
    assert call(router, "POST", "/")[0] == 405
    assert call(router, "POST", "/readyz")[0] == 404
    status, _, body = call(router, "POST", "/drain?now=1")
    assert status == 400 and b"takes no query parameters" in body


def test_admin_paths_are_404_on_the_probe_port() -> None:
    _, engine, _ = make_admin()
    router = Router(engine)
    for method, target in (("POST", "/drain"), ("POST", "/undrain"), ("POST", "/heartbeat/w1"),
                           ("DELETE", "/heartbeat/w1"), ("POST", "/v1/become-ready"),
                           ("POST", "/v1/become-unready"), ("GET", "/drain"),
                           ("GET", "/wait-for-drain")):
        req, _ = parse_request(("%s %s HTTP/1.1\r\n\r\n" % (method, target)).encode())
        assert router.respond(req).status == 404, (method, target)


# --- auth ----------------------------------------------------------------------------------------

@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("s3cret-token\n")
    return path


@pytest.mark.parametrize("header", ["", "Authorization: Bearer wrong\r\n",
                                    "Authorization: Bearer s3cret-toke\r\n",
                                    "Authorization: Bearer s3cret-token-and-more\r\n",
                                    "Authorization: Basic s3cret-token\r\n",
                                    "Authorization: s3cret-token\r\n",
                                    "Authorization: Bearer\r\n"])
def test_without_the_right_token_every_call_is_401(token_file: Path, header: str) -> None:
    router, engine, _ = make_admin(str(token_file), manual="ready")
    for method, target in (("POST", "/drain"), ("GET", "/"), ("POST", "/nowhere"),
                           ("POST", "/heartbeat/w1"), ("POST", "/v1/become-unready")):
        status, fields, body = call(router, method, target, header)
        assert status == 401, (method, target)
        assert fields["WWW-Authenticate"].startswith("Bearer")
        assert fields["Connection"] == "close"
        assert b"s3cret" not in body
    assert ready(engine)[0], "nothing changed"
    assert router.registry.beats == {}


def test_the_right_token_is_let_through(token_file: Path) -> None:
    router, engine, _ = make_admin(str(token_file), manual="ready")
    for auth in ("Bearer s3cret-token", "bearer s3cret-token", "Bearer  s3cret-token "):
        status, _, _ = call(router, "POST", "/drain", "Authorization: %s\r\n" % auth)
        assert status == 200, auth
    assert ready(engine) == (False, ADMIN_DRAIN_REASON)
    good = "Authorization: Bearer s3cret-token\r\n"
    assert call(router, "POST", "/nowhere", good)[0] == 404  # 404 only once authorized


def test_a_rotated_token_applies_without_a_restart(token_file: Path) -> None:
    router, _, _ = make_admin(str(token_file))
    old, new = "Authorization: Bearer s3cret-token\r\n", "Authorization: Bearer rotated\r\n"
    assert call(router, "POST", "/drain", old)[0] == 200
    token_file.write_text("rotated")
    st = token_file.stat()
    os.utime(str(token_file), ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert call(router, "POST", "/drain", old)[0] == 401
    assert call(router, "POST", "/drain", new)[0] == 200


def test_an_unreadable_or_empty_token_file_refuses_everything(token_file: Path) -> None:
    router, _, _ = make_admin(str(token_file))
    token_file.write_text("  \n")
    status, _, body = call(router, "POST", "/drain", "Authorization: Bearer \r\n")
    assert status == 503 and b"is empty" in body
    token_file.unlink()
    status, _, body = call(router, "POST", "/drain", "Authorization: Bearer s3cret-token\r\n")
    assert status == 503 and b"cannot be read" in body


# --- configuration -------------------------------------------------------------------------------

def test_parse_admin_addr_defaults_to_loopback() -> None:
    assert parse_admin_addr(":9090") == ("127.0.0.1", 9090)
    assert parse_admin_addr("0.0.0.0:9090") == ("0.0.0.0", 9090)
    assert parse_admin_addr("[::1]:9090") == ("::1", 9090)
    assert parse_admin_addr("off") is None
    for bad in ("9090", ":0", ":http", ":70000"):
        with pytest.raises(ValueError):
            parse_admin_addr(bad)


def pieces(checks: List[Check], log: EventLog) -> Tuple[Pod, Scheduler, List[Check]]:
    """What build_admin takes besides settings: the pod, its scheduler, the checks."""
    pod = Pod(checks, 0.0, 0.0)
    return pod, Scheduler(pod, checks, log, []), checks


def settings_with(**values: object) -> Settings:
    """Settings as the command line resolves them (no flags), with `values` replaced."""
    settings, _ = resolve_settings(parse_serve_args(["--allow-no-checks"]), {})
    return settings._replace(**values)


def test_configurations_that_need_the_admin_listener_are_refused(tmp_path: Path) -> None:
    log = EventLog("text", io.StringIO())
    manual = build_checks([{"kind": "manual"}], ["t"])
    with pytest.raises(ConfigError, match="--admin-addr is off"):
        build_admin(settings_with(), *pieces(manual, log), log, HeartbeatRegistry())
    push = build_checks([{"kind": "heartbeat"}], ["t"])
    with pytest.raises(ConfigError, match="without path= reads beats POSTed"):
        build_admin(settings_with(), *pieces(push, log), log, HeartbeatRegistry())
    files = build_checks([{"kind": "heartbeat", "path": str(tmp_path)}], ["t"])
    assert build_admin(settings_with(), *pieces(files, log), log, HeartbeatRegistry()) is None
    with pytest.raises(ConfigError, match="no effect without --admin-addr"):
        build_admin(settings_with(admin_token_file="/x"), *pieces(files, log), log, HeartbeatRegistry())
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ConfigError, match="--admin-token-file %s is empty" % empty):
        build_admin(settings_with(admin_addr=("127.0.0.1", 1), admin_token_file=str(empty)),
                    *pieces(files, log), log, HeartbeatRegistry())


def test_cli_exits_2_when_a_manual_check_has_no_admin_listener(capsys: pytest.CaptureFixture
                                                               ) -> None:
    assert cli_main(["--check", "manual"]) == 2
    assert "--admin-addr is off" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--check", "heartbeat"], "without path= reads beats POSTed"),
    (["--admin-token-file", "/x", "--check", "tcp addr=127.0.0.1:9"],
     "no effect without --admin-addr"),
])
def test_the_daemon_still_refuses_what_needs_the_admin_listener(
        argv: List[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    """The daemon imports admin.py only when a flag or a check kind may need it (idle RSS):
    every configuration build_admin refuses must still reach it."""
    assert cli_main(["--addr", "127.0.0.1:0"] + argv) == 2
    assert needle in capsys.readouterr().err


def test_cli_takes_the_admin_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "probed", "--admin-addr", ":9090", "--admin-token-file", "/t",
         "--print-config", "--allow-no-checks"], cwd=str(Path(__file__).resolve().parents[1]),
        stdout=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert '"admin-addr": "127.0.0.1:9090"' in result.stdout
    assert '"admin-token-file": "/t"' in result.stdout


# --- end to end ----------------------------------------------------------------------------------

def admin_call(port: int, method: str, path: str, token: str = "") -> Tuple[int, bytes]:
    headers = {"Authorization": "Bearer " + token} if token else {}
    reply = kubelet_probe(port, path, method=method, headers=headers)
    return reply.status, reply.body


@pytest.mark.slow
def test_admin_listener_end_to_end(start_daemon, tmp_path: Path) -> None:  # type: ignore
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    admin = free_port()
    daemon = start_daemon([
        "--admin-addr", ":%d" % admin, "--admin-token-file", str(token),
        "--check", "manual initial=unready interval=200ms",
        "--check", "heartbeat name=workers expect=2 window=30s interval=200ms"])
    log = LogTail(daemon.proc.stderr)
    assert "addr=127.0.0.1:%d" % admin in log.wait_line("admin listening")
    probe = daemon.port
    # admin paths do not exist on the probe port, with or without the token
    for method, path in (("POST", "/drain"), ("POST", "/undrain"), ("POST", "/heartbeat/w1"),
                         ("POST", "/v1/become-ready"), ("POST", "/v1/become-unready"),
                         ("GET", "/drain"), ("GET", "/v1/become-ready")):
        assert admin_call(probe, method, path, "tok-123")[0] == 404, (method, path)
    assert admin_call(admin, "POST", "/heartbeat/w1")[0] == 401
    assert admin_call(admin, "POST", "/heartbeat/w1", "wrong")[0] == 401
    for worker in ("w1", "w2"):
        assert admin_call(admin, "POST", "/heartbeat/" + worker, "tok-123") == (200, b"OK\n")
    wait_status(probe, "/readyz/workers", 200)
    reply = kubelet_probe(probe, "/readyz?verbose")
    assert reply.status == 503 and b"[-]manual failed: initial=unready" in reply.body
    assert b"[+]workers ok" in reply.body
    assert admin_call(admin, "POST", "/v1/become-ready", "tok-123") == (200, b"OK\n")
    wait_status(probe, "/ready", 200)
    assert admin_call(admin, "POST", "/drain", "tok-123")[0] == 200
    assert b"draining (admin)" in wait_status(probe, "/readyz", 503).body
    assert kubelet_probe(probe, "/livez").status == 200
    assert admin_call(admin, "POST", "/undrain", "tok-123")[0] == 200
    wait_status(probe, "/readyz", 200)
    assert "tok-123" not in "\n".join(log.lines())


def test_the_admin_listener_loads_no_argparse() -> None:
    """argparse and gettext are for --help and the subcommands only (issue 18, idle RSS): a
    daemon with --admin-addr imports admin.py and drain.py, and must not pay for them."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "import probed.admin, probed.drain, probed.flags, probed.settings, probed.cli; "
         "print(sorted({'argparse', 'gettext'} & set(sys.modules)))",
         str(Path(__file__).resolve().parents[1])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
