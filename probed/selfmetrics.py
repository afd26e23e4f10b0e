"""probed's own /metrics page (Prometheus text format 0.0.4) and the event-loop lag sampler.

Rendering is pure over the state the daemon already keeps and runs only when /metrics is
scraped; the only per-poll work is one histogram observation. Must never: touch a backend,
block, or render series whose label values a client chooses (the server folds request paths).
"""

import asyncio
import sys
import time
from bisect import bisect_left
from typing import Dict, List, Optional, Sequence, Tuple

from . import __version__
from .groups import GROUPS
from .pod import Pod
from .server import ServerStats

# Probe polls take from under a millisecond (a local TCP connect) to a check's whole timeout
# (an inference call, 30 s at most in practice): 1 ms .. 30 s, about 2.5x apart.
CHECK_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                          5.0, 10.0, 30.0)
# Lag is a histogram, not a last-sample gauge: a scrape every 15 s would show one sample in 30
# and miss the stall that made a kubelet probe (1 s timeout) fail; the histogram counts them all.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_SAMPLE_INTERVAL = 0.5  # seconds between lag samples: ~30 per 15 s scrape

_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})


class Histogram:
    """Bucket counts (non-cumulative; made cumulative when rendered), sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one value; `le` buckets are inclusive, as Prometheus defines them."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


def escape_label_value(value: str) -> str:
    """A label value as the text format needs it: backslash, double quote and newline escaped."""
    return value.translate(_LABEL_ESCAPES)


def format_sample_value(value: float) -> str:
    """A sample value: integers without a dot, floats round-trip exact, NaN and +-Inf spelled."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()
                                  and abs(value) < 1e15):
        return str(int(value))
    return repr(float(value))


class MetricsPage:
    """Accumulates families; each gets its HELP and TYPE lines once, before its samples."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def family(self, name: str, kind: str, text: str) -> None:
        """Start a family: HELP and TYPE name it as its samples do (the 0.0.4 text format)."""
        self.lines.append("# HELP %s %s" % (name, text.translate(_HELP_ESCAPES)))
        self.lines.append("# TYPE %s %s" % (name, kind))

    def sample(self, name: str, labels: Sequence[Tuple[str, str]], value: float) -> None:
        """One series line."""
        shown = ",".join('%s="%s"' % (k, escape_label_value(v)) for k, v in labels)
        self.lines.append("%s%s %s" % (name, "{%s}" % shown if labels else "",
                                       format_sample_value(value)))

    def histogram(self, name: str, labels: Sequence[Tuple[str, str]], hist: Histogram) -> None:
        """The _bucket (cumulative, ending at +Inf), _sum and _count lines of one histogram."""
        running = 0
        for bound, count in zip(hist.bounds + (float("inf"),), hist.counts):
            running += count
            le = "+Inf" if bound == float("inf") else "%g" % bound
            self.sample(name + "_bucket", tuple(labels) + (("le", le),), running)
        self.sample(name + "_sum", labels, hist.sum)
        self.sample(name + "_count", labels, hist.count)

    def body(self) -> bytes:
        """The page as bytes, newline-terminated."""
        return ("\n".join(self.lines) + "\n").encode("utf-8")


def render_check_families(page: MetricsPage, pod: Pod,
                          durations: Dict[str, Histogram]) -> None:
    """Per-check and per-group families, from the pod's cached state only."""
    states = list(pod.states.values())
    page.family("probed_check_up", "gauge",
                "1 when the check passes now (pending and stale count as 0).")
    for st in states:
        page.sample("probed_check_up", (("check", st.check.name), ("kind", st.check.kind)),
                    1 if st.passing else 0)
    page.family("probed_check_duration_seconds", "histogram", "Time one poll of the check took.")
    for st in states:
        if st.check.name in durations:
            page.histogram("probed_check_duration_seconds", (("check", st.check.name),),
                           durations[st.check.name])
    for name, kind, text, values in (
            ("probed_check_last_success_timestamp_seconds", "gauge",
             "Unix time of the check's last passing poll (0: never).",
             [(st, st.last_success_wall) for st in states]),
            ("probed_check_transitions_total", "counter",
             "Changes of the check's state between pending, pass and fail.",
             [(st, st.transitions) for st in states]),
            ("probed_check_value", "gauge",
             "The number the check's last verdict used (queue depth, nodes alive...).",
             [(st, float(st.obs.value)) for st in states
              if st.obs is not None and st.obs.value is not None])):
        page.family(name, kind, text)
        for st, value in values:
            page.sample(name, (("check", st.check.name),), value)
    page.family("probed_check_metric_absent", "gauge", "1 when a metric the check is configured "
                "to read was absent from a body that parsed (renamed or removed upstream?).")
    for st in states:
        absent = st.obs.detail.get("absent") if st.obs is not None and st.obs.detail else None
        if absent is not None or st.check.kind in ("metric", "progress"):
            page.sample("probed_check_metric_absent", (("check", st.check.name),),
                        1 if absent else 0)
    page.family("probed_group_up", "gauge", "1 when the probe group (live, ready, started) passes.")
    for group in GROUPS:
        verdict = pod.verdicts.get(group)
        page.sample("probed_group_up", (("group", group),), 1 if verdict and verdict.ok else 0)
    page.family("probed_startup_seconds", "gauge", "Seconds from probed's start, or from the "
                "backend's last restart, to started; absent until started.")
    if pod.started_at is not None:
        page.sample("probed_startup_seconds", (), round(pod.started_at - pod.starting_since, 3))


