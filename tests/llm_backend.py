"""A loopback server shaped like an OpenAI-compatible LLM server (vLLM's HTTP surface), with
per-path routes the test controls and a record of every request it received.

`tests/backends.Backend` answers every path alike; checks such as `awake` (/metrics, then
/is_sleeping), `models` and `inference` (/v1/models, then a completion) need one server that
answers each path differently. Defaults follow vLLM's OpenAI server:

    GET  /health                200, empty body (`health` changes the status)
    GET  /metrics               `metrics` (Prometheus text), no auth
    GET  /v1/models             {"object": "list", "data": [{"id": ...}]}
    POST /v1/completions        {"choices": [{"text": ...}]}; unknown model -> 404
    POST /v1/chat/completions   {"choices": [{"message": {...}}]}; unknown model -> 404

With `api_key` set, /v1/* answers 401 `{"error": "Unauthorized"}` (vLLM's body) unless the
request carries `Authorization: Bearer <api_key>`. `route()` replaces or adds a path;
`hang()` makes a path accept the request and never answer (until the test ends).
Loopback only; every wait is bounded.
"""

import http.server
import json
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

HANG_LIMIT = 30.0  # a hanging handler gives up after this even if the test forgets to close
UNAUTHORIZED = b'{"error": "Unauthorized"}'

Reply = Tuple[int, bytes]
Handler = Callable[["Exchange"], Reply]


class Exchange:
    """One request as the server saw it: method, path (no query), target, headers, body."""

    __slots__ = ("method", "path", "target", "headers", "body")

    def __init__(self, method: str, target: str, headers: Dict[str, str], body: bytes,
                 prefix: str = "") -> None:
        self.method = method
        self.target = target
        path = target.split("?", 1)[0]
        self.path = path[len(prefix):] if prefix and path.startswith(prefix + "/") else path
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """The request body parsed as JSON."""
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self) -> str:
        return "<Exchange %s %s>" % (self.method, self.target)


class LLMBackend:
    """An OpenAI-shaped HTTP server in a thread; see the module docstring."""

    def __init__(self, models: Sequence[str] = ("m",), api_key: Optional[str] = None,
                 metrics: bytes = b"", health: int = 200, prefix: str = "") -> None:
        self.prefix = prefix.rstrip("/")  # every path lives under it: a URL no other test used
        self.models = list(models)
        self.api_key = api_key
        self.metrics = metrics
        self.health = health
        self.requests: List[Exchange] = []
        self._routes: Dict[Tuple[str, str], Union[Handler, str]] = {
            ("GET", "/health"): lambda ex: (self.health, b""),
            ("GET", "/metrics"): lambda ex: (200, self.metrics),
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/completions"): self._completion,
            ("POST", "/v1/chat/completions"): self._completion,
        }
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT (plus the prefix)."""
        return "http://127.0.0.1:%d%s" % (self.port, self.prefix)

    def route(self, method: str, path: str, reply: Union[Handler, Reply]) -> None:
        """Answer `method path` with a fixed (status, body) or a function of the Exchange."""
        handler = reply if callable(reply) else (lambda ex, r=reply: r)  # type: ignore[misc]
        with self._lock:
            self._routes[(method, path)] = handler

    def hang(self, method: str, path: str) -> None:
        """Accept `method path` and never answer."""
        with self._lock:
            self._routes[(method, path)] = "hang"

    def seen(self, method: str, path: str) -> List[Exchange]:
        """Requests received for `method path`, oldest first."""
        with self._lock:
            return [r for r in self.requests if (r.method, r.path) == (method, path)]

    def close(self) -> None:
        """Release hanging handlers, stop serving, close the socket."""
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def __enter__(self) -> "LLMBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- default OpenAI-shaped routes ----------------------------------------------------------

    def authorized(self, ex: Exchange) -> bool:
        """Whether the request carries the Bearer key (always true without `api_key`)."""
        return self.api_key is None or ex.headers.get("authorization") == "Bearer " + self.api_key

    def _models(self, ex: Exchange) -> Reply:
        if not self.authorized(ex):
            return 401, UNAUTHORIZED
        data = [{"id": m, "object": "model", "owned_by": "vllm"} for m in self.models]
        return 200, json.dumps({"object": "list", "data": data}).encode()

    def _completion(self, ex: Exchange) -> Reply:
        if not self.authorized(ex):
            return 401, UNAUTHORIZED
        doc = ex.json()
        if doc.get("model") not in self.models:
            return 404, json.dumps({"object": "error", "type": "NotFoundError", "code": 404,
                                    "message": "The model `%s` does not exist." % doc.get(
                                        "model")}).encode()
        if ex.path.endswith("/chat/completions"):
            choice = {"index": 0, "message": {"role": "assistant", "content": "Hello"},
                      "finish_reason": "length"}
        else:
            choice = {"index": 0, "text": "Hello", "finish_reason": "length"}
        return 200, json.dumps({"id": "cmpl-1", "model": doc["model"], "choices": [choice],
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()

    # --- plumbing ------------------------------------------------------------------------------

    def _dispatch(self, ex: Exchange) -> Optional[Reply]:
        with self._lock:
            self.requests.append(ex)
            handler = self._routes.get((ex.method, ex.path))
        if handler == "hang":
            self._release.wait(HANG_LIMIT)
            return None
        if handler is None:
            return 404, b'{"detail": "Not Found"}'
        return handler(ex)  # type: ignore[operator]


def _make_handler(backend: LLMBackend) -> Any:
    class _Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            ex = Exchange(self.command, self.path, headers, body, backend.prefix)
            reply = backend._dispatch(ex)
            self.close_connection = True
            if reply is None:
                return
            status, data = reply
            self.send_response(status)
            ctype = "text/plain; version=0.0.4" if ex.path == "/metrics" else (
                "application/json")
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep pytest output clean

    return _Handler
