"""Check kind `http`: a request whose status (and optionally body) says pass or fail."""

from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..client import FetchError, TLSOptions, fetch, read_bearer_token
from ..values import parse_bool, parse_http_url, parse_status_ranges
from .base import Check, CheckResources, Observation, Param

BODY_SNIPPET = 120  # characters of a failing body shown in the reason
TOKENS_REMEMBERED = 4  # tokens kept for redaction after a rotation
HTTP_CHECK_MAX_BODY = 1 << 20


def parse_header_line(text: str) -> Tuple[str, str]:
    """`Name: value` -> (name, value)."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or any(c in name for c in " \t\r\n"):
        raise ValueError("expected a header like 'X-Name: value'")
    if "\r" in value or "\n" in value:
        raise ValueError("a header value cannot contain line breaks")
    return name.strip(), value.strip()


def body_snippet(body: bytes) -> str:
    """A short printable excerpt of a response body for a failure reason."""
    text = body.decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return text[:BODY_SNIPPET] + ("..." if len(text) > BODY_SNIPPET else "")


# Why a server answers a poll with these statuses, said where the reason is read. 401: vLLM
# guards /v1/* and llama-server everything but /health with --api-key. 501: llama-server has
# /metrics only when started with --metrics.
STATUS_HINTS = {
    401: "the server wants an API key: --api-key-file",
    403: "the server refused the API key: --api-key-file",
    501: "no such endpoint on this server: llama-server serves /metrics only with --metrics",
}


def status_hint(status: int) -> str:
    """` (why)` for a status with a known cause, else ''."""
    hint = STATUS_HINTS.get(status)
    return " (%s)" % hint if hint else ""


def parse_env_names(text: str) -> Tuple[str, ...]:
    """Environment variable names, comma-separated: the first one set wins."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or not all(n.replace("_", "a").isalnum() for n in names):
        raise ValueError("expected variable names like VLLM_API_KEY,OPENAI_API_KEY")
    return names


def status_in(status: int, ranges: Any) -> bool:
    """Whether `status` falls in one of the inclusive (low, high) ranges."""
    return any(low <= status <= high for low, high in ranges)


class HTTPRequestSettings:
    """What every HTTP-polling check shares: headers, Bearer token, TLS options."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.headers: Dict[str, str] = dict(config.get("header") or ())
        self.token_file: Optional[str] = config.get("token-file")
        self.token_envs: Tuple[str, ...] = tuple(config.get("token-env") or ())
        self.tokens_sent: List[str] = []  # the last few tokens read (a Secret may rotate)
        tls_needed = config.get("ca-file") or config.get("insecure")
        self.tls = TLSOptions(ca_file=config.get("ca-file"),
                              insecure=bool(config.get("insecure"))) if tls_needed else None

    def identity(self) -> Tuple[Any, ...]:
        """Everything here that changes a request: requests with equal identities may share
        one scrape, others never (a second check's token or CA must not ride on the first's)."""
        tls = (self.tls.ca_file, self.tls.insecure) if self.tls is not None else None
        return (tuple(sorted(self.headers.items())), self.token_file, self.token_envs, tls)

    def request_headers(self) -> Dict[str, str]:
        """Headers for one request; the token is read fresh so rotated secrets apply."""
        headers = dict(self.headers)
        if self.token_file or self.token_envs:
            token = read_bearer_token(self.token_file, self.token_envs)
            if token:
                headers["Authorization"] = "Bearer " + token
                if token not in self.tokens_sent:
                    self.tokens_sent = self.tokens_sent[-(TOKENS_REMEMBERED - 1):] + [token]
        return headers

    def secrets(self) -> Tuple[str, ...]:
        """Header values and tokens this check sends: a backend may echo them back."""
        return tuple(self.headers.values()) + tuple(self.tokens_sent)


HTTP_COMMON_PARAMS: Dict[str, Param] = {
    "header": Param(parse_header_line, repeat=True, secret=True,
                    help="extra request header 'Name: value' (repeatable)"),
    "token-file": Param(str, help="file holding a Bearer token (re-read on every poll)"),
    "token-env": Param(parse_env_names, help="environment variables holding a Bearer token, "
                                             "comma-separated (the first one set wins)"),
    "ca-file": Param(str, help="CA bundle for https"),
    "insecure": Param(parse_bool, default=False, help="skip https certificate checks"),
}


class HTTPPollingCheck(Check):
    """A check that polls over HTTP: its headers, token source and TLS built once, here."""

    def __init__(self, spec: Any, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        self.request = self.request_settings()

    def request_settings(self) -> HTTPRequestSettings:
        """How this kind's requests authenticate; kinds that speak an API may differ."""
        return HTTPRequestSettings(self.config)

    def secrets(self) -> Tuple[str, ...]:
        return self.request.secrets()


class HTTPCheck(HTTPPollingCheck):
    """Passes when the status is in `expect` and the body contains `contains`."""

    kind = "http"
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True, help="URL to request"),
        "method": Param(str.upper, default="GET", help="GET, POST, HEAD..."),
        "body": Param(str, help="request body (sent with Content-Length)"),
        "expect": Param(parse_status_ranges, default=((200, 399),), overridable=True,
                        help="passing status codes, e.g. 200-399,404"),
        "contains": Param(str, overridable=True, help="text the body must contain"),
        "hard": Param(parse_status_ranges, help="statuses that are the backend declaring itself "
                                                "dead (vLLM: 503): fail at once, no fail-after"),
        "loading": Param(str, help="text of a failing reply that says the server is loading "
                                   "(llama.cpp: Loading model): after start, a new incarnation"),
    })

    def target(self) -> str:
        return "%s %s" % (self.config["method"], self.config["url"])

    async def observe(self) -> Observation:
        body = self.config.get("body")
        try:
            resp = await fetch(self.config["url"], method=self.config["method"],
                               headers=self.request.request_headers(),
                               body=body.encode("utf-8") if body is not None else None,
                               timeout=self.spec.timeout, max_body=HTTP_CHECK_MAX_BODY,
                               tls=self.request.tls, resolver=self.resources.resolver)
        except FetchError as exc:
            return Observation(False, str(exc), detail={"error": exc.kind},
                               refused=exc.kind == "refused")
        detail = {"status": resp.status, "body": body_snippet(resp.body)}
        hard = bool(self.config.get("hard")) and status_in(resp.status, self.config["hard"])
        # A server that restarts faster than a poll interval is never seen refusing: its "I am
        # loading" reply is then the only sign that a new process answers (llama-server).
        says_loading: str = self.config.get("loading") or ""
        loading = bool(says_loading) and not status_in(resp.status, self.config["expect"]) and (
            says_loading.encode("utf-8") in resp.body)
        return Observation(True, "HTTP %d" % resp.status, float(resp.status), hard=hard,
                           detail=detail, raw=resp.body, loading=loading)

    def judge(self, obs: Observation, config: Mapping[str, Any], was_ok: bool) -> Tuple[bool, str]:
        if obs.value is None or obs.detail is None:
            return False, obs.reason
        status = int(obs.value)
        snippet = obs.detail.get("body", "")
        # A failure names the URL requested, in full: a wrong base URL (`/v1/health`) shows at once.
        if not status_in(status, config["expect"]):
            return False, "HTTP %d%s from %s%s" % (status, status_hint(status), self.target(),
                                                   (": " + snippet) if snippet else "")
        contains = config.get("contains")
        if contains and contains.encode("utf-8") not in (obs.raw or b""):
            return False, "HTTP %d from %s, body lacks %r" % (status, self.target(), contains)
        return True, "HTTP %d" % status
