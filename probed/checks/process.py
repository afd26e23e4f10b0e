"""Check kind `process`: which incarnation of the backend process is answering.

It reads `process_start_time_seconds` (the Prometheus client libraries export it; vLLM and
SGLang have it) from the shared scrape.

llama-server has no such gauge; its /metrics replies
carry a `Process-Start-Time-Unix` header whose value, despite the name, is monotonic
microseconds (about the machine's uptime at the process start): no time, but a per-process
identity, reported as an opaque incarnation string. A new value means the server restarted,
even when the restart was faster than one poll and no connection was ever refused. It belongs
to no group by default: its job is to tell the engine, which unlatches `started`.
"""

from typing import Optional

from ..expfmt import parse_selector
from ..values import format_timestamp, parse_http_url
from .base import CheckResources, CheckSpec, Observation, Param
from .http import HTTP_COMMON_PARAMS, HTTPPollingCheck
from .metric import metrics_source, parse_selector_param, scrape_failure, scrape_selectors

PROCESS_START = "process_start_time_seconds"
PROCESS_HEADER = "Process-Start-Time-Unix"  # llama-server
PROCESS_HEADER_MAX = 64  # characters of the header value kept as the identity


class ProcessCheck(HTTPPollingCheck):
    """Reports the backend's process start time (or identity header) as its incarnation."""

    kind = "process"
    default_probes = frozenset()
    default_interval = 5.0
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True, help="metrics URL"),
        "metric": Param(parse_selector_param, default=parse_selector(PROCESS_START),
                        help="gauge holding the process start time (Unix seconds)"),
        "identity-header": Param(str, default=PROCESS_HEADER,
                                 help="reply header naming the process (without the gauge)"),
    })

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        metrics_source(self, self.config["url"], [self.config["metric"]], self.request)
        self.fresh = False  # after a restart: no scrape the other checks took before it

    def target(self) -> str:
        return "%s %s | header %s" % (self.config["url"], self.config["metric"],
                                      self.config["identity-header"])

    def forget(self) -> None:
        self.fresh = True

    async def observe(self) -> Observation:
        # A shared scrape up to 1 s old may come from the process that just died: read right
        # after a restart, its identity would look like yet another restart.
        result = await scrape_selectors(self, self.config["url"], [self.config["metric"]],
                                        self.request, max_age=0.0 if self.fresh else None)
        if result.error:
            return scrape_failure(result)
        self.fresh = False
        series = result.series[0]
        if series:
            started = max(value for _, value in series)
            return Observation(True, "process started %s" % format_timestamp(started), started,
                               incarnation=started)
        header = self.config["identity-header"]
        value = result.headers.get(header.lower(), "").strip()[:PROCESS_HEADER_MAX]
        if value:
            shown = "%s %s" % (header, value)
            return Observation(True, "process " + shown, incarnation=shown)
        return Observation(True, "no %s: restarts show only as refusals and counter resets"
                           % self.config["metric"].name)
