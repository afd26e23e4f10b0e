"""Ray check kinds: `ray` (the cluster), `ray-agent` (this node), `ray-gcs` (Ray without dashboard).

`ray` asks the dashboard whether the GCS is healthy (`/api/gcs_healthz`) and counts ALIVE nodes and
their GPUs in the state API. It never reads `/nodes?view=summary`: that reply is cached and can be
minutes old. With the GCS down the node list hangs, so both requests run at once and a 503 from
the health endpoint ends the poll at once. `ray-gcs` only connects to the GCS port, for Ray
installed without a dashboard (plain `pip install ray`).
Must never do I/O outside `observe`: judging is pure, so a cached observation can be re-judged
with per-request overrides such as `/readyz?ray.nodes=3`.
"""

import asyncio
from typing import Any, Awaitable, Dict, List, Mapping, Optional, Tuple

from ..client import FetchError, Response, fetch
from ..values import parse_count, parse_http_url
from .base import CheckResources, Observation, Param
from .http import HTTP_COMMON_PARAMS, HTTPPollingCheck, body_snippet
from .tcp import TCPCheck, parse_tcp_addr

RAY_GCS_HEALTH_PATH = "/api/gcs_healthz"
# 10000 is the state API's largest limit by default (RAY_MAX_LIMIT_FROM_API_SERVER); DEAD nodes
# stay listed (the GCS keeps up to 1000), so a small limit could cut ALIVE ones off the list.
RAY_NODES_PATH = "/api/v0/nodes?detail=1&limit=10000"
RAY_NODES_MAX_BODY = 8 << 20  # about 600 bytes per listed node
RAY_AGENT_HEALTH_PATH = "/api/healthz"  # Ray >= 2.53: raylet and GCS
RAY_AGENT_LEGACY_PATH = "/api/local_raylet_healthz"  # older Ray: raylet only
RAY_AGENT_MAX_BODY = 64 << 10
RAY_HEALTH_MAX_BODY = 1 << 20  # fetch's default
# Each request gets this share of the check's timeout, so a hang is reported as what it is
# ("node list did not answer within 1.8s") before the engine's own deadline cancels the poll.
RAY_DEADLINE_SHARE = 0.9
RAY_MIN_FETCH_TIMEOUT = 0.05
RAY_DEAD_SHOWN = 3  # dead nodes named in a failure reason; the rest are counted
RAY_REASON_MAX = 200  # characters of agent text quoted in a reason
RAY_NO_DASHBOARD_NOTE = "GCS port reachable (no dashboard: only reachability is known)"


def ray_fetch_timeout(check_timeout: Optional[float], fallback: float) -> float:
    """The deadline of one request inside a poll bounded by `check_timeout` seconds."""
    total = check_timeout if check_timeout else fallback
    return max(RAY_MIN_FETCH_TIMEOUT, total * RAY_DEADLINE_SHARE)


def ray_fetch_problem(what: str, exc: FetchError, timeout: float) -> str:
    """Words for a failed request to `what` (a URL or a name)."""
    if exc.kind == "refused":
        return "%s refused the connection" % what
    if exc.kind == "timeout":
        return "%s did not answer within %gs" % (what, round(timeout, 3))
    return "%s: %s" % (what, exc)


def ray_gcs_health_problem(status: int, body: bytes) -> str:
    """'' when `/api/gcs_healthz` says the GCS is healthy, else why not."""
    text = body_snippet(body)
    if status == 200 and text == "success":
        return ""
    if text.startswith("%d: " % status):  # aiohttp's error bodies repeat the status
        text = text[len("%d: " % status):]
    return "GCS unhealthy: HTTP %d%s" % (status, (": " + text) if text else "")


def _node_gpus(node: Mapping[str, Any]) -> float:
    resources = node.get("resources_total") or {}
    try:
        return float(resources.get("GPU", 0.0))
    except (TypeError, ValueError):
        return 0.0