def render_server_families(page: MetricsPage, stats: ServerStats) -> None:
    """Probe-port counters: requests by path and code, connections open and refused."""
    page.family("probed_probe_requests_total", "counter", "Requests answered on the probe "
                "port, by path (unknown paths as \"other\") and status code.")
    for (path, code), count in sorted(stats.requests.items()):
        page.sample("probed_probe_requests_total", (("path", path), ("code", str(code))), count)
    page.family("probed_grpc_requests_total", "counter", "gRPC health calls answered on the "
                "probe port, by method and first answer (a serving status or an error code).")
    for (method, answer), count in sorted(stats.grpc_calls.items()):
        page.sample("probed_grpc_requests_total", (("method", method), ("answer", answer)),
                    count)
    for name, kind, text, value in (
            ("probed_open_connections", "gauge", "Client connections open on the probe port.",
             stats.open),
            ("probed_connections_accepted_total", "counter",
             "Client connections accepted on the probe port.", stats.accepted),
            ("probed_connections_refused_total", "counter",
             "Client connections closed at once because --max-connections were open.",
             stats.refused_at_cap),
            ("probed_connections_evicted_total", "counter",
             "Open connections closed at --max-connections to let a new one in (the one "
             "longest without a request answered).", stats.evicted_at_cap)):
        page.family(name, kind, text)
        page.sample(name, (), value)


def render_metrics(pod: Pod, stats: ServerStats, durations: Dict[str, Histogram],
                   lag: Histogram, build: Tuple[str, str]) -> bytes:
    """The whole /metrics page; pure over the objects given."""
    page = MetricsPage()
    render_check_families(page, pod, durations)
    render_server_families(page, stats)
    page.family("probed_event_loop_lag_seconds", "histogram",
                "How late the event loop ran a timer; probe replies wait this long too.")
    page.histogram("probed_event_loop_lag_seconds", (), lag)
    page.family("probed_build_info", "gauge", "probed's version and the Python running it.")
    page.sample("probed_build_info", (("version", build[0]), ("python", build[1])), 1)
    return page.body()


class SelfMetrics:
    """Feeds the histograms (polls, loop lag) and renders the page on demand."""

    def __init__(self, pod: Pod, stats: ServerStats) -> None:
        self.pod = pod
        self.stats = stats
        self.durations = {name: Histogram(CHECK_DURATION_BUCKETS) for name in pod.states}
        self.lag = Histogram(LAG_BUCKETS)
        self.build = (__version__, "%d.%d.%d" % sys.version_info[:3])
        self._sampler: Optional["asyncio.Task[None]"] = None

    def on_poll(self, name: str, latency: float) -> None:
        """The scheduler calls this after every poll: O(1)."""
        hist = self.durations.get(name)
        if hist is not None:
            hist.observe(latency)

    def render(self) -> bytes:
        """The /metrics body now."""
        return render_metrics(self.pod, self.stats, self.durations, self.lag, self.build)

    def start(self, interval: float = LAG_SAMPLE_INTERVAL) -> None:
        """Start the lag sampler (inside the running loop)."""
        self._sampler = asyncio.get_running_loop().create_task(
            sample_event_loop_lag(self.lag, interval))

    async def stop(self) -> None:
        """Stop the lag sampler."""
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None


async def sample_event_loop_lag(hist: Histogram, interval: float = LAG_SAMPLE_INTERVAL) -> None:
    """Forever: sleep `interval`, observe how much later than asked the loop woke us."""
    while True:
        asked = time.monotonic() + interval
        await asyncio.sleep(interval)
        # asyncio may run a timer up to one clock tick early: that is no lag.
        hist.observe(max(0.0, time.monotonic() - asked))
