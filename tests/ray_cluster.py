"""A real Ray cluster on loopback for tests: start nodes, signal their processes, stop them by PID.

Every node is one `ray start` run under `subprocess.Popen(start_new_session=True)`, so every
process it spawns (GCS, raylet, dashboard, agents, workers) shares one session id, the PID of
that `ray start`. Stopping a node signals exactly the live processes of that session, plus any
process whose command line holds this cluster's private --temp-dir; nothing else. Never
`ray stop`: it kills every Ray process on the machine. Every wait is bounded.

Facts this relies on (Ray 2.60, see tests/fixtures/ray/README.md):
- Node IPs are 127.0.0.2, .3 ...: Ray rewrites 127.0.0.1 to the host's routable address.
- Two nodes on one host need their own dashboard agent port (the agent binds 127.0.0.1 too)
  and metrics port; the head's Ray client port (10001) and the autoscaler and dashboard metrics
  ports (44217, 44227, both 0.0.0.0) are fixed unless set, so they are set to free ports here.
- Workers reuse the head's --temp-dir and session.
- `ray start --block` tears its node down when one of its processes dies: with `--block` on
  the head, killing the GCS takes the dashboard with it (connection refused at once). Without
  `--block`, the dashboard outlives the GCS and its node list hangs, as in the fixtures.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional

RAY_START_TIMEOUT = 90.0  # first start on a cold 2-core machine imports a lot of Python
RAY_STOP_GRACE = 3.0  # after SIGTERM, before SIGKILL (a raylet without its GCS hangs on exit)
RAY_KILL_WAIT = 5.0
RAY_HTTP_TIMEOUT = 2.0
RAY_OBJECT_STORE_BYTES = 100 * 1000 * 1000  # near Ray's minimum; keeps /dev/shm use small
RAY_POLL_PAUSE = 0.25
# The `ray` command of the Python running the tests (a `ray` on PATH may belong to another one).
RAY_CLI = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; "
           "sys.argv[0] = 'ray'; sys.exit(main())"]


def ray_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now on `host`."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def proc_stat(pid: int) -> Optional[List[str]]:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def proc_cmdline(pid: int) -> List[str]:
    """argv of a process ([] if it is gone or a zombie)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def proc_alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def live_pids(session: int, marker: Optional[str] = None) -> List[int]:
    """Live processes in `session`, or whose command line contains `marker` (the temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        stat = proc_stat(pid)
        if stat is None or stat[0] == "Z":
            continue
        if int(stat[3]) == session or (
                marker is not None and any(marker in arg for arg in proc_cmdline(pid))):
            found.append(pid)
    return sorted(found)


def wait_until(what: str, probe: Callable[[], Any], timeout: float,
               pause: float = RAY_POLL_PAUSE) -> Any:
    """Call `probe` until it returns something truthy; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except Exception as exc:  # a probe that raises is "not yet"
            last = exc
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("%s: not within %gs (last: %r)" % (what, timeout, last))
        time.sleep(pause)


