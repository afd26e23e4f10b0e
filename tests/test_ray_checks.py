"""Ray check kinds against every captured Ray scenario (tests/fixtures/ray), fast and offline.

Pure parts (node summary, judging, agent replies) get the captured bodies directly; `observe()`
gets them from a loopback server that replays each capture: its status and body, a hang where
curl timed out, and a closed port where curl was refused.
"""

import asyncio
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import pytest

from probed.checks import CHECK_KINDS
from probed.checks.base import Check, CheckSpec, Observation
from probed.checks.ray import (
    RAY_NO_DASHBOARD_NOTE,
    judge_ray_cluster,
    ray_agent_verdict,
    ray_gcs_health_problem,
    ray_nodes_summary,
)
from probed.values import ConfigError

RAY_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ray"
HEARTBEATS = "Unexpected termination: health check failed due to missing too many heartbeats"
SIGTERM = "Expected termination: received SIGTERM"
GCS_TIMED_OUT = "Timed out while waiting for GCS to become available."
CHECK_TIMEOUT = 0.5  # short, so replayed hangs end quickly

Route = Union[Tuple[int, bytes], str]  # (status, body) or "hang"


def capture(scenario: str, endpoint: str) -> Tuple[int, int, bytes]:
    """(HTTP code, curl exit code, body) of one captured request."""
    base = RAY_FIXTURES / scenario / endpoint
    meta = json.loads((base.with_suffix(".meta")).read_text())
    body_path = base.with_suffix(".json")
    body = body_path.read_bytes() if body_path.exists() else b""
    if "http_code" not in meta:  # 07 keeps curl's own line: "curl: (7) Failed ... 000 0.0001"
        match = re.match(r"curl: \((\d+)\).* (\d{3}) [0-9.]+$", meta["result"])
        assert match, meta
        return int(match.group(2)), int(match.group(1)), body
    return meta["http_code"], meta["curl_exit"], body


def replay(scenario: str, endpoint: str) -> Route:
    """A loopback route that behaves like the capture; refused captures need a closed port."""
    code, curl_exit, body = capture(scenario, endpoint)
    if code:
        return (code, body)
    if curl_exit == 28:
        return "hang"
    raise AssertionError("%s/%s was refused (curl exit %d): use a closed port" % (
        scenario, endpoint, curl_exit))


def nodes_payload(scenario: str) -> Any:
    code, _, body = capture(scenario, "dash_api_v0_nodes_detail")
    assert code == 200
    return json.loads(body)


class ReplayServer:
    """A loopback HTTP/1.1 server answering by path (query ignored); records what was asked."""

    def __init__(self, routes: Dict[str, Route]) -> None:
        self.routes = routes
        self.requests: List[str] = []
        self.heads: List[str] = []  # raw request heads, to see the headers sent
        self.port = 0
        self._server: Any = None
        self._release = asyncio.Event()
        self._writers: List[asyncio.StreamWriter] = []

    async def __aenter__(self) -> "ReplayServer":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._release.set()
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.sleep(0)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            writer.close()
            return
        target = head.split(b" ")[1].decode()
        self.requests.append(target)
        self.heads.append(head.decode("latin-1"))
        route = self.routes.get(target.split("?")[0], (404, b"404: Not Found"))
        if route == "hang":
            await self._release.wait()
        else:
            status, body = route
            writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/text\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (
                             status, len(body), body))
            await writer.drain()
        writer.close()


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_check(kind: str, **params: Any) -> Check:
    """A check as the config layer builds it: every key present, defaults filled in."""
    cls = CHECK_KINDS[kind]
    full = {key: param.default for key, param in cls.params.items()}
    full.update(params)
    spec = CheckSpec(kind, kind, cls.default_probes, 1.0, CHECK_TIMEOUT, 1, 1, 10.0, full)
    return cls(spec)


def observe(check: Check) -> Observation:
    """One poll under the check's deadline, as the engine runs it."""
    async def run() -> Observation:
        return await asyncio.wait_for(check.observe(), check.spec.timeout + 1.0)
    return asyncio.run(run())


