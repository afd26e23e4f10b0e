"""probed's own /metrics: rendering (parsed strictly, by probed's expfmt and by promtool), the
per-poll histogram hook, the event-loop lag sampler, bounded request counting in a live daemon,
and a real Prometheus server scraping a live daemon."""

import asyncio
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Optional, Tuple

import pytest
from conftest import free_port, wait_listening
from fakes import Clock, FakeCheck, PodDriver

from probed.checks.base import Observation
from probed.eventlog import EventLog
from probed.expfmt import parse_selector, select_series
from probed.httpproto import parse_request
from probed.router import Router, router_paths
from probed.server import ServerStats
from probed.selfmetrics import (
    CHECK_DURATION_BUCKETS,
    LAG_BUCKETS,
    Histogram,
    SelfMetrics,
    escape_label_value,
    format_sample_value,
    render_metrics,
    sample_event_loop_lag,
)

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
REQUIRED_FAMILIES = {
    "probed_check_up": "gauge", "probed_check_duration_seconds": "histogram",
    "probed_check_last_success_timestamp_seconds": "gauge",
    "probed_check_transitions_total": "counter", "probed_check_value": "gauge",
    "probed_group_up": "gauge", "probed_probe_requests_total": "counter",
    "probed_open_connections": "gauge", "probed_connections_refused_total": "counter",
    "probed_event_loop_lag_seconds": "histogram", "probed_build_info": "gauge",
}


def make_metrics(*checks: FakeCheck) -> Tuple[SelfMetrics, PodDriver, Clock]:
    clock = Clock()
    engine = PodDriver(list(checks), clock)
    metrics = SelfMetrics(engine.pod, ServerStats(router_paths(engine.pod)))
    engine.on_poll = metrics.on_poll  # as the daemon hands it to the scheduler
    return metrics, engine, clock


def series(body: bytes, selector: str) -> List[Tuple[Dict[str, str], float]]:
    return select_series(body, [parse_selector(selector)])[0]


def one(body: bytes, selector: str) -> float:
    found = series(body, selector)
    assert len(found) == 1, (selector, found)
    return found[0][1]


# ---- a strict reader of the text format, independent of probed/expfmt.py ---------------------

_STRICT_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)\Z')
_STRICT_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|\Z)')


def strict_parse(body: bytes) -> Tuple[Dict[str, str], List[Tuple[str, Dict[str, str], float]]]:
    """(family -> type, samples); fails on anything the 0.0.4 text format would not accept
    plus the project's rules: HELP then TYPE once per family, before its samples, counters
    ending in _total, histogram samples only as _bucket/_sum/_count, final newline."""
    text = body.decode("utf-8")
    assert text.endswith("\n") and "\n\n" not in text
    types: Dict[str, str] = {}
    helped = set()
    samples = []
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helped and name not in types, "HELP twice or after TYPE: " + line
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helped and name not in types, "TYPE without HELP first: " + line
            assert kind in ("counter", "gauge", "histogram"), line
            assert kind != "counter" or name.endswith("_total"), line
            types[name] = kind
            continue
        match = _STRICT_SAMPLE.match(line)
        assert match, "not a sample line: %r" % line
        name, label_text, value = match.groups()
        labels: Dict[str, str] = {}
        pos = 0
        while label_text and pos < len(label_text):
            item = _STRICT_LABEL.match(label_text, pos)
            assert item, "bad labels in %r" % line
            labels[item.group(1)] = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1),
                                                                               m.group(1)),
                                           item.group(2))
            pos = item.end()
        family = name
        if name not in types:
            family = re.sub(r"_(bucket|sum|count)\Z", "", name)
            assert types.get(family) == "histogram", "sample of an undeclared family: " + line
            assert name.endswith("_bucket") == ("le" in labels), line
        samples.append((family, labels, float(value)))
    return types, samples


# ---- rendering ---------------------------------------------------------------------------------

def test_every_required_family_has_help_type_and_the_right_kind():
    metrics, engine, _ = make_metrics(FakeCheck("model"), FakeCheck("queue", probes="ready"))
    engine.record("model", Observation(True), 0.002)
    types, samples = strict_parse(metrics.render())
    for family, kind in REQUIRED_FAMILIES.items():
        assert types.get(family) == kind, family
    assert {f for f, _, _ in samples} <= set(types)
    for family in types:  # units in names
        assert not family.endswith(("_ms", "_milliseconds", "_secs"))