_RAY_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = RAY_HTTP_TIMEOUT) -> Any:
    """(status, body text) of a GET, never through a proxy; HTTP errors are answers too."""
    try:
        with _RAY_NO_PROXY.open(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


class RayNode:
    """One `ray start`: its session (= the PID of `ray start`) and its ports."""

    def __init__(self, name: str, ip: str, proc: "subprocess.Popen[bytes]", agent_port: int,
                 log_path: str) -> None:
        self.name, self.ip, self.proc = name, ip, proc
        self.session = proc.pid
        self.agent_port = agent_port
        self.log_path = log_path

    @property
    def agent_url(self) -> str:
        return "http://127.0.0.1:%d" % self.agent_port

    def pids(self) -> List[int]:
        """Live processes of this node: its session (workers share the temp dir, so no marker)."""
        return live_pids(self.session)

    def pid_of(self, program: str) -> int:
        """PID of this node's process whose executable is named `program` (raylet, gcs_server)."""
        for pid in self.pids():
            argv = proc_cmdline(pid)
            if argv and os.path.basename(argv[0]) == program:
                return pid
        raise AssertionError("%s: no live %s process in session %d" % (
            self.name, program, self.session))

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""


class RayCluster:
    """A head (with dashboard) and workers on 127.0.0.x, in a private temp dir."""

    def __init__(self, temp_root: str = "/tmp") -> None:
        # short: Ray puts unix sockets under it and socket paths are limited to 107 bytes
        self.temp_dir = tempfile.mkdtemp(prefix="pr-ray-", dir=temp_root)
        self.nodes: List[RayNode] = []
        self.head: Optional[RayNode] = None
        self.gcs_port = 0
        self.dashboard_url = ""

    def __enter__(self) -> "RayCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()

    @property
    def gcs_address(self) -> str:
        return "%s:%d" % (self.head.ip if self.head else "?", self.gcs_port)

    def _start(self, name: str, ip: str, args: List[str], block: bool,
               env: Optional[Dict[str, str]] = None) -> RayNode:
        agent_port = ray_free_port()
        log_path = os.path.join(self.temp_dir, "ray-start-%s.log" % name)
        cmd = RAY_CLI + [
            "start", "--node-ip-address=" + ip, "--temp-dir=" + self.temp_dir,
            "--dashboard-agent-listen-port=%d" % agent_port,
            "--metrics-export-port=%d" % ray_free_port(), "--num-cpus=1", "--num-gpus=1",
            "--object-store-memory=%d" % RAY_OBJECT_STORE_BYTES, "--disable-usage-stats"]
        cmd += args + (["--block"] if block else [])
        full_env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **(env or {}))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=full_env,
                                    start_new_session=True)
        node = RayNode(name, ip, proc, agent_port, log_path)
        self.nodes.append(node)
        if not block:  # `ray start` returns once its node runs
            wait_until("%s: ray start to return" % name, lambda: proc.poll() is not None,
                       RAY_START_TIMEOUT)
            if proc.returncode:
                raise AssertionError("%s: ray start exited %s:\n%s" % (
                    name, proc.returncode, node.log_tail()))
        return node

    def start_head(self, ip: str = "127.0.0.2", block: bool = False) -> RayNode:
        """Start the head with its dashboard on `ip`; returns once it lists itself ALIVE."""
        self.gcs_port = ray_free_port()
        dashboard_port = ray_free_port(ip)
        args = ["--head", "--port=%d" % self.gcs_port, "--dashboard-host=" + ip,
                "--dashboard-port=%d" % dashboard_port,
                "--ray-client-server-port=%d" % ray_free_port()]
        env = {"AUTOSCALER_METRIC_PORT": str(ray_free_port()),
               "DASHBOARD_METRIC_PORT": str(ray_free_port())}
        self.dashboard_url = "http://%s:%d" % (ip, dashboard_port)
        self.head = self._start("head", ip, args, block, env)
        self.wait_joined(self.head)
        return self.head

    def start_worker(self, ip: str, name: str = "", block: bool = True) -> RayNode:
        """Start a worker joining the head; returns once the cluster lists it ALIVE."""
        node = self._start(name or "worker-" + ip, ip, ["--address=" + self.gcs_address], block)
        self.wait_joined(node)
        return node

    def alive_ips(self) -> List[str]:
        """IPs of ALIVE nodes per the dashboard's state API."""
        status, body = http_get(self.dashboard_url + "/api/v0/nodes?detail=1")
        nodes = json.loads(body)["data"]["result"]["result"] if status == 200 else []
        return sorted(n["node_ip"] for n in nodes if n["state"] == "ALIVE")

    def wait_joined(self, node: RayNode) -> None:
        """Bounded wait until `node` is ALIVE in the cluster and its agent says healthy."""
        def joined() -> bool:
            if node.proc.poll() not in (None, 0):
                raise AssertionError("%s: ray start exited %s:\n%s" % (
                    node.name, node.proc.returncode, node.log_tail()))
            return node.ip in self.alive_ips() and \
                http_get(node.agent_url + "/api/healthz")[0] == 200
        try:
            wait_until("%s to join" % node.name, joined, RAY_START_TIMEOUT, pause=0.5)
        except AssertionError as exc:
            raise AssertionError("%s\n%s" % (exc, node.log_tail())) from None

    def signal_process(self, node: RayNode, program: str, signum: int) -> int:
        """Send `signum` to `node`'s `program` process (raylet, gcs_server); returns its PID."""
        pid = node.pid_of(program)
        os.kill(pid, signum)
        return pid

    def stop_node(self, node: RayNode) -> None:
        """SIGTERM the node's live processes, SIGKILL what is left, reap `ray start`."""
        _signal_pids(node.pids(), signal.SIGTERM)
        try:
            wait_until("%s to stop" % node.name, lambda: not node.pids(), RAY_STOP_GRACE)
        except AssertionError:
            _signal_pids(node.pids(), signal.SIGKILL)
            wait_until("%s to die" % node.name, lambda: not node.pids(), RAY_KILL_WAIT)
        if node.proc.poll() is None:
            node.proc.kill()
        node.proc.wait(timeout=RAY_KILL_WAIT)

    def stop_all(self) -> None:
        """Stop every node (workers first), then anything left holding the temp dir; clean up."""
        for node in reversed(self.nodes):
            try:
                self.stop_node(node)
            except AssertionError:
                pass  # one stubborn node must not leave the others running; checked below
        left = live_pids(-1, self.temp_dir)
        _signal_pids(left, signal.SIGKILL)
        wait_until("every process of %s to die" % self.temp_dir,
                   lambda: not live_pids(-1, self.temp_dir) and
                   not any(n.pids() for n in self.nodes), RAY_KILL_WAIT)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _signal_pids(pids: List[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
