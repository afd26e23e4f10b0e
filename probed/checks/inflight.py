"""Check kind `inflight`: how many requests the backend still has (running + waiting).

It belongs to no group: the preStop drain (`GET /wait-for-drain` on the admin listener) reads
it, polling fast, to return once the server has nothing left in flight. Every selector's
series are summed (running and waiting over every engine), unlike `metric`'s fallbacks.
"""

from typing import Optional

from ..values import parse_http_url
from .base import Check, CheckResources, CheckSpec, Observation, Param
from .http import HTTP_COMMON_PARAMS, HTTPPollingCheck
from .metric import format_value, metrics_source, parse_selector_param, scrape_selectors

INFLIGHT_MAX_AGE = 0.0  # a drain decision needs a reading taken after it was asked for


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
    })

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        metrics_source(self, self.config["url"], self.config["metric"], self.request)

    def target(self) -> str:
        return "%s %s" % (self.config["url"], " + ".join(map(str, self.config["metric"])))

    async def observe(self) -> Observation:
        result = await scrape_selectors(self, self.config["url"], self.config["metric"],
                                        self.request, max_age=INFLIGHT_MAX_AGE)
        if result.error:
            return result.failure()
        total = sum(value for series in result.series for _, value in series)
        return Observation(True, "%s in flight" % format_value(total), total)
