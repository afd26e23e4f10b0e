"""Check kinds that read Prometheus metrics: `metric` (a threshold) and `progress` (stalls).

Both scrape through the shared `MetricsSource` of their URL, so a preset's several checks cost
one scrape per interval. `observe` reduces the body to numbers; `judge` applies thresholds, so a
probe can ask `/readyz?queue.max=5` of the cached numbers.
"""

import re
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..expfmt import AGGREGATIONS, Selector, aggregate, parse_selector
from ..scrape import MetricsSource, selected
from ..values import ConfigError, format_duration, parse_duration, parse_http_url, parse_number
from .base import Check, CheckResources, CheckSpec, Observation, Param
from .http import HTTP_COMMON_PARAMS, HTTPPollingCheck, HTTPRequestSettings, status_hint


def parse_selector_param(text: str) -> Selector:
    """A series selector, e.g. `vllm:num_requests_waiting{model_name="m"}`."""
    return parse_selector(text)


def parse_aggregation(text: str) -> str:
    """One of sum, max, min, avg, count."""
    if text not in AGGREGATIONS:
        raise ValueError("expected one of %s" % ", ".join(AGGREGATIONS))
    return text


def parse_missing(text: str) -> str:
    """What a missing series means: pass or fail."""
    if text not in ("pass", "fail"):
        raise ValueError("expected pass or fail")
    return text


def format_value(value: float) -> str:
    """A metric value the way a person reads it: 4, 0.93, 1.2e+06, NaN, +Inf."""
    if value != value or value in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
    return "%d" % value if value == int(value) and abs(value) < 1e15 else "%.4g" % value


class ScrapeResult:
    """What one scrape said about a list of selectors: values per selector, or an error."""

    __slots__ = ("series", "error", "empty", "refused", "headers")

    def __init__(self, series: List[List[Tuple[Dict[str, str], float]]], error: str = "",
                 empty: bool = False, refused: bool = False,
                 headers: Optional[Dict[str, str]] = None) -> None:
        self.series = series
        self.error = error
        self.empty = empty
        self.refused = refused
        self.headers = headers or {}  # the scrape reply's headers, lower-case names

    def failure(self) -> Observation:
        """The failed observation for a scrape that went wrong (refusals marked as such)."""
        return Observation(False, self.error, refused=self.refused)


def metrics_source(check: Check, url: str, selectors: Sequence[Selector],
                   settings: HTTPRequestSettings) -> MetricsSource:
    """The shared source of `url`, with `check` registered as a reader of `selectors` (call it
    when the check is built, so the first scrape already selects for every reader)."""
    source = check.resources.scrapes.source(url, settings.identity(), settings.headers,
                                            settings.tls)
    source.add_reader(check, selectors, check.spec.interval)
    return source


async def scrape_selectors(check: Check, url: str, selectors: Sequence[Selector],
                           settings: HTTPRequestSettings,
                           max_age: Optional[float] = None) -> ScrapeResult:
    """Every selector's series from the shared scrape of `url`: one no older than `max_age`,
    by default the source's reuse window (about the fastest reader's interval)."""
    source = metrics_source(check, url, selectors, settings)
    reading = await source.read(check, check.spec.timeout, settings.request_headers,
                                max_age, check.resources.resolver)
    if reading.error:
        return ScrapeResult([], "%s: %s" % (url, reading.error), refused=reading.refused)
    if not 200 <= reading.status < 300 or reading.status == 204:
        location = reading.location
        return ScrapeResult([], "%s: HTTP %d%s" % (url, reading.status, (
            " (redirect to %s: give that URL)" % location[:200]) if location else ""))
    return ScrapeResult(selected(reading, selectors), empty=reading.empty, headers=reading.headers)


_SCRAPE_STATUS = re.compile(r": HTTP (\d{3})$")


def scrape_error(result: ScrapeResult) -> str:
    """A failed scrape's error, with the known cause of its status (401: the server wants the
    API key; 501: llama-server without --metrics) said where the reason is read."""
    found = _SCRAPE_STATUS.search(result.error)
    return result.error + status_hint(int(found.group(1))) if found else result.error


def scrape_failure(result: ScrapeResult) -> Observation:
    """The failed observation of a scrape that went wrong (refusals marked as such)."""
    return Observation(False, scrape_error(result), refused=result.refused)


def first_present(selectors: Sequence[Selector], found: Sequence[Sequence[Any]]
                  ) -> Tuple[Optional[Selector], Sequence[Any]]:
    """The first selector (of fallbacks) with series, and its series; (None, []) if none."""
    for selector, series in zip(selectors, found):
        if series:
            return selector, series
    return None, []