def test_check_and_group_series_follow_the_engine_state():
    metrics, engine, clock = make_metrics(FakeCheck("model"),
                                          FakeCheck("queue", probes="ready", limit=10.0))
    clock.now = 1700000000.5
    engine.record("model", Observation(True, "HTTP 200"), 0.004)
    engine.record("queue", Observation(True, "", value=12.0), 0.002)  # over the limit: fails
    body = metrics.render()
    assert one(body, 'probed_check_up{check="model",kind="fake"}') == 1
    assert one(body, 'probed_check_up{check="queue",kind="fake"}') == 0
    assert one(body, 'probed_check_value{check="queue"}') == 12.0
    assert series(body, 'probed_check_value{check="model"}') == []  # no value: no series
    assert one(body, 'probed_check_last_success_timestamp_seconds{check="model"}') == 1700000000.5
    assert one(body, 'probed_check_last_success_timestamp_seconds{check="queue"}') == 0
    assert one(body, 'probed_check_transitions_total{check="model"}') == 1
    assert one(body, 'probed_group_up{group="started"}') == 1
    assert one(body, 'probed_group_up{group="live"}') == 1
    assert one(body, 'probed_group_up{group="ready"}') == 0
    engine.record("queue", Observation(True, "", value=3.0), 0.002)
    engine.record("model", Observation(False, "down"), 0.002)
    body = metrics.render()
    assert one(body, 'probed_check_value{check="queue"}') == 3.0
    assert one(body, 'probed_check_up{check="queue"}') == 1
    assert one(body, 'probed_check_up{check="model"}') == 0
    assert one(body, 'probed_check_transitions_total{check="model"}') == 2
    assert one(body, 'probed_group_up{group="ready"}') == 0


def test_duration_histogram_is_fed_by_every_poll_and_cumulative():
    metrics, engine, _ = make_metrics(FakeCheck("model"))
    for latency in (0.0005, 0.001, 0.02, 0.02, 45.0):
        engine.record("model", Observation(True), latency)
    body = metrics.render()
    buckets = {lab["le"]: v for lab, v in series(
        body, 'probed_check_duration_seconds_bucket{check="model"}')}
    assert list(buckets) == ["%g" % b for b in CHECK_DURATION_BUCKETS] + ["+Inf"]
    assert buckets["0.001"] == 2  # le is inclusive
    assert buckets["0.01"] == 2 and buckets["0.025"] == 4 and buckets["30"] == 4
    assert buckets["+Inf"] == 5
    assert one(body, 'probed_check_duration_seconds_count{check="model"}') == 5
    assert one(body, 'probed_check_duration_seconds_sum{check="model"}') == pytest.approx(45.0415)
    values = list(buckets.values())
    assert values == sorted(values)


def test_server_counters_render_as_counted():
    metrics, _, _ = make_metrics(FakeCheck("a"))
    stats = metrics.stats
    assert "/readyz" in stats.counted_paths and "/probed/livez" in stats.counted_paths
    assert "/readyz/a" in stats.counted_paths and "/metrics" in stats.counted_paths
    stats.requests.update({("/readyz", 200): 7, ("other", 404): 2})
    stats.refused_at_cap = 3
    body = metrics.render()
    assert one(body, 'probed_probe_requests_total{path="/readyz",code="200"}') == 7
    assert one(body, 'probed_probe_requests_total{path="other",code="404"}') == 2
    assert one(body, "probed_connections_refused_total") == 3
    assert one(body, "probed_open_connections") == 0


def test_label_values_are_escaped_and_read_back():
    odd = 'a"b\\c\nd'
    metrics, engine, _ = make_metrics(FakeCheck(odd))
    engine.record(odd, Observation(True, "", value=1.5), 0.01)
    body = metrics.render()
    assert b'check="a\\"b\\\\c\\nd"' in body
    _, samples = strict_parse(body)
    assert any(lab.get("check") == odd for _, lab, _ in samples)
    assert one(body, 'probed_check_value{check="a\\"b\\\\c\\nd"}') == 1.5
    if PROMTOOL:
        assert promtool_check(body) == ""


def test_value_and_label_formatting():
    assert escape_label_value('x"y\\z\n') == 'x\\"y\\\\z\\n'
    assert format_sample_value(3) == "3" and format_sample_value(2.0) == "2"
    assert format_sample_value(0.25) == "0.25"
    assert format_sample_value(float("nan")) == "NaN"
    assert format_sample_value(float("inf")) == "+Inf"
    assert format_sample_value(float("-inf")) == "-Inf"
    assert float(format_sample_value(1712345678.123456)) == 1712345678.123456


