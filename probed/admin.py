"""The admin listener (`--admin-addr`): drain, worker heartbeats, and llm-d's readiness SPI.

A separate router on a separate port (loopback unless a host is given), so nothing here is ever
reachable on the probe port. With `--admin-token-file`, every call needs a Bearer token, re-read
when the file changes (a rotated Secret applies). Handlers only flip in-memory state and answer
at once. Must never: log or echo the token, answer without checking it, or log per request.
"""

import asyncio
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from .checks.base import Check
from .beatregistry import HeartbeatRegistry, HeartbeatRegistryFull, parse_beat_name
from .checks.heartbeat import HeartbeatCheck
from .checks.manual import ManualCheck
from .client import read_bearer_token
from .drain import DrainWaiter
from .eventlog import EventLog
from .httpproto import (CONN_CLOSE, HTTPError, PreparedResponse, Request, build_error_response,
                        build_response, connection_mode)
from .pod import DRAIN_RULES, Pod
from .scheduler import Scheduler
from .server import ProbeServer, bind_listener
from .values import ConfigError, parse_host_port

ADMIN_DEFAULT_HOST = "127.0.0.1"  # `--admin-addr :9090` listens on loopback only
ADMIN_MAX_BODY = 4096  # admin calls carry no body worth reading; bigger is a 413
ADMIN_MAX_CONNECTIONS = 64
ADMIN_HEARTBEAT_PREFIX = "/heartbeat/"
ADMIN_SHOWN_NAME_CHARS = 64  # of a rejected heartbeat name echoed in the error
ADMIN_REALM = 'Bearer realm="probed admin"'
ADMIN_UNAUTHORIZED = (b"401 Unauthorized: admin calls need Authorization: Bearer <token from "
                      b"--admin-token-file>\n")

AdminReply = Union[PreparedResponse, "asyncio.Future[PreparedResponse]"]
AdminHandler = Callable[[Request, bool, int], AdminReply]  # (request, head, connection mode)


def parse_admin_addr(text: str) -> Optional[Tuple[str, int]]:
    """`:9090` -> ("127.0.0.1", 9090); `0.0.0.0:9090` as given; `off` or empty -> None."""
    if text.strip().lower() in ("", "off", "none"):
        return None
    host, port = parse_host_port(text, ADMIN_DEFAULT_HOST)
    if port == 0:
        raise ValueError("expected a port between 1 and 65535")
    return host, port