def _node_list(payload: Any) -> Tuple[int, List[Mapping[str, Any]]]:
    """(total, nodes) of a state API reply; ValueError when it is not a node list."""
    try:
        if payload.get("result") is False:
            raise ValueError("state API error: %s" % (payload.get("msg") or "no message"))
        listing = payload["data"]["result"]
        nodes = listing["result"]
        if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
            raise TypeError("result is not a list of nodes")
        total = listing.get("total", len(nodes))
        return (total if isinstance(total, int) else len(nodes)), nodes
    except (AttributeError, KeyError, TypeError) as exc:
        raise ValueError("not a Ray state API node list (%s)" % exc) from None


def ray_nodes_summary(payload: Any) -> Dict[str, Any]:
    """Summarise a parsed `/api/v0/nodes?detail=1` reply; ValueError when it is not one.

    `alive`: every ALIVE node. `dead`: DEAD nodes whose IP has no ALIVE node (a re-joined node
    leaves its old DEAD entry behind), newest per IP, newest first.
    """
    total, nodes = _node_list(payload)
    alive: List[Dict[str, Any]] = []
    newest_dead: Dict[str, Dict[str, Any]] = {}
    for node in nodes:
        ip = str(node.get("node_ip") or node.get("node_name") or "?")
        node_id = str(node.get("node_id") or "")[:12]
        if node.get("state") == "ALIVE":
            alive.append({"ip": ip, "id": node_id, "gpus": _node_gpus(node),
                          "head": bool(node.get("is_head_node"))})
            continue
        ended = node.get("end_time_ms")
        ended = ended if isinstance(ended, (int, float)) else 0
        if ip not in newest_dead or ended > newest_dead[ip]["ended_ms"]:
            newest_dead[ip] = {"ip": ip, "id": node_id, "ended_ms": ended,
                               "message": str(node.get("state_message") or node.get("state"))}
    alive_ips = set(n["ip"] for n in alive)
    dead = sorted((d for ip, d in newest_dead.items() if ip not in alive_ips),
                  key=lambda d: d["ended_ms"], reverse=True)
    return {"alive": alive, "dead": dead, "dead_total": len(nodes) - len(alive),
            "listed": len(nodes), "total": total}


def _dead_words(dead: List[Dict[str, Any]]) -> str:
    shown = ["%s (%s)" % (d["ip"], d["message"]) for d in dead[:RAY_DEAD_SHOWN]]
    more = len(dead) - RAY_DEAD_SHOWN
    return ", ".join(shown) + (" and %d more" % more if more > 0 else "")


def judge_ray_cluster(summary: Mapping[str, Any], nodes: int, gpus: int) -> Tuple[bool, str]:
    """Pass when at least `nodes` nodes are ALIVE and they hold at least `gpus` GPUs."""
    alive = summary["alive"]
    have_gpus = sum(n["gpus"] for n in alive)
    short: List[str] = []
    if len(alive) < nodes:
        short.append("%d/%d nodes alive" % (len(alive), nodes))
    if have_gpus < gpus:
        short.append("%g/%d GPUs on %d alive nodes" % (have_gpus, gpus, len(alive)))
    if not short:
        return True, "%d nodes alive (need %d), %g GPUs (need %d)" % (
            len(alive), nodes, have_gpus, gpus)
    reason = ", ".join(short)
    if summary["dead"]:
        reason += "; dead: " + _dead_words(summary["dead"])
    if summary.get("listed", 0) < summary.get("total", 0):
        reason += " (node list truncated: %d of %d)" % (summary["listed"], summary["total"])
    return False, reason


