"""The Ray checks against a REAL Ray cluster on loopback, and through a running probed daemon.

Head on 127.0.0.2 with its dashboard, one worker on 127.0.0.3, `--num-gpus=1` each. Faults are
real signals to the real processes: SIGTERM the worker's raylet (what a pod deletion does),
start a worker again (re-join: a new node ID, the old one stays listed DEAD), SIGKILL the GCS.
The checks are polled directly (observe + judge, as the engine does) to measure each fault's
time to fail, and a probed daemon runs the same `ray` check, so the group replies are checked
too, including that every probe is still answered at once while the GCS is gone.
Processes are started and stopped by PID (tests/ray_cluster.py), never with `ray stop`.
"""

import asyncio
import http.client
import importlib.util
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed (CI: pip install 'ray[default]')", allow_module_level=True)

from ray_cluster import RayCluster, wait_until  # noqa: E402 (tests/ is on sys.path)

from probed.checks import CHECK_KINDS
from probed.checks.base import Check, CheckSpec  # noqa: E402
from probed.checks.ray import RAY_NO_DASHBOARD_NOTE  # noqa: E402 (registers the ray kinds)

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
INTERVAL = 1.0  # between polls, here and in the daemon
DEADLINE = 2.0  # the checks' timeout (the `ray` kind's default)
FAULT_POLLS = 30  # bound on polls waiting for a fault (SIGTERM shows DEAD in ~0.2 s)
PROBE_TIMEOUT = 1.0  # a probe reply slower than this would mean the reply waited on Ray
PROBE_PATHS = ("/livez", "/readyz", "/startupz", "/readyz?verbose", "/readyz?format=json")


def make_check(kind: str, **params: Any) -> Check:
    cls = CHECK_KINDS[kind]
    full = {key: param.default for key, param in cls.params.items()}
    full.update(params)
    return cls(CheckSpec(kind, kind, cls.default_probes, INTERVAL, DEADLINE, 1, 1, 10.0, full))


def poll(check: Check) -> Tuple[bool, str]:
    """One observation under the deadline, judged, as the engine would."""
    async def run() -> Any:
        return await asyncio.wait_for(check.observe(), DEADLINE + 0.5)
    obs = asyncio.run(run())
    return check.judge(obs, check.config, True)


def poll_until(check: Check, want: bool, since: float, limit: int = FAULT_POLLS
               ) -> Tuple[int, float, str]:
    """Poll every INTERVAL until the verdict is `want`: (polls, seconds since `since`, reason)."""
    for polls in range(1, limit + 1):
        started = time.monotonic()
        ok, reason = poll(check)
        if ok == want:
            return polls, time.monotonic() - since, reason
        time.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))
    raise AssertionError("%s did not %s within %d polls (last: %s)" % (
        check.kind, "pass" if want else "fail", limit, reason))


def get(port: int, path: str, timeout: float = PROBE_TIMEOUT) -> Tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def report(fault: str, polls: int, seconds: float, reason: str) -> None:
    print("\nray-e2e: %-28s failed after %5.2fs (poll %d): %s" % (fault, seconds, polls, reason))


class ProbeWatcher(threading.Thread):
    """Hits every probe path of the daemon until stopped; notes errors and when /readyz is 503."""

    def __init__(self, port: int, since: float) -> None:
        super().__init__(daemon=True)
        self.port, self.since = port, since
        self.stop_flag = threading.Event()
        self.rounds = 0
        self.errors: List[str] = []
        self.first_503 = None  # type: Any

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for path in PROBE_PATHS:
                try:
                    status, _ = get(self.port, path)
                except OSError as exc:
                    self.errors.append("%s: %r" % (path, exc))
                    continue
                if path == "/readyz" and status == 503 and self.first_503 is None:
                    self.first_503 = time.monotonic() - self.since
            self.rounds += 1
            time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster() -> Any:
    with RayCluster() as ray_cluster:
        # No --block on the head: the dashboard then outlives a killed GCS and its node list
        # hangs, the case the deadline exists for (with --block, `ray start` tears it all down).
        ray_cluster.start_head("127.0.0.2", block=False)
        ray_cluster.start_worker("127.0.0.3", name="worker")
        yield ray_cluster


@pytest.fixture
def daemon(cluster: RayCluster, start_daemon: Any, tmp_path: Path) -> Any:
    # Registers the ray kinds itself, so this test does not depend on probed/checks/__init__.py
    # (test_ray_checks.py::test_cli_knows_the_ray_kinds covers that wiring).
    launcher = tmp_path / "probed_with_ray.py"
    launcher.write_text("import sys\nsys.path.insert(0, %r)\nimport probed.checks.ray\n"
                        "from probed.cli import main\nraise SystemExit(main())\n" % str(REPO))
    check = "ray url=%s nodes=2 gpus=2 interval=1s timeout=2s" % cluster.dashboard_url
    return start_daemon(["--check", check], script=str(launcher))


