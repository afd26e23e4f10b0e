"""Check kind `awake`: a vLLM engine that was put to sleep or paused is not ready, though
/health says 200.

The gauge `vllm:engine_sleep_state{sleep_state="awake"}` (min over engines: one sleeping rank
is enough to be unready) is the source. A paused engine (`POST /pause`, for weight updates)
still reads awake; only `/is_paused` tells, and servers without the gauge only `/is_sleeping`.
Both exist only in vLLM's dev mode (VLLM_SERVER_DEV_MODE=1), and both are calls into the engine
that a real vLLM 0.32 never answers when the engine dies while one is in flight: its API server
then waits for them and never exits, so the pod is never restarted. They are asked only with
`ask-engine=true` (the preset's --vllm-dev-mode). A 404 there means "cannot tell", not
"asleep"; a 404 from /is_paused is remembered until the backend restarts.

Idle sleep (vLLM `--sleep-idle-ttl`, llama.cpp `--sleep-idle-seconds`) wakes on the next request,
so such a pod stays ready: with `idle-sleep=true` a sleeping engine passes. vLLM shows nothing
that tells its own idle sleep from a manual `/sleep` (its idle-sleep manager keeps that to
itself; the gauge and /is_sleeping read the same), so the operator says which one the server
does; a manual /sleep on a server declared idle-sleeping reads ready too.
"""

import asyncio
from typing import Any, Mapping, Optional, Tuple, Union

from ..blocking import Resolver
from ..client import FetchError, fetch
from ..expfmt import parse_selector
from ..values import parse_bool, parse_http_url
from .base import CheckResources, CheckSpec, Observation, Param
from .http import HTTP_COMMON_PARAMS, HTTPPollingCheck, HTTPRequestSettings
from .metric import metrics_source, scrape_failure, scrape_selectors

AWAKE_SELECTOR = parse_selector('vllm:engine_sleep_state{sleep_state="awake"}')
IDLE_SLEEP_NOTE = "idle sleep: wakes on the next request"


async def ask_flag(url: str, field: str, settings: HTTPRequestSettings, timeout: float,
                   resolver: Optional[Resolver] = None) -> Optional[bool]:
    """The boolean `field` of the JSON at `url` (vLLM's /is_sleeping, /is_paused); None on
    404 (a route that only dev mode has); ValueError on any other answer; FetchError."""
    resp = await fetch(url, headers=settings.request_headers(), timeout=timeout,
                       tls=settings.tls, resolver=resolver)
    if resp.status == 404:
        return None
    try:
        value = resp.json().get(field) if resp.status == 200 else None
    except (ValueError, AttributeError):
        value = None
    if not isinstance(value, bool):
        raise ValueError("%s: unexpected reply HTTP %d" % (url.rsplit("/", 1)[-1], resp.status))
    return value


class PauseRoute:
    """vLLM's `/is_paused` at `url`: asked until it answers 404 (no dev mode) or something
    that is not vLLM's reply, then not again until `forget()` (a restarted server may have it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.missing = False

    async def paused(self, settings: HTTPRequestSettings, timeout: float,
                     resolver: Optional[Resolver] = None) -> Optional[bool]:
        """True/False, or None when the server cannot tell (no such route: a 404, or a reply
        that is not vLLM's); raises FetchError when the request fails."""
        if self.missing:
            return None
        try:
            found = await ask_flag(self.url, "is_paused", settings, timeout, resolver)
        except ValueError:
            found = None
        self.missing = found is None
        return found

    async def state(self, settings: HTTPRequestSettings, timeout: float,
                    resolver: Optional[Resolver] = None) -> Union[Optional[bool], FetchError]:
        """`paused()`, with a failed request returned instead of raised (for gather)."""
        try:
            return await self.paused(settings, timeout, resolver)
        except FetchError as exc:
            return exc

    def forget(self) -> None:
        self.missing = False


async def no_pause() -> Optional[bool]:
    """No pause route asked: the server cannot tell."""
    return None


def with_pause(awake: Observation, paused: Union[Optional[bool], FetchError]) -> Observation:
    """An awake engine may still be paused; a pause state we cannot read is only noted."""
    if isinstance(paused, FetchError):
        awake.reason += "; pause state unknown: /is_paused: %s" % paused
        return awake
    if paused:
        return Observation(False, "paused (/is_paused): the engine holds new requests", 0.0,
                           detail={"paused": True})
    return awake


class AwakeCheck(HTTPPollingCheck):
    """Passes while every engine is awake and not paused (or when the server cannot tell)."""

    kind = "awake"
    default_probes = frozenset(("ready",))
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True, help="vLLM base URL"),
        "idle-sleep": Param(parse_bool, default=False,
                            help="the server wakes on the next request: sleeping passes"),
        "ask-engine": Param(parse_bool, default=False,
                            help="ask /is_paused (and /is_sleeping without the gauge)"),
    })

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        metrics_source(self, self.config["url"].rstrip("/") + "/metrics", [AWAKE_SELECTOR],
                       self.request)
        self.pause = PauseRoute(self.config["url"].rstrip("/") + "/is_paused")

    def target(self) -> str:
        return self.config["url"].rstrip("/") + "/metrics engine_sleep_state, /is_sleeping, " \
            "/is_paused"

    async def observe(self) -> Observation:
        base = self.config["url"].rstrip("/")
        ask = self.config["ask-engine"]
        # Both at once: a busy API server answers each slowly, and they share one deadline.
        result, paused = await asyncio.gather(
            scrape_selectors(self, base + "/metrics", [AWAKE_SELECTOR], self.request),
            self.pause.state(self.request, self.spec.timeout, self.resources.resolver) if ask
            else no_pause())
        if result.error:
            return scrape_failure(result)
        series = result.series[0]
        if series:
            asleep = sorted(labels.get("engine", "?") for labels, value in series if value < 1)
            if asleep:
                return Observation(False, "sleeping (engine %s; vllm:engine_sleep_state)" % (
                    ",".join(asleep)), 0.0, detail={"asleep_engines": asleep})
            obs = Observation(True, "awake (vllm:engine_sleep_state)", 1.0)
        elif not ask:
            return Observation(True, "sleep state unknown (no sleep gauge; /is_sleeping is "
                                     "asked with ask-engine=true)")
        else:
            obs = await self.ask_is_sleeping(base)
            if not obs.ok:
                return obs
        return with_pause(obs, paused)

    async def ask_is_sleeping(self, base: str) -> Observation:
        """Fallback for servers without the gauge: /is_sleeping (dev mode only)."""
        try:
            sleeping = await ask_flag(base + "/is_sleeping", "is_sleeping", self.request,
                                      self.spec.timeout, self.resources.resolver)
        except FetchError as exc:
            return Observation(False, "/is_sleeping: %s" % exc)
        except ValueError as exc:
            return Observation(False, "/%s" % exc)
        if sleeping is None:
            return Observation(True, "sleep state unknown (no sleep gauge; /is_sleeping is "
                                     "dev mode only)")
        if sleeping:
            return Observation(False, "sleeping (/is_sleeping)", 0.0, detail={"asleep": True})
        return Observation(True, "awake (/is_sleeping)", 1.0)

    def forget(self) -> None:
        self.pause.forget()

    def judge(self, obs: Observation, config: Mapping[str, Any], was_ok: bool) -> Tuple[bool, str]:
        asleep = obs.detail is not None and (
            "asleep_engines" in obs.detail or obs.detail.get("asleep"))
        if asleep and config["idle-sleep"]:
            return True, "%s; %s" % (obs.reason, IDLE_SLEEP_NOTE)
        return obs.ok, obs.reason