class _RayDashboardCheck(HTTPPollingCheck):
    """What `ray` and `ray-agent` share: an HTTP base URL and its request settings."""

    default_timeout = 2.0
    default_interval = 5.0

    def __init__(self, spec: Any, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        self.base: str = self.config["url"].rstrip("/")

    def _fetch(self, path: str, timeout: float, max_body: int,
               headers: Optional[Dict[str, str]] = None) -> Awaitable[Response]:
        """GET base + path; `headers` default to fresh ones (a rotated token applies)."""
        if headers is None:
            headers = self.request.request_headers()
        return fetch(self.base + path, headers=headers, timeout=timeout, max_body=max_body,
                     tls=self.request.tls, resolver=self.resources.resolver)


class RayClusterCheck(_RayDashboardCheck):
    """GCS healthy, at least `nodes` ALIVE nodes and `gpus` GPUs on them (run it on the leader)."""

    kind = "ray"
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True,
                     help="Ray dashboard, e.g. http://127.0.0.1:8265"),
        "nodes": Param(parse_count, default=1, overridable=True,
                       help="ALIVE nodes needed (DEAD ones are not counted)"),
        "gpus": Param(parse_count, default=0, overridable=True,
                      help="GPUs needed, summed over ALIVE nodes"),
    })

    def target(self) -> str:
        return self.base + RAY_NODES_PATH

    async def observe(self) -> Observation:
        timeout = ray_fetch_timeout(self.spec.timeout, self.default_timeout)
        headers = self.request.request_headers()
        health = asyncio.ensure_future(
            self._fetch(RAY_GCS_HEALTH_PATH, timeout, RAY_HEALTH_MAX_BODY, headers))
        listing = asyncio.ensure_future(
            self._fetch(RAY_NODES_PATH, timeout, RAY_NODES_MAX_BODY, headers))
        for task in (health, listing):
            task.add_done_callback(_forget_task)
        try:
            problem, hard = await self._gcs_problem(health, timeout)
            if problem:
                return Observation(False, problem, hard=hard, detail={"gcs": problem})
            return await self._count_nodes(listing, timeout)
        finally:
            for task in (health, listing):
                if not task.done():
                    task.cancel()

    async def _gcs_problem(self, health: "asyncio.Future[Any]", timeout: float
                           ) -> Tuple[str, bool]:
        """('', False) when the GCS is healthy, else (reason, whether Ray said so itself)."""
        try:
            resp = await health
        except FetchError as exc:
            problem = ray_fetch_problem("dashboard " + self.base, exc, timeout)
            if exc.kind == "refused":
                problem += " (Ray without a dashboard? then use kind ray-gcs addr=HOST:PORT)"
            return problem, False
        problem = ray_gcs_health_problem(resp.status, resp.body)
        return problem, bool(problem) and resp.status == 503

    async def _count_nodes(self, listing: "asyncio.Future[Any]", timeout: float) -> Observation:
        try:
            resp = await listing
        except FetchError as exc:
            return Observation(False, ray_fetch_problem("node list", exc, timeout) + (
                " (GCS overloaded or down?)" if exc.kind == "timeout" else ""))
        if resp.status != 200:
            hint = " (dashboard token auth? set token-file=)" if resp.status in (401, 403) else ""
            return Observation(False, "node list: HTTP %d: %s%s" % (
                resp.status, body_snippet(resp.body), hint))
        try:
            summary = ray_nodes_summary(resp.json())
        except ValueError as exc:
            return Observation(False, "node list: %s" % exc)
        summary["gcs"] = "success"
        ok, reason = self.judge_summary(summary, self.config)
        return Observation(ok, reason, float(len(summary["alive"])), detail=summary)

    @staticmethod
    def judge_summary(summary: Mapping[str, Any], config: Mapping[str, Any]) -> Tuple[bool, str]:
        """Judge a node summary under `config` (which may carry per-request overrides)."""
        return judge_ray_cluster(summary, config.get("nodes", 1), config.get("gpus", 0))

    def judge(self, obs: Observation, config: Mapping[str, Any], was_ok: bool) -> Tuple[bool, str]:
        if not obs.detail or "alive" not in obs.detail:
            return False, obs.reason  # GCS unhealthy or no node list: nothing to count
        return self.judge_summary(obs.detail, config)


