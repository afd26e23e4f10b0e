"""Check kinds that talk to the model: `models` (served and listed) and `inference` (a 1-token
completion through the OpenAI API, or any JSON POST endpoint with an expected field).

A synthetic inference is the only signal that proves the engine generates: vLLM's /health
stays 200 while its engine core hangs or its Ray workers are gone.
"""

import json
import time
from typing import Any, Dict, List, Mapping, Optional

from ..blocking import Resolver
from ..client import FetchError, fetch
from ..values import ConfigError, parse_bool, parse_http_url, parse_positive_count
from .base import Check, CheckResources, CheckSpec, Observation, Param
from .http import (
    HTTP_COMMON_PARAMS,
    HTTPPollingCheck,
    HTTPRequestSettings,
    body_snippet,
    status_hint,
)

API_KEY_ENVS = ("VLLM_API_KEY", "OPENAI_API_KEY")
INFERENCE_APIS = ("completions", "chat", "json")
INFERENCE_MAX_BODY = 1 << 20


def parse_api(text: str) -> str:
    """completions, chat or json."""
    if text not in INFERENCE_APIS:
        raise ValueError("expected one of %s" % ", ".join(INFERENCE_APIS))
    return text


def parse_json_text(text: str) -> Any:
    """A JSON document given as text."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError("expected JSON: %s" % exc) from None


def json_field(doc: Any, path: str) -> Any:
    """`choices.0.text` -> doc["choices"][0]["text"]; KeyError when absent."""
    for part in path.split("."):
        if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise KeyError(path)
    return doc


def api_settings(config: Mapping[str, Any]) -> HTTPRequestSettings:
    """Request settings; OpenAI-style APIs default to the usual key variables, while a custom
    JSON endpoint gets a token only when one is configured."""
    settings = HTTPRequestSettings(config)
    if not settings.token_file and not settings.token_envs and config.get("api") != "json":
        settings.token_envs = API_KEY_ENVS
    return settings


async def served_models(base: str, settings: HTTPRequestSettings, timeout: float,
                        resolver: Optional[Resolver] = None) -> List[str]:
    """Model ids from `<base>/v1/models`; raises FetchError or ValueError."""
    url = base.rstrip("/") + "/v1/models"
    resp = await fetch(url, headers=settings.request_headers(), timeout=timeout,
                       tls=settings.tls, resolver=resolver)
    if resp.status != 200:  # the URL requested, in full: a wrong base URL shows at once
        raise ValueError("GET %s: HTTP %d%s%s" % (url, resp.status, status_hint(resp.status), (
            ": " + body_snippet(resp.body)) if resp.body else ""))
    try:
        doc = resp.json()
    except ValueError:
        raise ValueError("GET %s: the reply is not JSON: %s" % (url, body_snippet(resp.body))) \
            from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise ValueError("GET %s: no \"data\" list in the reply" % url)
    if not all(isinstance(m, dict) and m.get("id") is not None for m in data):
        raise ValueError("GET %s: a model entry without an \"id\"" % url)
    return [str(m["id"]) for m in data]


class ModelsCheck(HTTPPollingCheck):
    """The server lists `model` (or any model) on /v1/models."""

    kind = "models"
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True, help="server base URL"),
        "model": Param(str, help="model id that must be listed (default: any)"),
    })

    def request_settings(self) -> HTTPRequestSettings:
        return api_settings(self.config)

    def target(self) -> str:
        return self.config["url"].rstrip("/") + "/v1/models"

    async def observe(self) -> Observation:
        try:
            models = await served_models(self.config["url"], self.request, self.spec.timeout,
                                         self.resources.resolver)
        except FetchError as exc:
            return Observation(False, str(exc), detail={"error": exc.kind})
        except ValueError as exc:
            return Observation(False, str(exc))
        want = self.config.get("model")
        if want and want not in models:
            return Observation(False, "model %r not served (serving: %s)" % (
                want, ", ".join(models) or "none"), detail={"models": models})
        if not models:
            return Observation(False, "no model served yet", detail={"models": models})
        return Observation(True, "serving " + ", ".join(models), len(models),
                           detail={"models": models})


class InferenceCheck(HTTPPollingCheck):
    """A tiny completion returns in time: the engine really generates."""

    kind = "inference"
    default_timeout = 30.0
    default_interval = 60.0
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True,
                     help="server base URL (api=completions|chat) or endpoint URL (api=json)"),
        "api": Param(parse_api, default="completions", help="completions, chat or json"),
        "model": Param(str, help="model id (default: the first on /v1/models)"),
        "prompt": Param(str, default="Hi", help="prompt text"),
        "max-tokens": Param(parse_positive_count, default=1, help="tokens to generate"),
        "body": Param(parse_json_text, help="JSON request body (api=json)"),
        "expect-field": Param(str, help="dotted path that must be in the JSON reply"),
        "idle-only": Param(parse_bool, default=False,
                           help="skip while metrics show tokens flowing (needs metrics-url)"),
        "metrics-url": Param(parse_http_url, help="metrics URL for idle-only"),
    })

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        self.model: Optional[str] = self.config.get("model")
        # idle-only reads the progress of this metrics URL (the server's own by default)
        self.metrics_url: Optional[str] = self.config.get("metrics-url")
        if self.config["idle-only"] and not self.metrics_url:
            if self.config["api"] == "json":
                raise ConfigError("%s (inference): idle-only=true needs metrics-url=URL with "
                                  "api=json" % spec.origin)
            self.metrics_url = self.config["url"].rstrip("/") + "/metrics"

    def request_settings(self) -> HTTPRequestSettings:
        return api_settings(self.config)

    def target(self) -> str:
        return self.endpoint()

    def endpoint(self) -> str:
        """The URL the completion is POSTed to."""
        base = self.config["url"].rstrip("/")
        api = self.config["api"]
        return {"completions": base + "/v1/completions",
                "chat": base + "/v1/chat/completions"}.get(api, self.config["url"])

    async def observe(self) -> Observation:
        if self.config["idle-only"] and self.busy():
            return Observation(True, "skipped: tokens are flowing, the engine generates")
        try:
            body = await self.request_body()
            resp = await fetch(self.endpoint(), method="POST", body=body,
                               headers=dict(self.request.request_headers(),
                                            **{"Content-Type": "application/json"}),
                               timeout=self.spec.timeout, max_body=INFERENCE_MAX_BODY,
                               tls=self.request.tls, resolver=self.resources.resolver)
        except FetchError as exc:
            return Observation(False, str(exc), detail={"error": exc.kind})
        except ValueError as exc:
            return Observation(False, str(exc))
        return self.read_reply(resp.status, resp.body, resp.elapsed)

    def busy(self) -> bool:
        """Whether the progress check of `metrics-url` saw tokens rise within one interval."""
        url = self.metrics_url
        return url is not None and time.monotonic() - self.resources.progress.last(url) < self.spec.interval

    async def request_body(self) -> bytes:
        """The POST body; finds the model on /v1/models the first time it is needed."""
        api = self.config["api"]
        if api == "json":
            return json.dumps(self.config.get("body") or {}).encode("utf-8")
        if not self.model:
            models = await served_models(self.config["url"], self.request, self.spec.timeout,
                                         self.resources.resolver)
            if not models:
                raise ValueError("no model served yet")
            self.model = models[0]
        doc: Dict[str, Any] = {"model": self.model, "max_tokens": self.config["max-tokens"],
                               "temperature": 0}
        if api == "chat":
            doc["messages"] = [{"role": "user", "content": self.config["prompt"]}]
        else:
            doc["prompt"] = self.config["prompt"]
        return json.dumps(doc).encode("utf-8")

    def read_reply(self, status: int, body: bytes, elapsed: float) -> Observation:
        """Pass on a 2xx JSON reply that has the expected field."""
        if not 200 <= status < 300:
            if status == 404 and not self.config.get("model"):
                self.model = None  # the served model may have changed: look again next time
            return Observation(False, "HTTP %d%s: %s" % (status, status_hint(status),
                                                         body_snippet(body)),
                               detail={"status": status})
        field = self.config.get("expect-field") or ("choices" if self.config["api"] != "json"
                                                    else None)
        try:
            doc = json.loads(body.decode("utf-8"))
            found = json_field(doc, field) if field else doc
        except (ValueError, UnicodeDecodeError):
            return Observation(False, "HTTP %d but the reply is not JSON" % status)
        except KeyError:
            return Observation(False, "HTTP %d but the reply has no %r" % (status, field))
        if found in ([], {}, None, ""):
            return Observation(False, "HTTP %d but %r is empty" % (status, field or "the reply"))
        return Observation(True, "generated in %dms" % round(elapsed * 1000), elapsed,
                           detail={"status": status, "model": self.model})
