"""Maps a parsed request to a prepared response, from cached verdicts only. No I/O.

Plain group replies (the kubelet's case: no query) are rendered once per verdict change and
served from a dict; anything with a query (verbose, JSON, exclude, overrides) is rendered on
demand from the engine's cached state, which still never touches a backend.
"""

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .engine import Engine
from .httpproto import (
    HTTPError,
    PreparedResponse,
    Request,
    build_error_response,
    build_response,
    connection_mode,
)
from .render import GROUP_PATHS, render_json, render_plain, render_verbose
from .lifecycle import describe_incarnation
from .values import ConfigError, format_timestamp
from .verdicts import GroupVerdict, evaluate_checks, first_failure

JSON_TYPE = "application/json"
METRICS_CACHE_SECONDS = 0.005  # shared by a pipelined batch, fresh for every real scrape
PROBE_METHODS = "GET, HEAD"

Bodies = Optional[Tuple[bytes, bytes]]  # (when passing, when failing); None: the standard ones
Route = Tuple[str, Bodies, int]  # (group, bodies, status when failing)

GROUP_ROUTES: Dict[str, Route] = {
    "/livez": ("live", None, 503),
    "/readyz": ("ready", None, 503),
    "/startupz": ("started", None, 503),
    "/healthz": ("live", None, 503),  # Multi Node Prober path
    "/health": ("ready", (b"Healthy", b"Unhealthy"), 503),  # LLM Healthchecker compatible
    "/ready": ("ready", (b"OK", b"Not Ready"), 503),  # llm-d requester compatible
}

# With --vllm-endpoint, the Multi Node Prober's own bodies and codes (its liveness and startup
# handlers fail with 500); the kubelet treats both alike, scripts that grep may not.
MULTINODE_PROBER_ROUTES: Dict[str, Route] = {
    "/healthz": ("live", (b"Liveness check passed\n", b"Liveness check failed\n"), 500),
    "/readyz": ("ready", (b"Readiness check passed\n", b"Readiness check failed\n"), 503),
    "/startupz": ("started", (b"Startup check passed\n", b"Startup check failed\n"), 500),
}


class GroupQuery:
    """What a query string asked of a group reply."""

    __slots__ = ("verbose", "json", "exclude", "overrides")

    def __init__(self) -> None:
        self.verbose = False
        self.json = False
        self.exclude: List[str] = []
        self.overrides: Dict[str, Dict[str, Any]] = {}