def observe_served(kind: str, routes: Dict[str, Route], **params: Any
                   ) -> Tuple[Check, Observation, List[str]]:
    async def run() -> Tuple[Check, Observation, List[str]]:
        async with ReplayServer(routes) as server:
            check = make_check(kind, url=server.url, **params)
            obs = await asyncio.wait_for(check.observe(), CHECK_TIMEOUT + 1.0)
            return check, obs, server.requests
    return asyncio.run(run())


def judged(check: Check, obs: Observation, **overrides: Any) -> Tuple[bool, str]:
    config = dict(check.config)
    config.update(overrides)
    return check.judge(obs, config, True)


# --- the node list: count ALIVE only, name the dead that matter -----------------------------

SUMMARIES = [
    # scenario, ALIVE ips, GPUs on them, dead ips named (newest first), first dead message
    ("01_healthy_head_plus_2_workers", ["127.0.0.2", "127.0.0.3", "127.0.0.4"], 3, [], None),
    ("02_worker1_raylet_sigkill", ["127.0.0.2", "127.0.0.4"], 2, ["127.0.0.3"], HEARTBEATS),
    ("03_worker2_raylet_sigstop_hang", ["127.0.0.2"], 1, ["127.0.0.4", "127.0.0.3"], HEARTBEATS),
    ("04_workers_restarted_rejoined", ["127.0.0.2", "127.0.0.3", "127.0.0.4"], 3, [], None),
    ("05_worker2_raylet_sigterm_graceful", ["127.0.0.2", "127.0.0.3"], 2, ["127.0.0.4"],
     SIGTERM),
    ("06a_before_gcs_kill", ["127.0.0.2", "127.0.0.3", "127.0.0.4"], 3, [], None),
]


@pytest.mark.parametrize("scenario,alive,gpus,dead,message", SUMMARIES)
def test_summary_counts_alive_nodes_and_their_gpus(scenario: str, alive: List[str], gpus: int,
                                                   dead: List[str], message: Optional[str]
                                                   ) -> None:
    summary = ray_nodes_summary(nodes_payload(scenario))
    assert sorted(n["ip"] for n in summary["alive"]) == alive
    assert sum(n["gpus"] for n in summary["alive"]) == gpus
    assert [d["ip"] for d in summary["dead"]] == dead
    if message:
        assert summary["dead"][0]["message"] == message
    json.dumps(summary)  # detail must be JSON-able


def test_rejoined_nodes_leave_dead_entries_that_do_not_count() -> None:
    payload = nodes_payload("04_workers_restarted_rejoined")
    states = [n["state"] for n in payload["data"]["result"]["result"]]
    assert states.count("DEAD") == 2 and payload["data"]["result"]["total"] == 5
    summary = ray_nodes_summary(payload)
    assert summary["dead_total"] == 2
    assert judge_ray_cluster(summary, 3, 3) == (True, "3 nodes alive (need 3), 3 GPUs (need 3)")
    assert judge_ray_cluster(summary, 4, 0) == (False, "3/4 nodes alive")


def test_sigterm_names_the_newest_death_of_an_ip_not_an_older_one() -> None:
    # 127.0.0.4 died twice (heartbeats, then SIGTERM after re-joining): the reason shows the last.
    summary = ray_nodes_summary(nodes_payload("05_worker2_raylet_sigterm_graceful"))
    assert judge_ray_cluster(summary, 3, 3) == (
        False, "2/3 nodes alive, 2/3 GPUs on 2 alive nodes; dead: 127.0.0.4 (%s)" % SIGTERM)


def test_killed_worker_reason_names_node_and_ray_message() -> None:
    summary = ray_nodes_summary(nodes_payload("02_worker1_raylet_sigkill"))
    assert judge_ray_cluster(summary, 3, 0) == (
        False, "2/3 nodes alive; dead: 127.0.0.3 (%s)" % HEARTBEATS)
    assert judge_ray_cluster(summary, 2, 3) == (
        False, "2/3 GPUs on 2 alive nodes; dead: 127.0.0.3 (%s)" % HEARTBEATS)
    assert judge_ray_cluster(summary, 2, 2) == (True, "2 nodes alive (need 2), 2 GPUs (need 2)")