def absent_note(selectors: Sequence[Selector], result: ScrapeResult) -> str:
    """For a body that parsed but has none of `selectors`: the reason suffix that makes the
    drift visible (a renamed or removed metric would otherwise pass as missing forever)."""
    if result.empty:
        return ""
    return "; absent from the body: %s" % " | ".join(s.name for s in selectors)


METRIC_PARAMS: Dict[str, Param] = dict(HTTP_COMMON_PARAMS, **{
    "url": Param(parse_http_url, required=True, help="metrics URL, e.g. http://host:8000/metrics"),
    "metric": Param(parse_selector_param, required=True, repeat=True,
                    help="series selector; repeat for fallbacks (the first present wins)"),
    "agg": Param(parse_aggregation, default="sum", overridable=True,
                 help="sum, max, min, avg or count over matching series"),
    "max": Param(parse_number, overridable=True, help="fail above this"),
    "min": Param(parse_number, overridable=True, help="fail below this"),
    "recover": Param(parse_number, overridable=True,
                     help="after failing on max, pass again only at or below this"),
    "missing": Param(parse_missing, default="pass", overridable=True,
                     help="no matching series (or an empty body): pass or fail"),
})


def judge_bounds(value: float, label: str, config: Mapping[str, Any],
                 was_ok: bool) -> Tuple[bool, str]:
    """Apply max/min, with `recover` as the hysteresis band under max."""
    shown = "%s = %s" % (label, format_value(value))
    if value != value:  # NaN says "no number", so it follows the missing policy
        return config["missing"] == "pass", "%s (not a number: missing=%s)" % (
            shown, config["missing"])
    high, low, recover = config.get("max"), config.get("min"), config.get("recover")
    bounds = []  # a pass names its bounds too, so a healthy pod reads at a glance
    if high is not None:
        limit = high if was_ok or recover is None else min(recover, high)
        if value > limit:
            if limit == high:
                return False, "%s > max %s" % (shown, format_value(high))
            return False, "%s, not yet back to recover %s" % (shown, format_value(limit))
        bounds.append(" <= %s %s" % ("max" if limit == high else "recover", format_value(limit)))
    if low is not None:
        if value < low:
            return False, "%s < min %s" % (shown, format_value(low))
        bounds.append(" >= min %s" % format_value(low))
    return True, shown + ",".join(bounds)


class MetricCheck(HTTPPollingCheck):
    """An aggregated metric within bounds; the observed value is shown and exported."""

    kind = "metric"
    params = METRIC_PARAMS

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        metrics_source(self, self.config["url"], self.config["metric"], self.request)
        recover, high = self.config.get("recover"), self.config.get("max")
        if recover is not None and (high is None or recover > high):
            raise ConfigError("%s (metric): recover=%s: expected a value <= max" % (
                spec.origin, format_value(recover)))

    def target(self) -> str:
        return "%s %s(%s)" % (self.config["url"], self.config["agg"],
                              " | ".join(str(s) for s in self.config["metric"]))

    async def observe(self) -> Observation:
        selectors = self.config["metric"]
        result = await scrape_selectors(self, self.config["url"], selectors, self.request)
        if result.error:
            return scrape_failure(result)
        selector, series = first_present(selectors, result.series)
        if selector is not None:
            values = [v for _, v in series]
            return Observation(True, "", aggregate(values, self.config["agg"]), detail={
                "metric": str(selector), "series": len(series), "values": values})
        detail: Dict[str, Any] = {"metric": " | ".join(map(str, selectors)), "series": 0,
                                  "empty_body": result.empty}
        if not result.empty:
            detail["absent"] = [s.name for s in selectors]
        return Observation(True, absent_note(selectors, result), None, detail=detail)

    def judge(self, obs: Observation, config: Mapping[str, Any], was_ok: bool) -> Tuple[bool, str]:
        if not obs.ok or obs.detail is None:
            return False, obs.reason
        values = obs.detail.get("values")
        label = "%s(%s)" % (config["agg"], obs.detail["metric"])
        if not values:
            what = "empty metrics body" if obs.detail.get("empty_body") else "no series %s" % (
                obs.detail["metric"])
            return config["missing"] == "pass", "%s (missing=%s)%s" % (
                what, config["missing"], obs.reason)
        value = obs.value if config["agg"] == self.config["agg"] else aggregate(
            values, config["agg"])
        return judge_bounds(value, label, config, was_ok)  # type: ignore[arg-type]


PROGRESS_RUNNING = "vllm:num_requests_running"
# vLLM counts generated tokens every engine step. Measured on vLLM 0.32 (CPU): during decode
# vllm:iteration_tokens_total_count rises exactly as often (once per step that output tokens),
# and during a chunked prefill (301 prompt tokens in 16-token steps) neither moved until the
# first token came out, so the step histogram is no better heartbeat than this counter.
PROGRESS_COUNTER = "vllm:generation_tokens_total"