def test_build_info_names_version_and_python():
    from probed import __version__
    metrics, _, _ = make_metrics(FakeCheck("a"))
    (labels, value), = series(metrics.render(), "probed_build_info")
    assert value == 1 and labels["version"] == __version__
    assert labels["python"] == "%d.%d.%d" % sys.version_info[:3]


def test_metrics_render_only_when_scraped():
    engine = PodDriver([FakeCheck("a")])
    calls = []
    router = Router(engine.pod, metrics=lambda: calls.append(1) or b"x 1\n")
    for target in ("/readyz", "/livez", "/readyz?verbose", "/a", "/"):
        router.respond(parse_request(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target).encode())[0])
    for _ in range(10):
        engine.record("a", Observation(True), 0.001)
    assert calls == []
    router.respond(parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")[0])
    assert calls == [1]


def promtool_check(body: bytes) -> str:
    """promtool's complaints about a page ('' when clean); asserts it exited 0."""
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return (result.stdout + result.stderr).decode()


@pytest.mark.skipif(not PROMTOOL, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_a_rendered_page_without_lint_findings():
    metrics, engine, _ = make_metrics(FakeCheck("model"), FakeCheck("queue", probes="ready"))
    engine.record("model", Observation(True), 0.003)
    engine.record("queue", Observation(False, "full", value=40), 0.5)
    metrics.lag.observe(0.0004)
    assert promtool_check(metrics.render()) == ""


# ---- the lag sampler ---------------------------------------------------------------------------

def test_lag_sampler_sees_a_blocked_loop():
    hist = Histogram((0.001, 0.1, 0.25, 1.0))

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(sample_event_loop_lag(hist, 0.01))
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # a handler hogging the loop
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert hist.count >= 3
    assert hist.counts[-1] + hist.counts[-2] >= 1  # one sample over 0.25 s: the blocked one
    assert hist.sum >= 0.25


# ---- a live daemon -----------------------------------------------------------------------------

def http_get(port: int, path: str) -> Tuple[int, bytes]:
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def self_check_args(port: int) -> List[str]:
    return ["--check", "tcp addr=127.0.0.1:%d name=self interval=200ms" % port,
            "--check", "http url=http://127.0.0.1:%d/ name=down probes=ready interval=200ms"
            % free_port()]


def scrape_until(port: int, selector: str, want: Callable[[float], bool],
                 timeout: float = 10.0) -> bytes:
    """Scrape until the first series matching `selector` satisfies `want`."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = http_get(port, "/metrics")
        assert status == 200
        found = series(body, selector)
        if found and want(found[0][1]):
            return body
        assert time.monotonic() < deadline, "%s never as expected:\n%s" % (
            selector, body.decode())
        time.sleep(0.1)


def test_daemon_metrics_count_requests_by_known_path_and_fold_the_rest(start_daemon):
    port = free_port()
    daemon = start_daemon(self_check_args(port), port=port)
    scrape_until(port, 'probed_check_up{check="self",kind="tcp"}', lambda v: v == 1)
    scrape_until(port, "probed_event_loop_lag_seconds_count", lambda v: v >= 1)  # sampler runs
    for i in range(40):  # a client must not be able to grow the series set
        assert http_get(port, "/no-such-path-%d" % i)[0] == 404
    for _ in range(3):
        http_get(port, "/readyz/self")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"BAD REQUEST LINE\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    status, body = http_get(port, "/metrics")
    assert status == 200
    requests = {(lab["path"], lab["code"]): v for lab, v in series(
        body, "probed_probe_requests_total")}
    assert requests[("other", "404")] == 40
    assert requests[("other", "400")] == 1
    assert requests[("/readyz/self", "200")] == 3
    assert requests[("/metrics", "200")] >= 1
    assert {path for path, _ in requests} <= {"other", "/readyz/self", "/metrics"}
    assert one(body, 'probed_check_up{check="down",kind="http"}') == 0
    assert one(body, "probed_open_connections") >= 1  # the scrape itself
    if PROMTOOL:
        assert promtool_check(body) == ""
    daemon.stop()


def test_daemon_counts_connections_open_and_evicted_at_the_cap(start_daemon):
    port = free_port()
    start_daemon(["--max-connections", "2"], port=port)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.2)  # both accepted
        status, body = http_get(port, "/metrics")  # at the cap: the oldest idle one gives way
        assert status == 200
        assert idle[0].recv(10) == b""  # closed without a reply
        assert one(body, "probed_open_connections") == 2  # the other idle one plus the scrape
        assert one(body, "probed_connections_evicted_total") == 1
        assert one(body, "probed_connections_refused_total") == 0
    finally:
        for sock in idle:
            sock.close()


# ---- a real Prometheus server ------------------------------------------------------------------

def prometheus_query(api_port: int, query: str) -> List[dict]:
    url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (api_port, urllib.parse.quote(query))
    with urllib.request.urlopen(url, timeout=5) as resp:
        data = json.loads(resp.read())
    assert data["status"] == "success", data
    return data["data"]["result"]


def wait_for_result(api_port: int, query: str, proc: subprocess.Popen,
                    timeout: float = 30.0) -> List[dict]:
    deadline = time.monotonic() + timeout
    last: Optional[Exception] = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "prometheus exited with %s" % proc.returncode
        try:
            result = prometheus_query(api_port, query)
            if result:
                return result
        except OSError as exc:  # still starting
            last = exc
        time.sleep(0.25)
    raise AssertionError("no %s in Prometheus after %ss (last error: %s)" % (query, timeout, last))


@pytest.mark.slow
@pytest.mark.skipif(not PROMETHEUS, reason="prometheus not installed (Debian package prometheus)")
def test_real_prometheus_scrapes_probed(start_daemon, tmp_path):
    port = free_port()
    start_daemon(self_check_args(port), port=port)
    api_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: probed\n    static_configs:\n"
        "      - targets: ['127.0.0.1:%d']\n" % port)
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, "--config.file=%s" % config, "--storage.tsdb.path=%s" % (tmp_path / "data"),
         "--web.listen-address=127.0.0.1:%d" % api_port, "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        wait_listening("127.0.0.1", api_port, timeout=30)
        found = wait_for_result(api_port, 'probed_check_up{check="self"} == 1', proc)
        assert found[0]["metric"] == {"__name__": "probed_check_up", "check": "self",
                                      "kind": "tcp", "job": "probed",
                                      "instance": "127.0.0.1:%d" % port}
        assert found[0]["value"][1] == "1"
        down = wait_for_result(api_port, 'probed_check_up{check="down"}', proc)
        assert down[0]["metric"]["kind"] == "http" and down[0]["value"][1] == "0"
        ready = wait_for_result(api_port, 'probed_group_up{group="ready"}', proc)
        assert ready[0]["value"][1] == "0"  # the down check is a ready check
        hist = wait_for_result(
            api_port, 'probed_check_duration_seconds_bucket{check="self",le="+Inf"}', proc)
        assert float(hist[0]["value"][1]) >= 1
        up = wait_for_result(api_port, 'up{job="probed"}', proc)
        assert up[0]["value"][1] == "1"  # the scrape itself succeeded: the page parsed
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_startup_seconds_appear_once_started_and_measure_from_the_restart():
    clock = Clock()
    engine = PodDriver([FakeCheck("model", probes="live,ready,started")], clock)
    render = lambda: render_metrics(engine.pod, ServerStats(), {},  # noqa: E731
                                    Histogram(LAG_BUCKETS), ("0", "3")).decode()
    assert not re.search(r"^probed_startup_seconds ", render(), re.MULTILINE)
    clock.now += 42.5
    engine.record("model", Observation(True, "ok"), 0.0)
    assert re.search(r"^probed_startup_seconds 42.5$", render(), re.MULTILINE), render()
    clock.now += 100
    engine.record("model", Observation(False, "connection refused", refused=True))  # restart
    clock.now += 7
    engine.record("model", Observation(True, "ok"), 0.0)
    assert re.search(r"^probed_startup_seconds 7$", render(), re.MULTILINE), render()


def test_metric_drift_is_one_log_line_and_a_gauge(start_daemon):
    # issue 16 #17: a configured metric missing from a body that parses was a silent pass
    from backends import Backend, kubelet_probe
    body = (b"# TYPE vllm:kv_cache_usage_perc gauge\n"
            b'vllm:kv_cache_usage_perc{engine="0"} 0.1\n')
    with Backend(body=body) as backend:
        daemon = start_daemon(["--check", "metric name=kv url=%s/metrics "
                               "metric=vllm:gpu_cache_usage_perc max=0.9 interval=200ms"
                               % backend.url])
        deadline = time.monotonic() + 10
        value = None
        while time.monotonic() < deadline:
            found = series(kubelet_probe(daemon.port, "/metrics").body,
                           'probed_check_metric_absent{check="kv"}')
            if found and found[0][1] == 1:
                value = found[0][1]
                break
            time.sleep(0.1)
        assert value == 1
        time.sleep(1.0)  # several more polls: still one line
        log = daemon.stderr_text()
    lines = [l for l in log.splitlines() if 'msg="metric absent"' in l]
    assert len(lines) == 1 and "check=kv metrics=vllm:gpu_cache_usage_perc" in lines[0], lines