def test_ray_checks_follow_a_real_cluster(cluster: RayCluster, daemon: Any) -> None:
    ray = make_check("ray", url=cluster.dashboard_url, nodes=2, gpus=2)
    worker = cluster.nodes[-1]
    assert poll(ray) == (True, "2 nodes alive (need 2), 2 GPUs (need 2)")
    assert poll(make_check("ray-agent", url=worker.agent_url)) == (True, "")
    assert poll(make_check("ray-agent", url=cluster.head.agent_url)) == (True, "")
    gcs = make_check("ray-gcs", addr=("127.0.0.2", cluster.gcs_port))
    assert poll(gcs) == (True, RAY_NO_DASHBOARD_NOTE)
    wait_until("daemon ready", lambda: get(daemon.port, "/readyz")[0] == 200, 30)
    status, body = get(daemon.port, "/readyz?verbose")
    assert status == 200 and "[+]ray ok" in body

    _sigterm_worker_raylet(cluster, worker, ray, daemon.port)
    _rejoin_worker(cluster, ray, daemon.port)
    _sigkill_gcs(cluster, ray, gcs, daemon.port)


def _sigterm_worker_raylet(cluster: RayCluster, worker: Any, ray: Check, port: int) -> None:
    agent = make_check("ray-agent", url=worker.agent_url)
    since = time.monotonic()
    cluster.signal_process(worker, "raylet", signal.SIGTERM)
    polls, seconds, reason = poll_until(agent, False, since)
    report("raylet SIGTERM (ray-agent)", polls, seconds, reason)
    # the agent goes down with its raylet: refused, or caught mid-shutdown a 503 "Local Raylet
    # failed" or a connection closed without a reply; any of them fails the check
    assert reason.startswith(("agent HTTP 503: raylet: ", "agent %s" % worker.agent_url)), reason
    polls, seconds, reason = poll_until(ray, False, since)
    report("raylet SIGTERM (ray)", polls, seconds, reason)
    assert reason == "1/2 nodes alive, 1/2 GPUs on 1 alive nodes; dead: 127.0.0.3 " \
                     "(Expected termination: received SIGTERM)"
    wait_until("daemon to fail ready", lambda: get(port, "/readyz")[0] == 503, 15, pause=0.05)
    print("ray-e2e: raylet SIGTERM (daemon /readyz)  503 after %.2fs" % (time.monotonic() - since))
    status, body = get(port, "/readyz?verbose")
    assert status == 503 and "[-]ray failed: 1/2 nodes alive" in body and "127.0.0.3" in body
    # a per-request override re-judges the cached observation without asking Ray
    assert get(port, "/readyz?ray.nodes=1&ray.gpus=1")[0] == 200


def _rejoin_worker(cluster: RayCluster, ray: Check, port: int) -> None:
    old = cluster.nodes[-1]
    cluster.stop_node(old)  # its `ray start --block` outlives the raylet: the pod is replaced
    since = time.monotonic()
    new = cluster.start_worker("127.0.0.3", name="worker-again")
    joined = time.monotonic() - since
    polls, seconds, reason = poll_until(ray, True, since)
    assert reason == "2 nodes alive (need 2), 2 GPUs (need 2)"
    print("ray-e2e: re-join: worker ALIVE %.2fs after ray start, check passes at %.2fs (poll %d)"
          % (joined, seconds, polls))
    obs_detail = _observe_detail(ray)
    assert obs_detail["dead_total"] == 1 and obs_detail["dead"] == []  # the old entry stays
    assert poll(make_check("ray-agent", url=new.agent_url)) == (True, "")
    wait_until("daemon ready again", lambda: get(port, "/readyz")[0] == 200, 15)


def _observe_detail(check: Check) -> Dict[str, Any]:
    async def run() -> Any:
        return await asyncio.wait_for(check.observe(), DEADLINE + 0.5)
    return asyncio.run(run()).detail


def _sigkill_gcs(cluster: RayCluster, ray: Check, gcs: Check, port: int) -> None:
    since = time.monotonic()
    watcher = ProbeWatcher(port, since)
    watcher.start()
    try:
        cluster.signal_process(cluster.head, "gcs_server", signal.SIGKILL)
        polls, seconds, reason = poll_until(ray, False, since)
        report("GCS SIGKILL (ray)", polls, seconds, reason)
        # within deadline + interval: the first poll after the kill fails, or the second
        assert polls <= 2, reason
        assert reason.startswith(("GCS unhealthy: HTTP 503", "node list did not answer")), reason
        polls, seconds, reason = poll_until(gcs, False, since)
        report("GCS SIGKILL (ray-gcs, after)", polls, seconds, reason)
        assert reason.endswith("connection refused")
        # keep probing for more than one whole deadline of the daemon's own poll
        wait_until("daemon to fail ready", lambda: watcher.first_503 is not None, 15)
        time.sleep(max(0.0, since + DEADLINE + INTERVAL - time.monotonic()))
    finally:
        watcher.stop_flag.set()
        watcher.join(timeout=10)
    print("ray-e2e: GCS SIGKILL (daemon /readyz)     503 after %.2fs; %d rounds of %d probe paths, "
          "%d errors" % (watcher.first_503, watcher.rounds, len(PROBE_PATHS), len(watcher.errors)))
    assert watcher.errors == []  # every probe answered within PROBE_TIMEOUT throughout
    assert watcher.rounds >= 3
    status, body = get(port, "/readyz?verbose")
    assert status == 503 and ("GCS unhealthy" in body or "node list did not answer" in body)
