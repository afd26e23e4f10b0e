"""Check kind `process`: which incarnation of the backend process is answering.

It reads `process_start_time_seconds` (the Prometheus client libraries export it; vLLM,
SGLang and llama.cpp have it) from the shared scrape. A new value means the server restarted,
even when the restart was faster than one poll and no connection was ever refused. It belongs
to no group by default: its job is to tell the engine, which unlatches `started`.
"""

from typing import Optional

from ..expfmt import parse_selector
from ..values import format_timestamp, parse_http_url
from .base import Check, CheckResources, CheckSpec, Observation, Param
from .http import HTTP_COMMON_PARAMS, HTTPPollingCheck
from .metric import metrics_source, parse_selector_param, scrape_selectors

PROCESS_START = "process_start_time_seconds"


class ProcessCheck(HTTPPollingCheck):
    """Reports the backend's process start time as its incarnation."""

    kind = "process"
    default_probes = frozenset()
    default_interval = 5.0
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True, help="metrics URL"),
        "metric": Param(parse_selector_param, default=parse_selector(PROCESS_START),
                        help="gauge holding the process start time (Unix seconds)"),
    })

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        metrics_source(self, self.config["url"], [self.config["metric"]], self.request)

    def target(self) -> str:
        return "%s %s" % (self.config["url"], self.config["metric"])

    async def observe(self) -> Observation:
        result = await scrape_selectors(self, self.config["url"], [self.config["metric"]],
                                        self.request)
        if result.error:
            return result.failure()
        series = result.series[0]
        if not series:
            return Observation(True, "no %s: restarts show only as refusals and counter resets"
                               % self.config["metric"].name)
        started = max(value for _, value in series)
        return Observation(True, "process started %s" % format_timestamp(started), started,
                           incarnation=started)