class AdminToken:
    """The Bearer token in `--admin-token-file`, re-read whenever the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._signature: Optional[Tuple[int, int, int, int]] = None
        self._digest: Optional[bytes] = None
        self._problem = ""

    def digest(self) -> bytes:
        """SHA-256 of the current token; HTTPError 503 when the file is unreadable or empty."""
        import hashlib  # only with a token file: keeps OpenSSL's hashes out of a plain run

        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
            if signature != self._signature:  # a Secret rotates by swapping a symlink
                token = read_bearer_token(self.path)
                self._digest = hashlib.sha256(token.encode("utf-8")).digest() if token else None
                self._problem = "" if token else "is empty"
                self._signature = signature
        except (OSError, ValueError) as exc:
            self._signature, self._digest = None, None
            self._problem = "cannot be read: %s" % (getattr(exc, "strerror", None) or exc)
        if self._digest is None:
            raise HTTPError(503, "--admin-token-file %s %s; every admin call is refused" % (
                self.path, self._problem))
        return self._digest

    def validate(self) -> None:
        """At start: ConfigError unless the file holds a token."""
        try:
            self.digest()
        except HTTPError:
            raise ConfigError("--admin-token-file %s %s" % (self.path, self._problem)) from None

    def allows(self, authorization: str) -> bool:
        """Whether an Authorization header carries the token (constant-time compare)."""
        import hashlib
        import hmac

        expected = self.digest()
        scheme, _, value = authorization.strip().partition(" ")
        given = hashlib.sha256(value.strip().encode("latin-1")).digest()
        # Digests have one length, so compare_digest leaks neither content nor length.
        return hmac.compare_digest(given, expected) and scheme.lower() == "bearer"


class AdminRoute(NamedTuple):
    """One admin path: the methods it takes, its handler, one line for the index."""

    methods: Tuple[str, ...]
    handler: AdminHandler
    help: str


class AdminRouter:
    """Answers the admin listener: `/drain`, `/undrain`, `/heartbeat/NAME`, `/v1/become-*` and,
    with a drain waiter, `/wait-for-drain`. It reads the pod; every change goes through the
    scheduler, which routes the pod's events like any other."""

    def __init__(self, pod: Pod, control: Scheduler, registry: HeartbeatRegistry,
                 log: EventLog, token: Optional[AdminToken] = None,
                 waiter: Optional[DrainWaiter] = None) -> None:
        self.pod = pod
        self.control = control
        self.registry = registry
        self.token = token
        self.log = log
        self.waiter = waiter
        checks = [st.check for st in pod.states.values()]
        self.manual: List[ManualCheck] = [c for c in checks if isinstance(c, ManualCheck)]
        self.reads_pushed_beats = any(isinstance(c, HeartbeatCheck) and c.pushed for c in checks)
        self._refusing_names = False  # the registry-full warning is logged once per episode
        self.routes: Dict[str, AdminRoute] = {}
        self.add_route("/", ("GET", "HEAD"), self._index, "this list")
        self.add_route("/drain", ("POST",), self._drain, "ready fails with reason \"%s\" until "
                       "POST /undrain" % DRAIN_RULES["admin"].reason)
        self.add_route("/undrain", ("POST",), self._undrain,
                       "ends the admin drain and a preStop wait's drain")
        self.add_route(ADMIN_HEARTBEAT_PREFIX + "NAME", ("POST", "DELETE"), self._heartbeat,
                       "a worker beats (DELETE: the worker left on purpose)")
        self.add_route("/v1/become-ready", ("POST",), self._become(True),
                       "manual checks pass (llm-d requester SPI)")
        self.add_route("/v1/become-unready", ("POST",), self._become(False),
                       "manual checks fail (llm-d requester SPI)")
        if waiter is not None:
            self.add_route("/wait-for-drain", ("GET",), waiter.handle, "preStop: fail ready, "
                           "return when nothing is in flight (?timeout=60s)")

    def add_route(self, path: str, methods: Sequence[str], handler: AdminHandler,
                  help: str) -> None:
        """Serve `path`; the handler may return a Future for a reply that must wait."""
        self.routes[path] = AdminRoute(tuple(methods), handler, help)

    def respond(self, req: Request) -> AdminReply:
        """The reply to one admin request: authorization first, then path, then method."""
        head = req.method == "HEAD"
        try:
            if self.token is not None and not self.token.allows(
                    req.headers.get("authorization", "")):
                return build_response(401, ADMIN_UNAUTHORIZED, head=head, mode=CONN_CLOSE,
                                      extra_headers=(("WWW-Authenticate", ADMIN_REALM),))
            route = self.routes.get(req.path)
            if route is None and req.path.startswith(ADMIN_HEARTBEAT_PREFIX):
                route = self.routes[ADMIN_HEARTBEAT_PREFIX + "NAME"]
            if route is None:
                raise HTTPError(404, "no admin path %s (GET / lists them)" % req.path[:200])
            if req.method not in route.methods:
                raise HTTPError(405, "method %s not allowed on %s" % (req.method, req.path[:200]),
                                allow=", ".join(route.methods))
            return route.handler(req, head, connection_mode(req))
        except HTTPError as err:
            return build_error_response(err, head)

    # --- handlers --------------------------------------------------------------------------------

    def _index(self, req: Request, head: bool, mode: int) -> PreparedResponse:
        admin_reject_query(req)
        lines = ["probed admin listener", ""]
        for path, route in self.routes.items():
            lines.append("%-11s %-20s %s" % ("/".join(route.methods), path, route.help))
        manual = ", ".join("%s=%s" % (c.name, "ready" if c.ready else "unready")
                           for c in self.manual)
        lines += ["", "draining: %s" % (", ".join(self.pod.active_drains()) or "no"),
                  "pushed heartbeats: %d of at most %d names%s" % (
                      len(self.registry.beats), self.registry.max_names,
                      "" if self.reads_pushed_beats else " (no heartbeat check reads them)"),
                  "manual checks: %s" % (manual or "none"),
                  "auth: %s" % ("Bearer token" if self.token is not None else "none")]
        return admin_text("\n".join(lines), head, mode)

    def _drain(self, req: Request, head: bool, mode: int) -> PreparedResponse:
        admin_reject_query(req)
        self.control.drain("admin")  # recorded on its own, whatever else drains the pod
        others = [s for s in self.pod.active_drains() if s != "admin"]
        return admin_text("draining: ready fails until POST /undrain%s" % (
            " (also active: %s)" % ", ".join(others) if others else ""), head, mode)

    def _undrain(self, req: Request, head: bool, mode: int) -> PreparedResponse:
        admin_reject_query(req)
        undone = [s for s in self.pod.active_drains() if DRAIN_RULES[s].undoable]
        for source in undone:
            self.control.undrain(source)
        left = self.pod.active_drains()
        if left:  # only SIGTERM's: probed itself is on its way out
            raise HTTPError(409, "cannot undrain: probed is shutting down (it got SIGTERM, "
                                 "SIGINT or SIGHUP) and exits after --drain-seconds; a probed "
                                 "that starts again starts undrained%s" % (
                                     " (ended: %s)" % ", ".join(undone) if undone else ""))
        if not undone:
            return admin_text("not draining", head, mode)
        return admin_text("undrained (%s): ready follows its checks again" % ", ".join(undone),
                          head, mode)

    def _heartbeat(self, req: Request, head: bool, mode: int) -> PreparedResponse:
        admin_reject_query(req)
        name = req.path[len(ADMIN_HEARTBEAT_PREFIX):]
        try:
            parse_beat_name(name)
        except ValueError as exc:
            raise HTTPError(400, "heartbeat name %r: %s" % (
                name[:ADMIN_SHOWN_NAME_CHARS], exc)) from None
        if not self.reads_pushed_beats:
            raise HTTPError(404, "no heartbeat check reads pushed beats (each has path=); "
                                 "add --check \"heartbeat\" without path=")
        if req.method == "DELETE":
            known = self.registry.remove(name)
            return admin_text("removed %s" % name if known else "%s was not known" % name,
                              head, mode)
        try:
            self.registry.beat(name)
        except HeartbeatRegistryFull as exc:
            if not self._refusing_names:
                self._refusing_names = True
                self.log.warn("heartbeat name refused", name=name, error=str(exc))
            raise HTTPError(503, "%s; DELETE names of workers that left" % exc) from None
        self._refusing_names = False
        return admin_text("OK", head, mode)

    def _become(self, ready: bool) -> AdminHandler:
        path = "/v1/become-ready" if ready else "/v1/become-unready"

        def handler(req: Request, head: bool, mode: int) -> PreparedResponse:
            admin_reject_query(req)
            if not self.manual:
                raise HTTPError(404, "no manual check to set: add --check \"manual\" to use "
                                     "%s" % path)
            wall = self.control.wall()
            for check in self.manual:
                changed = check.ready != ready
                check.set_ready(ready, "POST " + path, wall)
                self.control.record(check.name, check.current(), 0.0)
                if changed:
                    self.log.info("admin set manual check", check=check.name,
                                  to="ready" if ready else "unready")
            return admin_text("OK", head, mode)  # the body llm-d's requester answers

        return handler