def test_hung_raylet_once_declared_dead_lists_both_dead_workers() -> None:
    summary = ray_nodes_summary(nodes_payload("03_worker2_raylet_sigstop_hang"))
    ok, reason = judge_ray_cluster(summary, 3, 3)
    assert not ok
    assert reason == "1/3 nodes alive, 1/3 GPUs on 1 alive nodes; dead: 127.0.0.4 (%s), " \
        "127.0.0.3 (%s)" % (HEARTBEATS, HEARTBEATS)


def test_many_dead_nodes_are_counted_not_all_named() -> None:
    nodes = [{"node_id": "n%d" % i, "node_ip": "10.0.0.%d" % i, "state": "DEAD",
              "state_message": "gone", "end_time_ms": i, "resources_total": {"GPU": 8.0}}
             for i in range(1, 6)]
    nodes.append({"node_id": "h", "node_ip": "10.0.0.100", "state": "ALIVE",
                  "resources_total": {"CPU": 4.0}, "is_head_node": True})
    payload = {"result": True, "data": {"result": {"total": 6, "result": nodes}}}
    ok, reason = judge_ray_cluster(ray_nodes_summary(payload), 2, 0)
    assert (ok, reason) == (False, "1/2 nodes alive; dead: 10.0.0.5 (gone), 10.0.0.4 (gone), "
                                   "10.0.0.3 (gone) and 2 more")


def test_truncated_node_list_says_so() -> None:
    payload = nodes_payload("02_worker1_raylet_sigkill")
    payload["data"]["result"]["total"] = 20000
    ok, reason = judge_ray_cluster(ray_nodes_summary(payload), 3, 0)
    assert not ok and reason.endswith("(node list truncated: 3 of 20000)")


@pytest.mark.parametrize("payload", [
    [], {"data": {}}, {"data": {"result": {"result": "x"}}}, "success",
    {"data": {"result": {"result": ["x"]}}},
    {"result": False, "msg": "Given limit 100000 exceeds the supported limit 10000.",
     "data": {"result": None}},
])
def test_summary_rejects_what_is_not_a_node_list(payload: Any) -> None:
    with pytest.raises(ValueError):
        ray_nodes_summary(payload)


# --- GCS health ------------------------------------------------------------------------------

def test_gcs_health_success_and_503() -> None:
    code, _, body = capture("01_healthy_head_plus_2_workers", "dash_api_gcs_healthz")
    assert ray_gcs_health_problem(code, body) == ""
    code, _, body = capture("06b_gcs_sigkill_plus5s", "dash_api_gcs_healthz")
    assert ray_gcs_health_problem(code, body) == (
        "GCS unhealthy: HTTP 503: Health check failed: " + GCS_TIMED_OUT)
    assert ray_gcs_health_problem(200, b"nope") == "GCS unhealthy: HTTP 200: nope"


# --- the `ray` check end to end over loopback, one captured scenario each ----------------------

def dashboard_routes(scenario: str) -> Dict[str, Route]:
    return {"/api/gcs_healthz": replay(scenario, "dash_api_gcs_healthz"),
            "/api/v0/nodes": replay(scenario, "dash_api_v0_nodes_detail"),
            # present so that reading them would go unnoticed if the check did: it must not
            "/nodes": replay(scenario, "dash_nodes_view_summary")}


@pytest.mark.parametrize("scenario,nodes,gpus,ok,reason", [
    ("01_healthy_head_plus_2_workers", 3, 3, True, "3 nodes alive (need 3), 3 GPUs (need 3)"),
    ("02_worker1_raylet_sigkill", 3, 3, False,
     "2/3 nodes alive, 2/3 GPUs on 2 alive nodes; dead: 127.0.0.3 (%s)" % HEARTBEATS),
    ("03_worker2_raylet_sigstop_hang", 2, 0, False,
     "1/2 nodes alive; dead: 127.0.0.4 (%s), 127.0.0.3 (%s)" % (HEARTBEATS, HEARTBEATS)),
    ("04_workers_restarted_rejoined", 3, 3, True, "3 nodes alive (need 3), 3 GPUs (need 3)"),
    ("05_worker2_raylet_sigterm_graceful", 3, 2, False, "2/3 nodes alive; dead: 127.0.0.4 (%s)"
     % SIGTERM),
    ("06a_before_gcs_kill", 3, 3, True, "3 nodes alive (need 3), 3 GPUs (need 3)"),
])
def test_ray_check_on_captured_cluster(scenario: str, nodes: int, gpus: int, ok: bool,
                                       reason: str) -> None:
    check, obs, requests = observe_served("ray", dashboard_routes(scenario), nodes=nodes,
                                          gpus=gpus)
    assert (obs.ok, obs.reason) == (ok, reason)
    assert judged(check, obs) == (ok, reason)
    assert obs.value == len(obs.detail["alive"])
    assert sorted(r.split("?")[0] for r in requests) == ["/api/gcs_healthz", "/api/v0/nodes"]
    assert any("detail=1" in r for r in requests)
    json.dumps(obs.detail)


