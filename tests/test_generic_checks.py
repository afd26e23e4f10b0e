"""Check kinds http, tcp and exec against real loopback peers, directly and through the daemon.

Directly: each check is built from the same `key=value` text users write, its `observe()` runs
against a `tests/backends.Backend` (normal, 503, hang, refuse, reset, drip) under
`asyncio.run`, and `judge()` turns the observation into a verdict. Through the daemon: the
same checks decide `/readyz`, which is probed kubelet-style. The exec check's deadline must
kill the whole process group, grandchildren included (checked in /proc).
"""

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from backends import (
    Backend,
    kubelet_probe,
    process_group_alive,
    wait_for,
    wait_status,
)
from probed.checks.base import Check, Observation
from probed.config import build_checks
from probed.scheduler import poll_once
from probed.values import ConfigError

OUTER_DEADLINE = 8.0  # a check that ignores its own timeout fails the test here instead


def make_check(kind: str, **keys: Any) -> Check:
    """One check from raw key=value strings, exactly as `--check` would build it."""
    raw: Dict[str, Any] = {"kind": kind}
    raw.update({k.replace("_", "-"): v for k, v in keys.items()})
    return build_checks([raw], ["test"])[0]


def observe(check: Check) -> Tuple[Observation, float]:
    """Run observe() once on a fresh loop; (observation, seconds it took)."""
    async def run() -> Observation:
        return await asyncio.wait_for(check.observe(), OUTER_DEADLINE)

    t0 = time.monotonic()
    obs = asyncio.run(run())
    return obs, time.monotonic() - t0


def poll(check: Check, settle: float = 0.0) -> Observation:
    """One poll the way the engine runs it: observe() under the check's hard deadline.

    `settle` keeps the loop running a little longer, so a subprocess the deadline killed is
    reaped and its transport closed before the loop is (as the daemon's loop would).
    """
    async def run() -> Observation:
        obs, _latency = await asyncio.wait_for(poll_once(check), OUTER_DEADLINE)
        await asyncio.sleep(settle)
        return obs

    return asyncio.run(run())


def verdict(check: Check, obs: Observation, **overrides: Any) -> Tuple[bool, str]:
    """judge() under the check's config plus parsed overrides (as ?NAME.KEY=VALUE does)."""
    config = dict(check.config)
    for key, text in overrides.items():
        config[key] = check.parse_override(key, text)
    return check.judge(obs, config, False)


@pytest.fixture
def backend() -> Any:
    with Backend(body=b"ok") as b:
        yield b


# --- http: observe() and judge() against a real peer -------------------------------------------

def test_http_200_passes_and_sends_a_plain_get(backend: Backend) -> None:
    check = make_check("http", url=backend.url + "/health?x=1", timeout="2s")
    obs, _ = observe(check)
    assert verdict(check, obs) == (True, "HTTP 200")
    req = backend.requests[-1]
    assert (req.method, req.target) == ("GET", "/health?x=1")
    assert req.headers["host"] == "127.0.0.1:%d" % backend.port
    assert req.headers["connection"] == "close"  # no pooling: a new connection per poll
    assert req.headers["user-agent"].startswith("probed")


def test_http_503_fails_with_status_and_body(backend: Backend) -> None:
    backend.serve(503, b"engine is dead\n")
    check = make_check("http", url=backend.url + "/health", timeout="2s")
    obs, _ = observe(check)
    ok, reason = verdict(check, obs)
    assert not ok
    assert reason == "HTTP 503: engine is dead"


def test_http_expect_and_contains_and_their_overrides(backend: Backend) -> None:
    backend.serve(503, b"Loading model")
    check = make_check("http", url=backend.url + "/health", expect="200,503", timeout="2s")
    obs, _ = observe(check)
    assert verdict(check, obs) == (True, "HTTP 503")
    assert verdict(check, obs, expect="200")[0] is False
    ok, reason = verdict(check, obs, contains="status")
    assert not ok and "lacks 'status'" in reason
    assert verdict(check, obs, contains="Loading")[0] is True
    with pytest.raises(ConfigError, match="expect"):
        check.parse_override("expect", "fine")
    with pytest.raises(ConfigError, match="url"):
        check.parse_override("url", "http://127.0.0.1:1/")