def admin_text(text: str, head: bool, mode: int) -> PreparedResponse:
    """A plain-text 200 admin reply."""
    return build_response(200, (text + "\n").encode("utf-8"), head=head, mode=mode)


def admin_reject_query(req: Request) -> None:
    """These endpoints take no query parameters: anything there is a mistake, a 400."""
    if req.query:
        raise HTTPError(400, "%s takes no query parameters (got %r)" % (
            req.path[:200], req.query[:200]))


class AdminListener:
    """The admin router served by its own ProbeServer on `--admin-addr`."""

    def __init__(self, router: AdminRouter, addr: Tuple[str, int],
                 settings: Dict[str, Any]) -> None:
        self.router = router
        self.addr = addr
        self.server = ProbeServer(router.respond, settings.get("read_timeout", 10.0),
                                  settings.get("write_timeout", 10.0),
                                  settings.get("idle_timeout", 120.0), ADMIN_MAX_CONNECTIONS,
                                  ADMIN_MAX_BODY)

    def start(self) -> str:
        """Bind and serve (inside the running loop); returns the address it listens on."""
        sock = bind_listener(self.addr[0], self.addr[1], "--admin-addr")
        self.server.add_listener(sock)
        host, port = sock.getsockname()[:2]
        return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)

    def close(self) -> None:
        """Stop listening and close every admin connection."""
        self.server.close()

    def waits_open(self) -> int:
        """preStop waits still open (probed must not exit before they are answered)."""
        return self.router.waiter.active if self.router.waiter is not None else 0


def build_admin(settings: Dict[str, Any], pod: Pod, control: Scheduler, checks: Sequence[Check],
                log: EventLog, registry: HeartbeatRegistry) -> Optional[AdminListener]:
    """The admin listener `settings` ask for, or None; ConfigError for a configuration that
    needs one but has none (push heartbeats, manual checks) or an unusable token file."""
    addr = settings.get("admin_addr")
    token_file = settings.get("admin_token_file")
    if addr is None:
        for check in checks:
            if isinstance(check, ManualCheck):
                raise ConfigError("check %r (manual) is set by POST /v1/become-ready on the "
                                  "admin listener, but --admin-addr is off (e.g. --admin-addr "
                                  ":9090)" % check.name)
        if any(isinstance(c, HeartbeatCheck) and c.pushed for c in checks):
            raise ConfigError("a heartbeat check without path= reads beats POSTed to the admin "
                              "listener, but --admin-addr is off (give --admin-addr :9090, or "
                              "path=DIR for file beats)")
        if token_file:
            raise ConfigError("--admin-token-file %s: has no effect without --admin-addr" %
                              token_file)
        return None
    token = AdminToken(token_file) if token_file else None
    if token is not None:
        token.validate()
    elif not addr[0].startswith("127.") and addr[0] not in ("::1", "localhost"):
        log.warn("admin listener without --admin-token-file on a non-loopback address: "
                 "anyone who reaches it can drain this pod", addr="%s:%d" % addr)
    waiter = DrainWaiter(pod, control, checks, log)
    return AdminListener(AdminRouter(pod, control, registry, log, token, waiter), addr, settings)