class ProgressCheck(HTTPPollingCheck):
    """Fails when requests are running but the token counter has stopped rising."""

    kind = "progress"
    default_probes = frozenset(("live",))
    default_interval = 5.0
    params = dict(HTTP_COMMON_PARAMS, **{
        "url": Param(parse_http_url, required=True, help="metrics URL"),
        "running": Param(parse_selector_param, default=[parse_selector(PROGRESS_RUNNING)],
                         repeat=True, help="in-flight requests (summed; repeat: fallbacks)"),
        "counter": Param(parse_selector_param, default=[parse_selector(PROGRESS_COUNTER)],
                         repeat=True, help="rises with every step of work (repeat: fallbacks)"),
        "stall-after": Param(parse_duration, default=120.0, overridable=True,
                             help="running > 0 and the counter flat this long is a stall"),
    })

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        metrics_source(self, self.config["url"],
                       list(self.config["running"]) + list(self.config["counter"]), self.request)
        self.last_counter: Optional[float] = None
        self.flat_since = 0.0
        self.counter_name = self.config["counter"][0].name  # the one the last reading used

    def target(self) -> str:
        return "%s %s vs %s" % (self.config["url"], " | ".join(map(str, self.config["running"])),
                                " | ".join(map(str, self.config["counter"])))

    async def observe(self) -> Observation:
        running_sels, counter_sels = self.config["running"], self.config["counter"]
        result = await scrape_selectors(self, self.config["url"],
                                        list(running_sels) + list(counter_sels), self.request)
        if result.error:  # a slow or failed scrape is no stall: live fails only on evidence
            return Observation(True, "progress unknown: " + scrape_error(result),
                               refused=result.refused)
        running_sel, running_series = first_present(running_sels,
                                                    result.series[:len(running_sels)])
        counter_sel, counter_series = first_present(counter_sels,
                                                    result.series[len(running_sels):])
        if counter_sel is None:
            shown = " | ".join(map(str, counter_sels))
            return Observation(True, "no series %s: progress unknown%s" % (
                shown, absent_note(counter_sels, result)), detail={
                    "absent": [s.name for s in counter_sels]} if not result.empty else None)
        if counter_sel.name != self.counter_name:
            self.counter_name, self.last_counter = counter_sel.name, None  # a fallback: new history
        running = sum(v for _, v in running_series)
        counter = sum(v for _, v in counter_series)
        obs = self.note(running, counter, time.monotonic())
        if running_sel is None and obs.detail is not None:  # never running: never a stall
            obs.detail["absent"] = [s.name for s in running_sels]
        return obs

    def note(self, running: float, counter: float, now: float) -> Observation:
        """Fold one (running, counter) reading in; a counter reset starts a new history."""
        last = self.last_counter
        if last is None or counter < last or counter > last or running <= 0:
            self.flat_since = now  # first reading, a restart, progress, or idle: no stall
        if last is not None and counter > last:
            self.resources.progress.note(self.config["url"], now)
        self.last_counter = counter
        flat_for = now - self.flat_since
        reset = last is not None and counter < last
        shown_last = format_value(last) if last is not None else ""
        detail = {"running": running, "counter": counter, "flat_seconds": round(flat_for, 3)}
        return Observation(True, "", flat_for, detail=detail, restart="%s went back from %s to %s" % (
            self.counter_name, shown_last, format_value(counter)) if reset else "")

    def forget(self) -> None:
        self.last_counter = None

    def on_deadline(self, timeout: float) -> Observation:
        # A slow scrape is no stall: live fails only on evidence.
        return Observation(True, "progress unknown: no reading within %s" % format_duration(
            timeout))

    def judge(self, obs: Observation, config: Mapping[str, Any], was_ok: bool) -> Tuple[bool, str]:
        if not obs.ok or obs.detail is None or obs.value is None:
            return obs.ok, obs.reason
        running = obs.detail["running"]
        absent = obs.detail.get("absent")
        if absent:
            return True, "idle; absent from the body: %s" % " | ".join(absent)
        if running > 0 and obs.value >= config["stall-after"]:
            return False, "stalled: %s running, %s flat for %s" % (
                format_value(running), self.counter_name, format_duration(
                    round(obs.value)))
        if running > 0:
            return True, "%s running, %s at %s (stall after %s flat)" % (
                format_value(running), self.counter_name, format_value(obs.detail["counter"]),
                format_duration(config["stall-after"]))
        return True, "idle"