def test_overrides_rejudge_the_cached_observation() -> None:
    check, obs, _ = observe_served("ray", dashboard_routes("02_worker1_raylet_sigkill"),
                                   nodes=3, gpus=3)
    assert not obs.ok
    assert judged(check, obs, nodes=2, gpus=2) == (True, "2 nodes alive (need 2), 2 GPUs (need 2)")
    assert judged(check, obs, nodes=check.parse_override("nodes", "2"), gpus=3)[0] is False
    assert check.parse_override("gpus", "8") == 8
    with pytest.raises(ConfigError):
        check.parse_override("url", "http://x")
    with pytest.raises(ConfigError):
        check.parse_override("nodes", "-1")


def test_gcs_killed_plus_5s_fails_on_health_without_waiting_for_the_hung_node_list() -> None:
    # 06b: gcs_healthz 503 at once, /api/v0/nodes hangs until the client gives up.
    routes = dashboard_routes("06b_gcs_sigkill_plus5s")
    assert routes["/api/v0/nodes"] == "hang"
    check, obs, _ = observe_served("ray", routes, nodes=3, gpus=3)
    assert (obs.ok, obs.hard) == (False, True)
    assert obs.reason == "GCS unhealthy: HTTP 503: Health check failed: " + GCS_TIMED_OUT
    assert judged(check, obs, nodes=0, gpus=0) == (False, obs.reason)  # overrides cannot pass it


def test_node_list_hang_is_reported_within_the_deadline() -> None:
    routes = dashboard_routes("06a_before_gcs_kill")
    routes["/api/v0/nodes"] = "hang"
    check, obs, _ = observe_served("ray", routes, nodes=1)
    assert not obs.ok and not obs.hard
    assert obs.reason == "node list did not answer within 0.45s (GCS overloaded or down?)"
    assert judged(check, obs, nodes=0) == (False, obs.reason)


@pytest.mark.parametrize("scenario", ["06c_gcs_sigkill_plus65s", "06d_gcs_sigkill_plus_late",
                                      "07_minimal_ray_no_dashboard"])
def test_dashboard_gone_fails_with_a_hint_for_no_dashboard(scenario: str) -> None:
    code, curl_exit, _ = capture(scenario, "dash_api_gcs_healthz")
    assert (code, curl_exit) == (0, 7)  # refused in every one of these captures
    url = "http://127.0.0.1:%d" % closed_port()
    obs = observe(make_check("ray", url=url, nodes=1))
    assert not obs.ok
    assert obs.reason == ("dashboard %s refused the connection (Ray without a dashboard? "
                          "then use kind ray-gcs addr=HOST:PORT)" % url)


def test_node_list_error_replies_fail_with_what_ray_said() -> None:
    ok_health = (200, b"success")
    routes: Dict[str, Route] = {"/api/gcs_healthz": ok_health,
                                "/api/v0/nodes": (200, b'{"result": false, "msg": "boom"}')}
    _, obs, _ = observe_served("ray", routes)
    assert (obs.ok, obs.reason) == (False, "node list: state API error: boom")
    routes["/api/v0/nodes"] = (500, b"500 Internal Server Error")
    _, obs, _ = observe_served("ray", routes)
    assert (obs.ok, obs.reason) == (False, "node list: HTTP 500: 500 Internal Server Error")
    routes["/api/v0/nodes"] = (401, b"401: Unauthorized")
    _, obs, _ = observe_served("ray", routes)
    assert (obs.ok, obs.reason) == (False, "node list: HTTP 401: 401: Unauthorized "
                                           "(dashboard token auth? set token-file=)")
    routes["/api/v0/nodes"] = (200, b"<html>")
    _, obs, _ = observe_served("ray", routes)
    assert not obs.ok and obs.reason.startswith("node list: ")


