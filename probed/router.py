"""Maps a parsed request to a prepared response, from cached verdicts only. No I/O.

Plain group replies (the kubelet's case: no query) are rendered once per verdict change and
served from a dict; anything with a query (verbose, JSON, exclude, overrides) is rendered on
demand from the pod's cached state, which still never touches a backend.
"""

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .httpproto import (
    HTTPError,
    PreparedResponse,
    Request,
    build_error_response,
    build_response,
    connection_mode,
)
from .pod import GroupVerdict, Pod, first_failure
from .podevents import describe_incarnation
from .groups import GROUP_PATHS
from .render import render_json, render_plain, render_verbose
from .values import ConfigError, format_timestamp, printable

JSON_TYPE = "application/json"
METRICS_CACHE_SECONDS = 0.005  # shared by a pipelined batch, fresh for every real scrape
PROBE_METHODS = "GET, HEAD"
SELF_PATH = "/probed/livez"  # probed's own liveness, for probed's own container
SHOWN_PATH_CHARS = 100  # of an unknown path echoed in a 404

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
    """Answers the probe port: group verdicts, single checks, probed's own liveness, the index
    and /metrics, from the pod's cached state (the clock only counts phase seconds)."""

    def __init__(self, pod: Pod, metrics: Optional[Callable[[], bytes]] = None,
                 routes: Optional[Dict[str, Route]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pod = pod
        self.clock = clock
        self.metrics = metrics
        self.routes = dict(GROUP_ROUTES, **(routes or {}))
        self._metrics_cache: Optional[Tuple[float, bytes]] = None
        self._cache: Dict[Tuple[str, bool, int], PreparedResponse] = {}
        self._cache_version = -1
        self.check_routes = check_routes(pod)



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
                if self._cache_version == self.pod.version:
                    cached = self._cache.get(key)
                    if cached is not None:
                        return cached
                else:
                    self._cache.clear()
                    self._cache_version = self.pod.version
                reply = self._route(req, head, mode)
                if req.path in self.routes and reply.status in (200, 500, 503):
                    self._cache[key] = reply
                return reply
            return self._route(req, head, mode)
        except HTTPError as err:
            return build_error_response(err, head)

    def _known_path_or_404(self, path: str) -> None:
        if path in self.routes or path in self.check_routes or path in ("/", "/metrics",
                                                                         SELF_PATH):
            return
        raise HTTPError(404, "no such path %s (see / for the index)" % shown_path(path))

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
        if path == SELF_PATH:
            return self._self_reply(req, head, mode)
        raise HTTPError(404, "no such path %s (see / for the index)" % shown_path(path))

    def _self_reply(self, req: Request, head: bool, mode: int) -> PreparedResponse:
        # Whether probed itself works (its pollers deliver): what probed's own container's
        # liveness probe reads. It says nothing of the backend, so it never restarts the server.
        if req.query:
            raise HTTPError(400, "%s takes no query parameters" % SELF_PATH)
        ok, reason = self.pod.self_check(self.clock())
        body = b"ok\n" if ok else ("probed failed: %s\n" % reason).encode("utf-8")
        return build_response(200 if ok else 503, body, head=head, mode=mode)

    def _group_reply(self, req: Request, route: Route, head: bool, mode: int) -> PreparedResponse:
        group, bodies, fail_status = route
        query = self.parse_query(req, group, None)
        if query.exclude or query.overrides or query.verbose or query.json:
            # evaluated now, so "loading for 312s" counts the seconds up to this request
            verdict = self.pod.verdict(group, self.clock(), query.exclude, query.overrides)
        else:
            verdict = self.pod.verdicts[group]
        return self._reply(verdict, query, bodies, head, mode, fail_status)

    def _check_reply(self, req: Request, group: str, name: str, head: bool,
                     mode: int) -> PreparedResponse:
        query = self.parse_query(req, group, name)
        st = self.pod.states[name]
        own = query.overrides.get(name)
        ok, reason = st.judged_with(own) if own else (st.passing, st.shown_reason)
        rows = [(st, ok, reason)]
        failure = first_failure(rows)
        return self._reply(GroupVerdict(group, not failure, failure or "ok", rows), query, None,
                           head, mode)

    def _reply(self, verdict: GroupVerdict, query: GroupQuery, alias: Bodies, head: bool,
               mode: int, fail_status: int = 503) -> PreparedResponse:
        status = 200 if verdict.ok else fail_status
        if query.json:
            pod = self.pod
            extra = {"started": pod.started, "draining": pod.drain_reason() or None,
                     "drains": list(pod.active_drains()),
                     "phase": pod.phase, "phase_since": format_timestamp(pod.phase_since_wall),
                     "incarnation": describe_incarnation(pod.incarnation)
                     if pod.incarnation is not None else None}
            body = render_json(verdict, self.clock(), extra, query.exclude)
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
        members = set(self.pod.member_names(group))
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
            parsed = self.pod.states[name].check.parse_override(param, value)
        except ConfigError as exc:
            raise HTTPError(400, str(exc)) from None
        query.overrides.setdefault(name, {})[param] = parsed

    def index(self) -> str:
        """The `/` page: endpoints, then every check with its groups and target."""
        lines = ["probed: probe endpoints for this pod", ""]
        for path, (group, _, _) in self.routes.items():
            verdict = self.pod.verdicts[group]
            lines.append("%-10s %-7s %s" % (path, "pass" if verdict.ok else "fail", group))
        ok, _ = self.pod.self_check(self.clock())
        lines.append("%-10s %-7s %s" % (SELF_PATH, "pass" if ok else "fail",
                                        "probed itself (its own container's liveness probe)"))
        lines += ["", "query: ?verbose  ?format=json  ?exclude=NAME  ?NAME.KEY=VALUE", "",
                  "checks:"]
        for st in self.pod.states.values():
            spec = st.check.spec
            lines.append("  %-20s %-8s %-7s probes=%s %s" % (
                st.check.name, st.check.kind, st.state_word(),
                ",".join(sorted(spec.probes)) or "-", st.check.target()))
        return "\n".join(lines) + "\n"


def shown_path(path: str) -> str:
    """A client's path as an error may echo it: short and with control characters escaped."""
    return printable(path, SHOWN_PATH_CHARS)


def check_routes(pod: Pod) -> Dict[str, Tuple[str, str]]:
    """`/readyz/NAME` and the like for every check: path -> (group, check name)."""
    return {"/%s/%s" % (path, name): (group, name)
            for group, path in GROUP_PATHS.items() for name in pod.member_names(group)}


def router_paths(pod: Pod, routes: Optional[Dict[str, Route]] = None) -> List[str]:
    """Every path a Router over `pod` answers: the only `path` labels /metrics may show."""
    return (list(GROUP_ROUTES) + list(routes or {}) + list(check_routes(pod))
            + ["/", "/metrics", SELF_PATH])
