"""Lifecycle truth against the vLLM simulator: restarts, hard evidence, fast start, start-up
phases, and the preStop /wait-for-drain (DESIGN §3 "Groups and lifecycle", issue 11)."""

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest
from conftest import REPO, free_port, wait_listening

pytestmark = pytest.mark.slow


class Sim:
    """`probed sim` in a subprocess, driven over its control port."""

    def __init__(self, state: str = "ready", *extra: str) -> None:
        self.port, self.control = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "probed", "sim", "--port", str(self.port), "--control-port",
             str(self.control), "--state", state, "--dead-exit-after", "2"] + list(extra),
            cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening("127.0.0.1", self.control)
        self.url = "http://127.0.0.1:%d" % self.port

    def set(self, state: str, **params: object) -> None:
        query = "&".join("%s=%s" % kv for kv in params.items())
        status, body = http_get(self.control, "/_sim/state/%s%s" % (
            state, "?" + query if query else ""), method="POST")
        assert status == 200, body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


def http_get(port: int, path: str, method: str = "GET", timeout: float = 5.0) -> Tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def wait_for(predicate, timeout: float, step: float = 0.05) -> float:
    """Seconds until predicate() is true; fails the test after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError("condition not met within %ss" % timeout)


@pytest.fixture
def sim():
    sims: List[Sim] = []

    def make(state: str = "ready", *extra: str) -> Sim:
        sims.append(Sim(state, *extra))
        return sims[-1]

    yield make
    for s in sims:
        s.stop()


def codes(port: int) -> Dict[str, int]:
    return {p: http_get(port, "/" + p)[0] for p in ("livez", "readyz", "startupz")}


def test_restart_unlatches_started_keeps_live_and_logs_once(sim, start_daemon):
    s = sim("ready")
    d = start_daemon(["--vllm", s.url, "--interval", "0.3s", "--stall-after", "1s"])
    wait_for(lambda: codes(d.port) == {"livez": 200, "readyz": 200, "startupz": 200}, 15)
    s.set("busy")
    time.sleep(1.0)
    s.set("restart", seconds=3)
    seen_startupz: List[int] = []
    seen_livez: List[int] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:  # the reload: port refused
        seen_livez.append(http_get(d.port, "/livez")[0])
        seen_startupz.append(http_get(d.port, "/startupz")[0])
        time.sleep(0.05)
    assert set(seen_livez) == {200}, "live must hold while the backend reloads"
    assert seen_startupz[-1] == 503, "startup must be probed again after a restart"
    status, body = http_get(d.port, "/startupz?verbose")
    assert status == 503 and "loading for" in body and "refused" in body
    wait_for(lambda: http_get(d.port, "/startupz")[0] == 200, 15)
    wait_for(lambda: http_get(d.port, "/livez")[0] == 200, 5)
    log = d.stderr_text()
    assert log.count('msg="backend restarted"') == 1
    assert "stalled" not in log, "a counter reset is not a stall"


def test_restart_faster_than_one_poll_is_caught_by_the_start_time(sim, start_daemon):
    s = sim("ready")
    d = start_daemon(["--vllm", s.url, "--interval", "0.5s"])
    wait_for(lambda: http_get(d.port, "/startupz")[0] == 200, 15)
    # started can come before the process check's first reading: a start time never learned
    # cannot be seen to change, so wait until probed knows the first one
    wait_for(lambda: json.loads(http_get(d.port, "/startupz?format=json")[1])["incarnation"]
             is not None, 10)
    first = json.loads(http_get(d.port, "/startupz?format=json")[1])["incarnation"]
    s.set("restart", seconds=0)  # never refuses: only process_start_time_seconds changes
    wait_for(lambda: json.loads(http_get(d.port, "/startupz?format=json")[1])["incarnation"]
             not in (first, None), 10)
    log_ready = d.stderr_text()
    restarts = [l for l in log_ready.splitlines() if 'msg="backend restarted"' in l]
    assert restarts and "process start time changed" in restarts[0], restarts


def test_engine_dead_fails_live_on_the_first_poll_despite_fail_after(sim, start_daemon):
    s = sim("ready")
    d = start_daemon(["--check", "http name=health url=%s/health probes=live,started hard=503 "
                      "fail-after=3 interval=0.3s" % s.url])
    wait_for(lambda: http_get(d.port, "/livez")[0] == 200 and
             http_get(d.port, "/startupz")[0] == 200, 10)
    s.set("dead", exit_after=30)
    wait_for(lambda: http_get(d.port, "/livez")[0] == 503, 5)
    doc = json.loads(http_get(d.port, "/livez?format=json")[1])
    health = doc["checks"][0]
    assert health["status"] == "fail" and health["consecutive"] == 1
    assert health["reason"].startswith("HTTP 503")


def test_fast_start_turns_ready_long_before_the_interval(sim, start_daemon):
    s = sim("loading")
    d = start_daemon(["--vllm", s.url, "--interval", "10s", "--start-interval", "0.3s"])
    time.sleep(1.0)
    assert http_get(d.port, "/startupz")[0] == 503
    s.set("ready")
    took = wait_for(lambda: http_get(d.port, "/startupz")[0] == 200, 9)
    assert took < 5, "started should follow the backend within start-interval + a poll"
    wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 9)


def test_startup_phases_in_json(sim, start_daemon):
    s = sim("loading")
    d = start_daemon(["--vllm", s.url, "--interval", "0.3s", "--inference-timeout", "1s"])
    phase = lambda: json.loads(http_get(d.port, "/startupz?format=json")[1])["phase"]  # noqa
    wait_for(lambda: phase() == "loading", 5)
    s.set("stalled")  # healthy, models listed, but a completion hangs: warming
    wait_for(lambda: phase() == "warming", 8)
    doc = json.loads(http_get(d.port, "/startupz?format=json")[1])
    assert doc["phase_since"] and doc["status"] == "fail"
    s.set("ready")
    wait_for(lambda: phase() == "started", 8)


def admin_daemon(start_daemon, sim_url: Optional[str], *extra: str):
    admin = free_port()
    args = ["--admin-addr", "127.0.0.1:%d" % admin, "--interval", "0.3s"]
    if sim_url:
        args += ["--vllm", sim_url]
    d = start_daemon(args + list(extra))
    wait_listening("127.0.0.1", admin)
    return d, admin


def test_wait_for_drain_returns_when_requests_finish(sim, start_daemon):
    s = sim("busy")
    d, admin = admin_daemon(start_daemon, s.url)
    wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 15)
    threading.Timer(2.0, lambda: s.set("ready")).start()
    t0 = time.monotonic()
    status, body = http_get(admin, "/wait-for-drain?timeout=20s", timeout=30)
    took = time.monotonic() - t0
    assert status == 200 and body.startswith("drained after"), body
    assert 1.5 < took < 15, "returns when the requests finish, not at the timeout"
    assert http_get(d.port, "/readyz?verbose")[1].rstrip().endswith("draining")


def test_wait_for_drain_times_out_and_says_so(sim, start_daemon):
    s = sim("stalled")
    d, admin = admin_daemon(start_daemon, s.url)
    status, body = http_get(admin, "/wait-for-drain?timeout=1500ms", timeout=20)
    assert status == 200 and body.startswith("timed out after") and "in flight" in body, body
    assert http_get(d.port, "/readyz")[0] == 503


def test_wait_for_drain_without_inflight_check_returns_at_once(start_daemon):
    d, admin = admin_daemon(start_daemon, None)
    status, body = http_get(admin, "/wait-for-drain?timeout=30s", timeout=5)
    assert status == 200 and "no inflight check configured" in body


def test_wait_for_drain_is_not_on_the_probe_port(start_daemon):
    d, _ = admin_daemon(start_daemon, None)
    assert http_get(d.port, "/wait-for-drain")[0] == 404


def test_sigterm_during_a_wait_lets_it_complete(sim, start_daemon):
    s = sim("stalled")
    d, admin = admin_daemon(start_daemon, s.url, "--drain-seconds", "0")
    result: Dict[str, object] = {}

    def call() -> None:
        result["reply"] = http_get(admin, "/wait-for-drain?timeout=20s", timeout=30)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)
    d.signal(signal.SIGTERM)
    time.sleep(1.0)
    assert d.proc.poll() is None, "probed must not exit while a wait is open"
    s.set("ready")
    caller.join(timeout=15)
    status, body = result["reply"]  # type: ignore[misc]
    assert status == 200 and body.startswith("drained after"), body
    assert d.proc.wait(timeout=10) == 0


def test_a_prestop_drain_ends_when_the_server_restarts(sim, start_daemon):
    # The kubelet runs preStop before restarting a failed server container too: the new
    # process must be able to turn ready, so the drain is over once a restart is seen.
    s = sim("ready")
    d, admin = admin_daemon(start_daemon, s.url)
    wait_for(lambda: http_get(d.port, "/startupz")[0] == 200, 15)
    s.set("stalled")
    status, body = http_get(admin, "/wait-for-drain?timeout=500ms", timeout=20)
    assert status == 200 and http_get(d.port, "/readyz?verbose")[1].rstrip().endswith("draining")
    s.set("restart", seconds=1)
    wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 20)


def test_an_admin_drain_survives_a_restart(sim, start_daemon):
    s = sim("ready")
    d, admin = admin_daemon(start_daemon, s.url)
    wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 15)
    assert http_get(admin, "/drain", method="POST")[0] == 200
    first = json.loads(http_get(d.port, "/startupz?format=json")[1])["incarnation"]
    s.set("restart", seconds=1)
    wait_for(lambda: json.loads(http_get(d.port, "/startupz?format=json")[1])["incarnation"]
             not in (first, None) and http_get(d.port, "/startupz")[0] == 200, 20)
    status, body = http_get(d.port, "/readyz?verbose")
    assert status == 503 and "draining (admin)" in body


def test_a_restart_wakes_pollers_that_sleep_a_long_interval(sim, start_daemon):
    s = sim("ready")
    d = start_daemon(["--vllm", s.url, "--interval", "0.3s", "--inference-every", "60s"])
    wait_for(lambda: http_get(d.port, "/startupz")[0] == 200, 15)
    time.sleep(1.0)  # the inference check is now asleep for about a minute
    s.set("restart", seconds=1)
    wait_for(lambda: http_get(d.port, "/startupz")[0] == 503, 10)
    took = wait_for(lambda: http_get(d.port, "/startupz")[0] == 200, 40)
    assert took < 15, "started came back %.1fs after the restart: pollers kept sleeping" % took