def test_dashboard_token_is_sent_on_every_request(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")

    async def run() -> Tuple[Observation, List[str]]:
        async with ReplayServer(dashboard_routes("01_healthy_head_plus_2_workers")) as server:
            check = make_check("ray", url=server.url, nodes=3, **{"token-file": str(token)})
            return await check.observe(), server.heads
    obs, heads = asyncio.run(run())
    assert obs.ok and len(heads) == 2
    assert all("\r\nauthorization: bearer s3cret\r\n" in h.lower() for h in heads)


# --- ray-agent ---------------------------------------------------------------------------------

AGENTS = {"head": "agent_head_52365", "w1": "agent_w1_52366", "w2": "agent_w2_52367"}


@pytest.mark.parametrize("scenario,agent,ok,reason,hard", [
    ("01_healthy_head_plus_2_workers", "head", True, "", False),
    ("01_healthy_head_plus_2_workers", "w1", True, "", False),
    ("02_worker1_raylet_sigkill", "w2", True, "", False),
    ("03_worker2_raylet_sigstop_hang", "w2", False,
     "agent HTTP 503: raylet: Local Raylet failed", True),
    ("04_workers_restarted_rejoined", "w1", True, "", False),
    ("06a_before_gcs_kill", "head", True, "", False),
    # GCS killed: the head agent says so; workers' agents still say success (slowly)
    ("06b_gcs_sigkill_plus5s", "head", False, "agent HTTP 503: gcs: " + GCS_TIMED_OUT, False),
    ("06b_gcs_sigkill_plus5s", "w1", True, "", False),
])
def test_agent_healthz_replies(scenario: str, agent: str, ok: bool, reason: str,
                               hard: bool) -> None:
    routes = {"/api/healthz": replay(scenario, AGENTS[agent] + "_healthz")}
    _, obs, requests = observe_served("ray-agent", routes)
    assert (obs.ok, obs.reason, obs.hard) == (ok, reason, hard)
    assert requests == ["/api/healthz"]


@pytest.mark.parametrize("scenario,agent", [
    ("02_worker1_raylet_sigkill", "w1"), ("03_worker2_raylet_sigstop_hang", "w1"),
    ("05_worker2_raylet_sigterm_graceful", "w2"), ("06d_gcs_sigkill_plus_late", "head"),
    ("07_minimal_ray_no_dashboard", None),
])
def test_agent_refused_means_raylet_or_agent_down(scenario: str, agent: Optional[str]) -> None:
    name = (AGENTS[agent] if agent else "agent_52365") + "_healthz"
    assert capture(scenario, name)[1] == 7
    url = "http://127.0.0.1:%d" % closed_port()
    obs = observe(make_check("ray-agent", url=url))
    assert (obs.ok, obs.hard) == (False, False)
    assert obs.reason == "agent %s refused the connection (raylet or agent down)" % url


def test_agent_hang_after_gcs_loss_fails_at_the_deadline() -> None:
    routes = {"/api/healthz": replay("06c_gcs_sigkill_plus65s", "agent_w1_52366_healthz")}
    assert routes["/api/healthz"] == "hang"
    check, obs, _ = observe_served("ray-agent", routes)
    assert not obs.ok
    assert obs.reason == "agent %s did not answer within 0.45s" % check.config["url"]


@pytest.mark.parametrize("scenario,agent,ok,reason,hard", [
    ("01_healthy_head_plus_2_workers", "w2", True, "raylet ok (Ray < 2.53: GCS not checked)",
     False),
    ("03_worker2_raylet_sigstop_hang", "w2", False,
     "agent HTTP 503: raylet: Local Raylet failed", True),
    # before 2.53 the agent cannot see the GCS loss: the raylet still answers
    ("06b_gcs_sigkill_plus5s", "head", True, "raylet ok (Ray < 2.53: GCS not checked)", False),
])
def test_agent_falls_back_to_local_raylet_healthz_on_404(scenario: str, agent: str, ok: bool,
                                                         reason: str, hard: bool) -> None:
    not_found = capture("01_healthy_head_plus_2_workers", "dash_api_v0_cluster_resources")
    assert not_found[0] == 404  # a real aiohttp 404 reply from Ray
    routes = {"/api/healthz": (404, not_found[2]),
              "/api/local_raylet_healthz": replay(scenario, AGENTS[agent] +
                                                  "_local_raylet_healthz")}

    async def run() -> Tuple[List[Observation], List[str]]:
        async with ReplayServer(routes) as server:
            check = make_check("ray-agent", url=server.url)
            first = await check.observe()
            second = await check.observe()  # remembers the old Ray: no second 404
            return [first, second], server.requests
    observations, requests = asyncio.run(run())
    for obs in observations:
        assert (obs.ok, obs.reason, obs.hard) == (ok, reason, hard)
    assert requests == ["/api/healthz", "/api/local_raylet_healthz", "/api/local_raylet_healthz"]


def test_agent_verdict_edge_cases() -> None:
    assert ray_agent_verdict(200, b"", "/api/healthz")[0] is False
    assert ray_agent_verdict(200, b"raylet: success\ngcs: unsuccessful", "/api/healthz") == (
        False, "agent HTTP 200: gcs: unsuccessful", False)
    assert ray_agent_verdict(500, b"oops", "/api/healthz") == (False, "agent HTTP 500: oops",
                                                               False)
    assert ray_agent_verdict(503, b"", "/api/local_raylet_healthz") == (
        False, "agent HTTP 503: raylet: empty body", True)


# --- without a dashboard: ray-gcs --------------------------------------------------------------

def test_ray_gcs_reachable_says_only_reachability_is_known() -> None:
    async def run() -> Observation:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await make_check("ray-gcs", addr=("127.0.0.1", port)).observe()
        finally:
            server.close()
    obs = asyncio.run(run())
    assert (obs.ok, obs.reason) == (True, RAY_NO_DASHBOARD_NOTE)
    assert obs.reason == "GCS port reachable (no dashboard: only reachability is known)"


def test_ray_gcs_refused() -> None:
    port = closed_port()
    obs = observe(make_check("ray-gcs", addr=("127.0.0.1", port)))
    assert (obs.ok, obs.reason) == (False, "GCS port 127.0.0.1:%d: connection refused" % port)


# --- configuration -----------------------------------------------------------------------------

def test_kinds_defaults_and_keys() -> None:
    ray, agent, gcs = CHECK_KINDS["ray"], CHECK_KINDS["ray-agent"], CHECK_KINDS["ray-gcs"]
    assert ray.default_timeout == 2.0 and agent.default_timeout == 2.0
    assert ray.default_probes == frozenset(("ready", "started"))
    assert agent.default_probes == frozenset(("live", "ready", "started"))
    assert ray.params["nodes"].overridable and ray.params["gpus"].overridable
    assert ray.params["url"].required and agent.params["url"].required
    assert gcs.params["addr"].parse("head:6379") == ("head", 6379)
    with pytest.raises(ValueError):
        gcs.params["addr"].parse(":6379")
    with pytest.raises(ValueError):
        ray.params["nodes"].parse("two")


def test_check_text_builds_a_ray_check() -> None:
    from probed.checkspecs import build_spec, split_check_text
    spec = build_spec(split_check_text(
        "ray url=http://127.0.0.2:8265/ nodes=2 gpus=2 probes=ready", "--check #1"), "--check #1")
    assert (spec.kind, spec.timeout, spec.params["nodes"], spec.params["gpus"]) == (
        "ray", 2.0, 2, 2)
    check = CHECK_KINDS["ray"](spec)
    assert check.target() == "http://127.0.0.2:8265/api/v0/nodes?detail=1&limit=10000"


def test_cli_knows_the_ray_kinds() -> None:
    # `python3 -m probed` must register the kinds (probed/checks/__init__.py imports .ray).
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "probed", "--print-config",
         "--check", "ray url=http://127.0.0.1:8265 nodes=2 gpus=2",
         "--check", "ray-agent url=http://127.0.0.1:52365",
         "--check", "ray-gcs addr=127.0.0.1:6379"],
        cwd=str(repo), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    kinds = [c["kind"] for c in json.loads(proc.stdout)["checks"]]
    assert kinds == ["ray", "ray-agent", "ray-gcs"]