def test_http_post_with_body_and_headers(backend: Backend) -> None:
    check = make_check("http", url=backend.url + "/v1/ping", method="post", body='{"a": 1}',
                       header=["X-Probe: yes", "Authorization: Bearer s3cr3t"], timeout="2s")
    obs, _ = observe(check)
    assert obs.ok, obs
    req = backend.requests[-1]
    assert req.method == "POST"
    assert req.body == b'{"a": 1}'
    assert req.headers["content-length"] == "8"
    assert req.headers["x-probe"] == "yes"
    assert req.headers["authorization"] == "Bearer s3cr3t"


def test_http_token_file_is_read_on_every_poll(backend: Backend, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    check = make_check("http", url=backend.url + "/v1/models", token_file=str(token),
                       timeout="2s")
    observe(check)
    assert backend.requests[-1].headers["authorization"] == "Bearer first-token"
    token.write_text("rotated-token")
    observe(check)
    assert backend.requests[-1].headers["authorization"] == "Bearer rotated-token"


def test_http_missing_token_file_fails_the_check_naming_the_file(backend: Backend,
                                                                 tmp_path: Path) -> None:
    missing = tmp_path / "no-token"
    check = make_check("http", url=backend.url + "/v1/models", token_file=str(missing),
                       timeout="2s")
    obs = poll(check)
    assert not obs.ok
    assert str(missing) in obs.reason
    assert not backend.requests  # no request without the credentials it was told to send


def test_http_hang_fails_at_its_own_deadline(backend: Backend) -> None:
    backend.set_mode("hang")
    check = make_check("http", url=backend.url + "/health", timeout="500ms")
    obs, _took = observe(check)  # the outer 8 s deadline fails the test if this hangs
    assert not obs.ok
    assert obs.detail == {"error": "timeout"}
    assert "timed out" in obs.reason and "response headers" in obs.reason
    assert verdict(check, obs)[0] is False
    assert len(backend.requests) == 1  # it did reach the backend, which then hung


def test_http_refused(backend: Backend) -> None:
    backend.set_mode("refuse")
    check = make_check("http", url=backend.url + "/health", timeout="2s")
    obs, _ = observe(check)
    assert not obs.ok
    assert obs.detail == {"error": "refused"}
    assert verdict(check, obs) == (False, "connection refused")


def test_http_reset(backend: Backend) -> None:
    backend.set_mode("reset")
    check = make_check("http", url=backend.url + "/health", timeout="2s")
    obs, _ = observe(check)
    assert not obs.ok
    assert obs.detail is not None and obs.detail["error"] in ("reset", "closed"), obs
    assert verdict(check, obs)[0] is False


@pytest.mark.slow
def test_http_drip_one_byte_per_second_fails_at_the_total_deadline() -> None:
    # A byte arrives every second, more often than the 2.5 s timeout: a per-read timeout
    # (urllib's) would wait forever; one deadline for the whole call must end it.
    with Backend(mode="drip", drip_every=1.0) as backend:
        check = make_check("http", url=backend.url + "/health", timeout="2500ms")
        obs, _ = observe(check)
    assert not obs.ok
    assert obs.detail == {"error": "timeout"}
    assert "timed out after 2.5s" in obs.reason


def test_http_backend_recovers_between_polls(backend: Backend) -> None:
    check = make_check("http", url=backend.url + "/health", timeout="2s")
    backend.set_mode("refuse")
    assert poll(check).ok is False
    backend.serve(200, b"ok")
    assert verdict(check, poll(check)) == (True, "HTTP 200")


def test_http_bad_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="url"):
        make_check("http", url="ftp://127.0.0.1/")
    with pytest.raises(ConfigError, match="expect=abc"):
        make_check("http", url="http://127.0.0.1:1/", expect="abc")
    with pytest.raises(ConfigError, match="'colour'"):
        make_check("http", url="http://127.0.0.1:1/", colour="red")
    with pytest.raises(ConfigError) as err:
        make_check("http", url="http://127.0.0.1:1/", header="Authorization Bearer s3cr3t")
    assert "s3cr3t" not in str(err.value)  # a header is a secret even when malformed