class Router:
    """Answers the probe port: group verdicts, single checks, the index and /metrics."""

    def __init__(self, engine: Engine, metrics: Optional[Callable[[], bytes]] = None,
                 routes: Optional[Dict[str, Route]] = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.routes = dict(GROUP_ROUTES, **(routes or {}))
        self._metrics_cache: Optional[Tuple[float, bytes]] = None
        self._cache: Dict[Tuple[str, bool, int], PreparedResponse] = {}
        self._cache_version = -1
        self.check_routes: Dict[str, Tuple[str, str]] = {}
        for group, path in GROUP_PATHS.items():
            for st in engine.by_group[group]:
                self.check_routes["/%s/%s" % (path, st.check.name)] = (group, st.check.name)

    def respond(self, req: Request) -> PreparedResponse:
        """The reply to one request; errors become 4xx replies that close the connection."""
        head = req.method == "HEAD"
        try:
            if req.method not in ("GET", "HEAD"):
                self._known_path_or_404(req.path)
                raise HTTPError(405, "method %s not allowed" % req.method, allow=PROBE_METHODS)
            mode = connection_mode(req)
            if not req.query and JSON_TYPE not in req.headers.get("accept", ""):
                key = (req.path, head, mode)
                if self._cache_version == self.engine.version:
                    cached = self._cache.get(key)
                    if cached is not None:
                        return cached
                else:
                    self._cache.clear()
                    self._cache_version = self.engine.version
                reply = self._route(req, head, mode)
                if req.path in self.routes and reply.status in (200, 500, 503):
                    self._cache[key] = reply
                return reply
            return self._route(req, head, mode)
        except HTTPError as err:
            return build_error_response(err, head)

    def _known_path_or_404(self, path: str) -> None:
        if path in self.routes or path in self.check_routes or path in ("/", "/metrics"):
            return
        raise HTTPError(404, "no such path %s (see / for the index)" % path)

    def _route(self, req: Request, head: bool, mode: int) -> PreparedResponse:
        path = req.path
        route = self.routes.get(path)
        if route is not None:
            return self._group_reply(req, route, head, mode)
        single = self.check_routes.get(path)
        if single is not None:
            return self._check_reply(req, single[0], single[1], head, mode)
        if path == "/":
            return build_response(200, self.index().encode("utf-8"), head=head, mode=mode)
        if path == "/metrics" and self.metrics is not None:
            return build_response(200, self.metrics_body(), "text/plain; version=0.0.4; "
                                  "charset=utf-8", head=head, mode=mode)
        raise HTTPError(404, "no such path %s (see / for the index)" % path)

    def _group_reply(self, req: Request, route: Route, head: bool, mode: int) -> PreparedResponse:
        group, bodies, fail_status = route
        query = self.parse_query(req, group, None)
        if query.exclude or query.overrides or query.verbose or query.json:
            # evaluated now, so "loading for 312s" counts the seconds up to this request
            verdict = self.engine.evaluate(group, query.exclude, query.overrides)
        else:
            verdict = self.engine.verdicts[group]
        return self._reply(verdict, query, bodies, head, mode, fail_status)

    def _check_reply(self, req: Request, group: str, name: str, head: bool,
                     mode: int) -> PreparedResponse:
        query = self.parse_query(req, group, name)
        rows = evaluate_checks([self.engine.states[name]], (), query.overrides)
        failure = first_failure(rows)
        return self._reply(GroupVerdict(group, not failure, failure or "ok", rows), query, None,
                           head, mode)

    def _reply(self, verdict: GroupVerdict, query: GroupQuery, alias: Bodies, head: bool,
               mode: int, fail_status: int = 503) -> PreparedResponse:
        status = 200 if verdict.ok else fail_status
        if query.json:
            engine = self.engine
            extra = {"started": engine.started, "draining": engine.draining or None,
                     "phase": engine.phase, "phase_since": format_timestamp(
                         engine.phase_since_wall), "incarnation": describe_incarnation(
                         engine.incarnation) if engine.incarnation is not None else None}
            body = render_json(verdict, time.monotonic(), extra, query.exclude)
            return build_response(status, body, JSON_TYPE, head=head, mode=mode)
        if query.verbose:
            body = render_verbose(verdict, query.exclude)
        elif alias is not None:
            body = alias[0] if verdict.ok else alias[1]
        else:
            body = render_plain(verdict)
        return build_response(status, body, head=head, mode=mode)

    def metrics_body(self) -> bytes:
        """/metrics, rendered at most once per METRICS_CACHE_SECONDS: a client pipelining
        scrapes must not turn the render into a way to stall the event loop."""
        now = time.monotonic()
        if self._metrics_cache is None or now - self._metrics_cache[0] >= METRICS_CACHE_SECONDS:
            assert self.metrics is not None
            self._metrics_cache = (now, self.metrics())
        return self._metrics_cache[1]

    def parse_query(self, req: Request, group: str, only: Optional[str]) -> GroupQuery:
        """verbose, format=json, exclude=NAME, NAME.KEY=VALUE; anything else is a 400."""
        query = GroupQuery()
        query.json = JSON_TYPE in req.headers.get("accept", "")
        members = {st.check.name for st in self.engine.by_group[group]}
        for key, value in req.query_pairs():
            if key == "verbose":
                query.verbose = value.lower() not in ("0", "false", "no")
            elif key == "format":
                if value not in ("json", "text"):
                    raise HTTPError(400, "format=%s: expected json or text" % value)
                query.json = value == "json"
            elif key == "exclude":
                if value not in members:
                    raise HTTPError(400, "exclude=%s: no such check in %s (have: %s)" % (
                        value, group, ", ".join(sorted(members)) or "none"))
                query.exclude.append(value)
            elif "." in key:
                self._add_override(query, key, value, members if only is None else {only})
            else:
                raise HTTPError(400, "unknown query parameter %r (expected verbose, format, "
                                     "exclude or NAME.KEY=VALUE)" % key)
        return query

    def _add_override(self, query: GroupQuery, key: str, value: str, members: Any) -> None:
        name, _, param = key.partition(".")
        if name not in members:
            raise HTTPError(400, "%s: no such check here (have: %s)" % (
                key, ", ".join(sorted(members)) or "none"))
        try:
            parsed = self.engine.states[name].check.parse_override(param, value)
        except ConfigError as exc:
            raise HTTPError(400, str(exc)) from None
        query.overrides.setdefault(name, {})[param] = parsed

    def index(self) -> str:
        """The `/` page: endpoints, then every check with its groups and target."""
        lines = ["probed: probe endpoints for this pod", ""]
        for path, (group, _, _) in self.routes.items():
            verdict = self.engine.verdicts[group]
            lines.append("%-10s %-7s %s" % (path, "pass" if verdict.ok else "fail", group))
        lines += ["", "query: ?verbose  ?format=json  ?exclude=NAME  ?NAME.KEY=VALUE", "",
                  "checks:"]
        for st in self.engine.states.values():
            spec = st.check.spec
            lines.append("  %-20s %-8s %-7s probes=%s %s" % (
                st.check.name, st.check.kind, st.state_word(),
                ",".join(sorted(spec.probes)) or "-", st.check.target()))
        return "\n".join(lines) + "\n"