def _forget_task(task: "asyncio.Future[Any]") -> None:
    # An unwanted result (the poll ended early) must not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


def _agent_line_ok(line: str) -> bool:
    # `success`, `raylet: success`, `gcs: success (no local gcs)`
    return line.partition(": ")[2 if ": " in line else 0].startswith("success")


def ray_agent_verdict(status: int, body: bytes, path: str) -> Tuple[bool, str, bool]:
    """(passes, reason, hard) from a dashboard agent's health reply.

    `/api/healthz` answers `raylet: success` and `gcs: success[ (no local gcs)]`, 503 when one
    fails; `/api/local_raylet_healthz` answers `success` or 503 `Local Raylet failed`. A failed
    raylet line is the agent's own word (hard); other failures go through fail-after.
    """
    text = body.decode("utf-8", "replace").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if status == 200 and lines and all(_agent_line_ok(line) for line in lines):
        note = "" if path == RAY_AGENT_HEALTH_PATH else "raylet ok (Ray < 2.53: GCS not checked)"
        return True, note, False
    failed = [line for line in lines if not _agent_line_ok(line)] or lines
    said = "; ".join(failed)[:RAY_REASON_MAX] if failed else "empty body"
    if path == RAY_AGENT_LEGACY_PATH:
        raylet_failed = status == 503
        said = "raylet: " + said if not said.startswith("raylet") else said
    else:
        raylet_failed = any(line.startswith("raylet:") for line in failed)
    return False, "agent HTTP %d: %s" % (status, said), raylet_failed and status == 503


class RayAgentCheck(_RayDashboardCheck):
    """This node's raylet (and, on Ray >= 2.53, its GCS connection) per its dashboard agent.

    In every group by default, like KubeRay's own probes: a node whose raylet the GCS has
    declared dead never recovers by itself; a restart re-joins it.
    """

    kind = "ray-agent"
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True,
                     help="this node's dashboard agent, e.g. http://127.0.0.1:52365"),
    })
    default_probes = frozenset(("live", "ready", "started"))

    def __init__(self, spec: Any, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        self.path = RAY_AGENT_HEALTH_PATH  # switches to the legacy path after a 404

    def target(self) -> str:
        return self.base + self.path

    async def observe(self) -> Observation:
        timeout = ray_fetch_timeout(self.spec.timeout, self.default_timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            resp = await self._fetch(self.path, timeout, RAY_AGENT_MAX_BODY)
            if resp.status == 404:
                # Ray < 2.53 has no /api/healthz; a 404 on the legacy path means an upgrade.
                other = RAY_AGENT_LEGACY_PATH if self.path == RAY_AGENT_HEALTH_PATH \
                    else RAY_AGENT_HEALTH_PATH
                left = max(RAY_MIN_FETCH_TIMEOUT, deadline - loop.time())
                resp = await self._fetch(other, left, RAY_AGENT_MAX_BODY)
                self.path = other
        except FetchError as exc:
            problem = ray_fetch_problem("agent " + self.base, exc, timeout)
            if exc.kind == "refused":
                problem += " (raylet or agent down)"
            return Observation(False, problem, detail={"error": exc.kind})
        ok, reason, hard = ray_agent_verdict(resp.status, resp.body, self.path)
        return Observation(ok, reason, float(resp.status), hard=hard,
                           detail={"status": resp.status, "path": self.path,
                                   "body": body_snippet(resp.body)})


class RayGCSCheck(TCPCheck):
    """A TCP connect to the GCS port, for Ray without a dashboard: reachability, nothing more."""

    kind = "ray-gcs"
    params = {"addr": Param(parse_tcp_addr, required=True, help="GCS host:port, e.g. head:6379")}
    default_timeout = 2.0
    default_interval = 5.0

    async def observe(self) -> Observation:
        obs = await super().observe()
        if obs.ok:
            return Observation(True, RAY_NO_DASHBOARD_NOTE)
        return Observation(False, "GCS port %s: %s" % (self.target(), obs.reason))