# --- tcp ---------------------------------------------------------------------------------------

def test_tcp_connect_passes(backend: Backend) -> None:
    check = make_check("tcp", addr="127.0.0.1:%d" % backend.port, timeout="2s")
    obs = poll(check)
    assert verdict(check, obs) == (True, "connected")
    wait_for(lambda: backend.accepted >= 1, 5, what="the backend to see the connect")


def test_tcp_refused(backend: Backend) -> None:
    backend.set_mode("refuse")
    check = make_check("tcp", addr="127.0.0.1:%d" % backend.port, timeout="2s")
    obs = poll(check)
    assert verdict(check, obs) == (False, "connection refused")
    assert obs.refused, "a refusal is the loading phase, and after a pass a restart (issue 15)"


def test_tcp_connect_that_never_completes_times_out() -> None:
    # A listener with a full accept queue drops further SYNs: the connect itself hangs.
    listener = socket.socket()
    held: List[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(8):
            s = socket.socket()
            s.settimeout(0.3)
            held.append(s)
            try:
                s.connect(("127.0.0.1", port))
            except socket.timeout:
                break
        else:
            pytest.skip("this kernel never let a loopback connect hang")
        check = make_check("tcp", addr="127.0.0.1:%d" % port, timeout="500ms")
        obs = poll(check)
        assert not obs.ok
        assert "timed out" in obs.reason
    finally:
        for s in held:
            s.close()
        listener.close()


def test_tcp_addr_needs_host_and_port() -> None:
    with pytest.raises(ConfigError, match="addr"):
        make_check("tcp", addr=":8000")
    with pytest.raises(ConfigError, match="addr"):
        make_check("tcp", addr="localhost")


# --- exec --------------------------------------------------------------------------------------

def test_exec_exit_zero_passes_with_last_output_line() -> None:
    check = make_check("exec", cmd="sh -c 'echo warming; echo all good'", timeout="5s")
    assert verdict(check, poll(check)) == (True, "all good")


def test_exec_nonzero_exit_fails_with_code_and_last_line() -> None:
    check = make_check("exec", cmd="sh -c 'echo checking; echo model not loaded >&2; exit 3'",
                       timeout="5s")
    obs = poll(check)
    assert verdict(check, obs) == (False, "exit 3: model not loaded")
    assert obs.value == 3


def test_exec_missing_command_fails_clearly(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-script")
    check = make_check("exec", cmd=missing, timeout="5s")
    ok, reason = verdict(check, poll(check))
    assert not ok
    assert reason.startswith("cannot run %s" % missing)


def test_exec_runs_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    check = make_check("exec", cmd="touch '%s;' " % marker, timeout="5s")
    assert poll(check).ok
    assert (tmp_path / "marker;").exists()  # the ';' reached touch: no shell parsed it


def _spawn_script(tmp_path: Path) -> Tuple[Path, Path]:
    """A probe script that starts a grandchild `sleep 60` and then hangs itself."""
    pgid_file, child_file = tmp_path / "pgid", tmp_path / "child"
    script = tmp_path / "probe.sh"
    script.write_text(
        "#!/bin/sh\n"
        "sleep 60 &\n"
        "echo $! > '%s.tmp' && mv '%s.tmp' '%s'\n"
        "ps -o pgid= -p $$ | tr -d ' ' > '%s.tmp' && mv '%s.tmp' '%s'\n"
        "sleep 60\n" % (child_file, child_file, child_file, pgid_file, pgid_file, pgid_file))
    script.chmod(0o755)
    return pgid_file, child_file


def _assert_group_gone(pgid: int) -> None:
    wait_for(lambda: not process_group_alive(pgid), 5,
             what="process group %d to be gone (left: %s)" % (pgid, process_group_alive(pgid)))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return
    # Still there means only zombies nobody has reaped yet (PID 1 here may not reap).
    assert not process_group_alive(pgid)


def test_exec_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pgid_file, child_file = _spawn_script(tmp_path)
    check = make_check("exec", cmd=str(tmp_path / "probe.sh"), timeout="1s")

    async def run() -> Observation:
        task = asyncio.ensure_future(poll_once(check))
        # While the deadline runs, the group (script + grandchild) is alive.
        for _ in range(200):
            if pgid_file.exists() and child_file.exists():
                break
            await asyncio.sleep(0.01)
        pgid = int(pgid_file.read_text())
        assert len(process_group_alive(pgid)) >= 2
        obs, _ = await asyncio.wait_for(task, OUTER_DEADLINE)
        await asyncio.sleep(0.3)  # let the killed script be reaped while the loop runs
        return obs

    obs = asyncio.run(run())
    assert not obs.ok
    assert obs.reason == "timed out after 1s"
    pgid = int(pgid_file.read_text())
    assert pgid != os.getpgrp()  # it had a group of its own, so killing it spared us
    _assert_group_gone(pgid)


def test_exec_exit_zero_with_a_background_child_passes_and_the_child_is_reaped(
        tmp_path: Path) -> None:
    child_file = tmp_path / "child"
    check = make_check("exec", cmd="sh -c 'sleep 60 & echo $! > %s; echo ready'" % child_file,
                       timeout="2s")
    obs = poll(check, settle=0.3)
    try:
        assert verdict(check, obs) == (True, "ready")
    finally:
        child = int(child_file.read_text())
        wait_for(lambda: not _pid_alive(child), 5, what="the background child to be killed")


def _pid_alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            stat = fh.read().decode("latin-1")
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


# --- through the daemon -----------------------------------------------------------------------

FAST = "interval=200ms"


def group_json(port: int, path: str = "/readyz") -> Dict[str, Any]:
    """A group's JSON reply."""
    reply = kubelet_probe(port, path + "?format=json")
    return json.loads(reply.body)


def check_row(port: int, name: str, path: str = "/readyz") -> Dict[str, Any]:
    """One check's row from the group's JSON."""
    rows = [r for r in group_json(port, path)["checks"] if r["name"] == name]
    assert rows, "no check %r in %s" % (name, path)
    return rows[0]


def wait_reason(port: int, name: str, needle: str, path: str = "/readyz",
                timeout: float = 10.0) -> Dict[str, Any]:
    """Wait until check `name` fails with a reason containing `needle`; returns its row."""
    last: List[Dict[str, Any]] = [{}]

    def check() -> bool:
        last[0] = check_row(port, name, path)
        return last[0]["status"] == "fail" and needle in last[0]["reason"]

    try:
        wait_for(check, timeout, what="%s failing with %r" % (name, needle))
    except AssertionError:
        raise AssertionError("%s never failed with %r; last row: %r" % (
            name, needle, last[0])) from None
    return last[0]


@pytest.mark.slow
def test_daemon_http_check_follows_every_backend_failure_mode(start_daemon: Any) -> None:
    with Backend(body=b"ok", drip_every=0.2) as backend:
        daemon = start_daemon(["--check", "http url=%s/health name=model probes=ready,started "
                                          "%s timeout=1s" % (backend.url, FAST)])
        wait_status(daemon.port, "/readyz", 200)
        for mode, needle in (("hang", "timed out"), ("refuse", "connection refused"),
                             ("reset", "reset"), ("drip", "timed out")):
            backend.set_mode(mode)
            row = wait_reason(daemon.port, "model", needle)
            if mode in ("refuse", "reset"):  # timeouts may come from the engine's deadline
                assert row["detail"]["error"] in (
                    ("reset", "closed") if mode == "reset" else ("refused",)), row
            assert kubelet_probe(daemon.port, "/readyz").status == 503
            backend.serve(200)
            wait_status(daemon.port, "/readyz", 200)
        backend.serve(503, b"engine dead")
        reply = wait_status(daemon.port, "/readyz", 503)
        assert reply.body == b"readyz failed: model: HTTP 503: engine dead\n"


def test_daemon_tcp_check(start_daemon: Any) -> None:
    with Backend() as backend:
        daemon = start_daemon(["--check", "tcp addr=127.0.0.1:%d name=port probes=ready,started "
                                          "%s" % (backend.port, FAST)])
        wait_status(daemon.port, "/readyz", 200)
        backend.set_mode("refuse")
        # a refusal after a pass: the backend restarted (issue 15), so it starts over
        assert wait_status(daemon.port, "/readyz", 503).body == \
            b"readyz failed: not started: port: connection refused\n"
        backend.serve(200)
        wait_status(daemon.port, "/readyz", 200)


def test_daemon_exec_check_follows_the_exit_code(start_daemon: Any, tmp_path: Path) -> None:
    flag = tmp_path / "healthy"
    flag.write_text("")
    script = "test -e %s || { echo missing %s; exit 4; }" % (flag, flag.name)
    daemon = start_daemon(["--check", "exec name=script probes=live,ready,started %s cmd=%s" % (
        FAST, json.dumps("sh -c %s" % json.dumps(script)))])
    wait_status(daemon.port, "/readyz", 200)
    flag.unlink()
    reply = wait_status(daemon.port, "/readyz?verbose", 503)
    assert "[-]script failed: exit 4: missing healthy" in reply.text
    flag.write_text("")
    wait_status(daemon.port, "/readyz", 200)


def test_daemon_exec_timeout_kills_the_process_group(start_daemon: Any, tmp_path: Path) -> None:
    pgid_file, child_file = _spawn_script(tmp_path)
    daemon = start_daemon(["--check", "exec name=script probes=ready interval=10s timeout=1s "
                                      "cmd=%s" % (tmp_path / "probe.sh")])
    wait_for(lambda: pgid_file.exists() and child_file.exists(), 10, what="the script to start")
    pgid = int(pgid_file.read_text())
    assert pgid not in (os.getpgrp(), daemon.proc.pid)
    assert len(process_group_alive(pgid)) >= 2
    row = wait_reason(daemon.port, "script", "timed out after 1s")
    assert row["reason"] == "timed out after 1s"
    _assert_group_gone(pgid)
    assert daemon.proc.poll() is None


def test_daemon_exit_kills_a_running_exec_check(start_daemon: Any, tmp_path: Path) -> None:
    pgid_file, child_file = _spawn_script(tmp_path)
    check = "exec name=script probes=ready timeout=60s cmd=%s" % (tmp_path / "probe.sh")
    daemon = start_daemon(["--drain-seconds", "200ms", "--check", check])
    wait_for(lambda: pgid_file.exists() and child_file.exists(), 10, what="the script to start")
    pgid = int(pgid_file.read_text())
    assert len(process_group_alive(pgid)) >= 2
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0
    _assert_group_gone(pgid)  # no orphans outlive the daemon


def test_daemon_exit_during_an_exec_poll_prints_no_traceback(start_daemon: Any,
                                                             tmp_path: Path) -> None:
    pgid_file, child_file = _spawn_script(tmp_path)
    check = "exec name=script probes=ready timeout=60s cmd=%s" % (tmp_path / "probe.sh")
    daemon = start_daemon(["--drain-seconds", "100ms", "--check", check])
    wait_for(lambda: pgid_file.exists() and child_file.exists(), 10, what="the script to start")
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=10) == 0
    stderr = daemon.proc.stderr.read().decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    assert all(line.startswith("time=") for line in stderr.splitlines()), stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_daemon_exec_leaves_no_processes_behind_after_many_polls(start_daemon: Any,
                                                                 tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    script = "echo x >> %s; exit 1" % counter
    daemon = start_daemon(["--check", "exec name=script probes=ready %s cmd=%s" % (
        FAST, json.dumps("sh -c %s" % json.dumps(script)))])
    wait_for(lambda: counter.exists() and len(counter.read_text().split()) >= 5, 10,
             what="five polls")
    children = _children_of(daemon.proc.pid)
    # At most the poll running right now (and one exited child not yet reaped).
    assert len(children) <= 2, children
    assert daemon.proc.poll() is None


def _children_of(ppid: int) -> List[Tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as fh:
                stat = fh.read().decode("latin-1")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == ppid:
            out.append((int(entry), fields[0]))
    return out
