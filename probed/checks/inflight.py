"""Check kind `inflight`: how many requests the backend still has (running + waiting).

It belongs to no group: the preStop drain (`GET /wait-for-drain` on the admin listener) reads
it, polling fast, to return once the server has nothing left in flight. Every selector's
series are summed (running and waiting over every engine), unlike `metric`'s fallbacks.

A sleeping or paused vLLM engine holds the requests sent to it where /metrics does not count
them (running and waiting read 0), so a drain would end at once and the kubelet would kill
requests still held. With `awake-metric` (a gauge that is below 1 while the engine sleeps) and
`paused-url` (vLLM's /is_paused, dev mode only; an engine call, see checks/awake.py) the count
is reported unknown instead, and the drain waits: this is the limit of what the server shows,
not a count of the held requests.
"""

import asyncio
from typing import List, Optional

from ..client import FetchError
from ..expfmt import Selector
from ..values import parse_http_url
from .awake import PauseRoute, no_pause
from .base import CheckResources, CheckSpec, Observation, Param
from .http import HTTP_COMMON_PARAMS, HTTPPollingCheck
from .metric import (format_value, metrics_source, parse_selector_param, scrape_failure,
                     scrape_selectors)

INFLIGHT_MAX_AGE = 0.0  # a drain decision needs a reading taken after it was asked for
HELD_NOTE = "the requests it holds are not counted in /metrics"


class InflightCheck(HTTPPollingCheck):
    """The sum of every selected series: requests the server is still working on."""

    kind = "inflight"
    default_probes = frozenset()
    default_interval = 10.0
    scheduled = False
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True, help="metrics URL"),
        "metric": Param(parse_selector_param, repeat=True, required=True,
                        help="series to add up, e.g. vllm:num_requests_running (repeatable)"),
        "awake-metric": Param(parse_selector_param, help="gauge < 1 while asleep: count unknown"),
        "paused-url": Param(parse_http_url, help="vLLM's /is_paused: paused, count unknown"),
    })

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        metrics_source(self, self.config["url"], self.selectors(), self.request)
        paused_url = self.config.get("paused-url")
        self.pause = PauseRoute(paused_url) if paused_url else None

    def selectors(self) -> List[Selector]:
        """The series it adds up, then the sleep gauge when it reads one."""
        awake_sel = self.config.get("awake-metric")
        return list(self.config["metric"]) + ([awake_sel] if awake_sel is not None else [])

    def target(self) -> str:
        return "%s %s" % (self.config["url"], " + ".join(map(str, self.config["metric"])))

    async def observe(self) -> Observation:
        selectors = list(self.config["metric"])
        awake_sel = self.config.get("awake-metric")
        result, paused = await asyncio.gather(
            scrape_selectors(self, self.config["url"], self.selectors(), self.request,
                             max_age=INFLIGHT_MAX_AGE),
            self.pause.state(self.request, self.spec.timeout, self.resources.resolver)
            if self.pause else no_pause())
        if result.error:
            return scrape_failure(result)
        if awake_sel is not None and any(v < 1 for _, v in result.series[-1]):
            return Observation(False, "engine asleep (%s): %s" % (awake_sel.name, HELD_NOTE))
        if isinstance(paused, FetchError):
            return Observation(False, "pause state unknown: /is_paused: %s" % paused)
        if paused:
            return Observation(False, "engine paused (/is_paused): " + HELD_NOTE)
        total = sum(value for series in result.series[:len(selectors)] for _, value in series)
        return Observation(True, "%s in flight" % format_value(total), total)

    def forget(self) -> None:
        if self.pause is not None:
            self.pause.forget()
