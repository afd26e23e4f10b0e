"""Check kind `relay`: the verdict of a remote probe endpoint, so one pod's readiness mirrors
another's (a requester pod following its server pod's `/readyz`, or vLLM's `/health`).

Passes on any 2xx; the reason carries the remote body's first line. Only `ready` by default: a
remote pod's state must never restart this container, nor hold up its start. Must never follow
a redirect.
"""

from ..client import FetchError, fetch
from ..values import parse_http_url
from .base import Check, Observation, Param
from .http import HTTP_COMMON_PARAMS, HTTPPollingCheck

RELAY_MAX_BODY = 64 * 1024  # a probe reply is a line or a small JSON document
RELAY_LINE_CHARS = 200  # of the remote's first line, in reasons and logs


def first_body_line(body: bytes) -> str:
    """The first non-empty line of a body, printable characters only, capped in length."""
    line = body.decode("utf-8", "replace").strip().split("\n", 1)[0]
    line = "".join(c if c.isprintable() else " " for c in line).strip()
    return line[:RELAY_LINE_CHARS] + ("..." if len(line) > RELAY_LINE_CHARS else "")


class RelayCheck(HTTPPollingCheck):
    """Passes while the remote endpoint answers 2xx."""

    kind = "relay"
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True,
                     help="remote probe URL, e.g. http://server-pod:8080/readyz"),
    })
    default_probes = frozenset(("ready",))
    default_interval = 2.0

    def target(self) -> str:
        return "GET %s" % self.config["url"]

    async def observe(self) -> Observation:
        try:
            resp = await fetch(self.config["url"], headers=self.request.request_headers(),
                               timeout=self.spec.timeout, max_body=RELAY_MAX_BODY,
                               tls=self.request.tls, resolver=self.resources.resolver)
        except FetchError as exc:
            return Observation(False, str(exc), detail={"error": exc.kind})
        line = first_body_line(resp.body)
        reason = "remote HTTP %d%s" % (resp.status, ": " + line if line else "")
        return Observation(200 <= resp.status < 300, reason, float(resp.status),
                           detail={"status": resp.status, "body": line})
