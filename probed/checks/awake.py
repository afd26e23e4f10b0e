"""Check kind `awake`: a vLLM engine that was put to sleep is not ready, though /health says 200.

The gauge `vllm:engine_sleep_state{sleep_state="awake"}` (min over engines: one sleeping rank
is enough to be unready) is the source; servers without it are asked `/is_sleeping`, which
only exists in vLLM's dev mode. A 404 there means "cannot tell", not "asleep".
"""

from typing import Any, Mapping, Optional, Tuple

from ..client import FetchError, fetch
from ..expfmt import parse_selector
from ..values import parse_http_url
from .base import Check, CheckResources, CheckSpec, Observation, Param
from .http import HTTP_COMMON_PARAMS, HTTPPollingCheck
from .metric import metrics_source, scrape_selectors

AWAKE_SELECTOR = parse_selector('vllm:engine_sleep_state{sleep_state="awake"}')


class AwakeCheck(HTTPPollingCheck):
    """Passes while every engine is awake (or when the server cannot tell)."""

    kind = "awake"
    default_probes = frozenset(("ready",))
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True, help="vLLM base URL"),
    })

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        metrics_source(self, self.config["url"].rstrip("/") + "/metrics", [AWAKE_SELECTOR],
                       self.request)

    def target(self) -> str:
        return self.config["url"].rstrip("/") + "/metrics engine_sleep_state, /is_sleeping"

    async def observe(self) -> Observation:
        base = self.config["url"].rstrip("/")
        result = await scrape_selectors(self, base + "/metrics", [AWAKE_SELECTOR], self.request)
        if result.error:
            return result.failure()
        series = result.series[0]
        if series:
            asleep = sorted(labels.get("engine", "?") for labels, value in series if value < 1)
            if asleep:
                return Observation(False, "sleeping (engine %s; vllm:engine_sleep_state)" % (
                    ",".join(asleep)), 0.0, detail={"asleep_engines": asleep})
            return Observation(True, "awake (vllm:engine_sleep_state)", 1.0)
        return await self.ask_is_sleeping(base)

    async def ask_is_sleeping(self, base: str) -> Observation:
        """Fallback for servers without the gauge: /is_sleeping (dev mode only)."""
        try:
            resp = await fetch(base + "/is_sleeping", headers=self.request.request_headers(),
                               timeout=self.spec.timeout, tls=self.request.tls,
                               resolver=self.resources.resolver)
        except FetchError as exc:
            return Observation(False, "/is_sleeping: %s" % exc)
        if resp.status == 404:
            return Observation(True, "sleep state unknown (no sleep gauge; /is_sleeping is "
                                     "dev mode only)")
        try:
            sleeping = resp.json().get("is_sleeping") if resp.status == 200 else None
        except (ValueError, AttributeError):
            sleeping = None
        if sleeping is None:
            return Observation(False, "/is_sleeping: unexpected reply HTTP %d" % resp.status)
        if sleeping:
            return Observation(False, "sleeping (/is_sleeping)", 0.0)
        return Observation(True, "awake (/is_sleeping)", 1.0)

    def judge(self, obs: Observation, config: Mapping[str, Any], was_ok: bool) -> Tuple[bool, str]:
        return obs.ok, obs.reason
