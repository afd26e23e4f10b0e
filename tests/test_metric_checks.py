"""Check kinds `metric`, `progress` and `awake`, driven directly against loopback servers.

Each check is built from the `KIND key=value` text users write (`build_spec` +
`CHECK_KINDS[kind]`), its `observe()` scrapes a loopback server under `asyncio.run`, and
`judge()` turns the observation into a verdict, with per-request overrides where the daemon
would apply `?NAME.KEY=VALUE`. The bodies are the real captures in
`tests/fixtures/metrics/real/` (vLLM 0.29.0 V1 and llama.cpp) and variants built from the
vLLM one: eight data-parallel engines, a sleeping engine, the pre-0.9 `gpu_cache` name.

Every test scrapes a URL no other test used (a unique path prefix): the shared scrape cache
is keyed by URL, and a port closed by one test may be handed to the next.
"""

import asyncio
import itertools
import json
import re
import time
import uuid
from urllib.parse import urlsplit
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import pytest

from backends import Backend
from llm_backend import LLMBackend
from probed.checks import CHECK_KINDS
from probed.checks.base import Check, CheckResources, Observation
from probed.checkspecs import build_spec, split_check_text
from probed.scheduler import poll_once
from probed.values import ConfigError
from probed.checkstate import CheckState

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL = FIXTURES / "metrics" / "real"
VLLM_REAL = (REAL / "vllm_inferstack-real.txt").read_bytes()
LLAMACPP_REAL = (REAL / "llamacpp_llamesh-testdata.txt").read_bytes()
OUTER_DEADLINE = 8.0  # a check that ignores its own timeout fails the test here instead
_CASES = itertools.count()


# --- helpers -------------------------------------------------------------------------------------

def unique(base: str) -> str:
    """`base` plus a path prefix no other scrape in this run has used."""
    return "%s/case%d-%s" % (base, next(_CASES), uuid.uuid4().hex[:8])


def make(text: str, resources: Optional[CheckResources] = None) -> Check:
    """A check from `KIND key=value ...` text, exactly as `--check` builds it; checks given one
    `resources` share scrapes as the checks of one daemon do."""
    spec = build_spec(split_check_text(text, "test"), "test")
    return CHECK_KINDS[spec.kind](spec, resources)


def observe(check: Check) -> Observation:
    """One observe() on a fresh event loop, bounded by OUTER_DEADLINE."""
    async def run() -> Observation:
        return await asyncio.wait_for(check.observe(), OUTER_DEADLINE)
    return asyncio.run(run())


def observe_together(*checks: Check) -> List[Observation]:
    """observe() of every check concurrently in one loop: one poll round of the engine."""
    async def run() -> List[Observation]:
        return list(await asyncio.wait_for(
            asyncio.gather(*(c.observe() for c in checks)), OUTER_DEADLINE))
    return asyncio.run(run())


def verdict(check: Check, obs: Observation, was_ok: bool = True,
            **overrides: str) -> Tuple[bool, str]:
    """judge() under the check's config plus overrides parsed as `?NAME.KEY=VALUE` would be."""
    config = dict(check.config)
    for key, text in overrides.items():
        config[key.replace("_", "-")] = check.parse_override(key.replace("_", "-"), text)
    return check.judge(obs, config, was_ok)


def vllm_body(engines: int = 1, values: Optional[Mapping[str, Sequence[float]]] = None,
              asleep: Sequence[int] = (), old_kv_name: bool = False) -> bytes:
    """The real vLLM body, every `engine="0"` series repeated for `engines` data-parallel ranks.

    `values` sets a sample's value per engine (by sample name); `asleep` engines report
    sleep_state awake=0, weights_offloaded=1 (what `/sleep?level=1` does); `old_kv_name` renames
    the KV-cache gauge to its pre-0.9 name `vllm:gpu_cache_usage_perc`.
    """
    values = values or {}
    out: List[str] = []
    for line in VLLM_REAL.decode("utf-8").split("\n"):
        if line.startswith("#") or 'engine="0"' not in line:
            out.append(line)
            continue
        name = line.split("{", 1)[0]
        for engine in range(engines):
            series = line.rsplit(" ", 1)[0].replace('engine="0"', 'engine="%d"' % engine)
            value = line.rsplit(" ", 1)[1]
            if name in values:
                value = repr(float(values[name][engine]))
            if name == "vllm:engine_sleep_state" and engine in asleep:
                state = re.search(r'sleep_state="(\w+)"', series).group(1)  # type: ignore
                value = {"awake": "0.0", "weights_offloaded": "1.0"}.get(state, "0.0")
            out.append(series + " " + value)
    text = "\n".join(out)
    if old_kv_name:
        text = text.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    return text.encode("utf-8")


def progress_body(running: float, tokens: float) -> bytes:
    """A minimal vLLM-like body with the two series the progress check reads."""
    return ("# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{engine="0",model_name="m"} %r\n'
            "# TYPE vllm:generation_tokens_total counter\n"
            'vllm:generation_tokens_total{engine="0",model_name="m"} %r\n'
            % (float(running), float(tokens))).encode()


@pytest.fixture
def backend() -> Any:
    with Backend(body=VLLM_REAL) as b:
        yield b


# --- the real captures ---------------------------------------------------------------------------

def test_real_vllm_body_gives_each_selected_value(backend: Backend) -> None:
    url = unique(backend.url) + "/metrics"
    queue = make("metric url=%s metric=vllm:num_requests_waiting max=0" % url)
    obs = observe(queue)
    assert obs.value == 0.0
    assert obs.detail is not None and obs.detail["series"] == 1
    assert verdict(queue, obs) == (True, "sum(vllm:num_requests_waiting) = 0 <= max 0")

    tokens = make("metric url=%s max=500 "
                  "'metric=vllm:generation_tokens_total{model_name=\"qwen2.5-1.5b\"}'" % url)
    obs = observe(tokens)
    assert obs.value == 584.0
    assert verdict(tokens, obs) == (
        False, 'sum(vllm:generation_tokens_total{model_name="qwen2.5-1.5b"}) = 584 > max 500')
    assert verdict(tokens, obs, max="584") == (
        True, 'sum(vllm:generation_tokens_total{model_name="qwen2.5-1.5b"}) = 584 <= max 584')

    start = make("metric url=%s metric=process_start_time_seconds" % url)
    assert observe(start).value == 1.78990180866e+09

    offloaded = make("metric url=%s "
                     "'metric=vllm:engine_sleep_state{sleep_state=\"weights_offloaded\"}'" % url)
    assert observe(offloaded).value == 0.0

    kv = make("metric url=%s metric=vllm:kv_cache_usage_perc metric=vllm:gpu_cache_usage_perc "
              "agg=max max=0.9" % url)
    obs = observe(kv)
    assert obs.value == 0.0
    assert verdict(kv, obs) == (True, "max(vllm:kv_cache_usage_perc) = 0 <= max 0.9")


def test_real_vllm_body_awake_and_idle(backend: Backend) -> None:
    base = unique(backend.url)
    shared = CheckResources()
    awake = make("awake url=%s" % base, shared)
    progress = make("progress url=%s/metrics" % base, shared)  # built before the first scrape
    obs = observe(awake)
    assert verdict(awake, obs) == (True, "awake (vllm:engine_sleep_state)")
    assert obs.value == 1.0
    obs = observe(progress)
    assert obs.detail is not None
    assert (obs.detail["running"], obs.detail["counter"]) == (0.0, 584.0)
    assert verdict(progress, obs) == (True, "idle")
    # the gauge answered, and nobody asked the engine (/is_sleeping, /is_paused: ask-engine)
    assert [r.target.rsplit("/", 1)[1] for r in backend.requests] == ["metrics"]


def test_real_llamacpp_body() -> None:
    with Backend(body=LLAMACPP_REAL) as b:
        url = unique(b.url) + "/metrics"
        cached = make("metric url=%s metric=llamacpp:prompt_tokens_cached_total" % url)
        assert observe(cached).value == 7.77887e+06
        deferred = make("metric url=%s metric=llamacpp:requests_deferred max=0" % url)
        obs = observe(deferred)
        assert verdict(deferred, obs) == (True, "sum(llamacpp:requests_deferred) = 0 <= max 0")
        assert verdict(deferred, obs, min="1") == (
            False, "sum(llamacpp:requests_deferred) = 0 < min 1")
        progress = make("progress url=%s running=llamacpp:requests_processing "
                        "counter=llamacpp:tokens_predicted_total" % url)
        obs = observe(progress)
        assert obs.detail is not None and obs.detail["counter"] == 275273.0
        assert verdict(progress, obs) == (True, "idle")


# --- synthetic variants of the real vLLM body ----------------------------------------------------

def test_eight_engines_queue_sums_and_kv_cache_takes_the_max() -> None:
    waiting = [0, 1, 2, 3, 4, 5, 6, 7]
    kv = [0.1, 0.2, 0.3, 0.4, 0.5, 0.97, 0.2, 0.1]
    body = vllm_body(8, {"vllm:num_requests_waiting": waiting, "vllm:kv_cache_usage_perc": kv})
    with Backend(body=body) as b:
        url = unique(b.url) + "/metrics"
        queue = make("metric url=%s metric=vllm:num_requests_waiting agg=sum max=27" % url)
        obs = observe(queue)
        assert obs.value == 28.0
        assert obs.detail is not None and obs.detail["series"] == 8
        assert verdict(queue, obs) == (False, "sum(vllm:num_requests_waiting) = 28 > max 27")
        assert verdict(queue, obs, max="28")[0] is True
        assert verdict(queue, obs, agg="max") == (True, "max(vllm:num_requests_waiting) = 7 <= max 27")
        assert verdict(queue, obs, agg="count", max="8") == (
            True, "count(vllm:num_requests_waiting) = 8 <= max 8")
        one = make("metric url=%s 'metric=vllm:num_requests_waiting{engine=\"5\"}'" % url)
        assert observe(one).value == 5.0
        others = make("metric url=%s 'metric=vllm:num_requests_waiting{engine!=\"5\"}'" % url)
        assert observe(others).value == 23.0

        cache = make("metric url=%s metric=vllm:kv_cache_usage_perc "
                     "metric=vllm:gpu_cache_usage_perc agg=max max=0.95" % url)
        obs = observe(cache)
        assert obs.value == 0.97
        assert verdict(cache, obs) == (False, "max(vllm:kv_cache_usage_perc) = 0.97 > max 0.95")
        assert verdict(cache, obs, max="0.98")[0] is True


def test_sleeping_engine_fails_awake_and_names_the_engine() -> None:
    with Backend(body=vllm_body(8, asleep=[3])) as b:
        awake = make("awake url=%s" % unique(b.url))
        obs = observe(awake)
        assert verdict(awake, obs) == (False, "sleeping (engine 3; vllm:engine_sleep_state)")
        assert obs.detail is not None and obs.detail["asleep_engines"] == ["3"]
        b.serve(200, vllm_body(8))
        awake = make("awake url=%s" % unique(b.url))
        assert verdict(awake, observe(awake)) == (True, "awake (vllm:engine_sleep_state)")


def test_old_kv_cache_name_is_read_and_named() -> None:
    body = vllm_body(2, {"vllm:kv_cache_usage_perc": [0.5, 0.96]}, old_kv_name=True)
    with Backend(body=body) as b:
        cache = make("metric url=%s metric=vllm:kv_cache_usage_perc "
                     "metric=vllm:gpu_cache_usage_perc agg=max max=0.95" % (
                         unique(b.url) + "/metrics"))
        obs = observe(cache)
        assert obs.value == 0.96
        assert verdict(cache, obs) == (False, "max(vllm:gpu_cache_usage_perc) = 0.96 > max 0.95")


def test_the_first_present_selector_wins_over_later_fallbacks() -> None:
    both = vllm_body(1, {"vllm:kv_cache_usage_perc": [0.2]}) + (
        b"# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.99\n")
    with Backend(body=both) as b:
        cache = make("metric url=%s metric=vllm:kv_cache_usage_perc "
                     "metric=vllm:gpu_cache_usage_perc agg=max max=0.95" % (
                         unique(b.url) + "/metrics"))
        obs = observe(cache)
        assert verdict(cache, obs) == (True, "max(vllm:kv_cache_usage_perc) = 0.2 <= max 0.95")


# --- awake: the /is_sleeping fallback when the gauge is absent -----------------------------------

@pytest.mark.parametrize("status, body, expected", [
    (404, b'{"detail": "Not Found"}', (True, "sleep state unknown")),
    (200, b'{"is_sleeping": true}', (False, "sleeping (/is_sleeping)")),
    (200, b'{"is_sleeping": false}', (True, "awake (/is_sleeping)")),
    (500, b"Internal Server Error", (False, "/is_sleeping: unexpected reply HTTP 500")),
    (200, b"<html>not json</html>", (False, "/is_sleeping: unexpected reply HTTP 200")),
])
def test_awake_falls_back_to_is_sleeping(status: int, body: bytes,
                                         expected: Tuple[bool, str]) -> None:
    no_gauge = b"\n".join(l for l in VLLM_REAL.split(b"\n")
                          if b"engine_sleep_state" not in l)
    with LLMBackend(metrics=no_gauge, prefix=unique("")) as server:
        server.route("GET", "/is_sleeping", (status, body))
        awake = make("awake url=%s ask-engine=true" % server.url)
        ok, reason = verdict(awake, observe(awake))
        assert (ok, reason[:len(expected[1])]) == expected, reason
        # it asks whether the engine is paused too, with the scrape (404 here: no dev mode)
        assert sorted(r.path for r in server.requests) == [
            "/is_paused", "/is_sleeping", "/metrics"]


def test_awake_asks_the_engine_only_when_told() -> None:
    """/is_sleeping and /is_paused are engine calls that a vLLM 0.32 never answers when its
    engine dies meanwhile, and the API server then never exits: not asked by default."""
    no_gauge = b"\n".join(l for l in VLLM_REAL.split(b"\n")
                          if b"engine_sleep_state" not in l)
    with LLMBackend(metrics=no_gauge, prefix=unique("")) as server:
        server.route("GET", "/is_sleeping", (200, b'{"is_sleeping": true}'))
        awake = make("awake url=%s" % server.url)
        assert verdict(awake, observe(awake)) == (
            True, "sleep state unknown (no sleep gauge; /is_sleeping is asked with "
                  "ask-engine=true)")
        assert [r.path for r in server.requests] == ["/metrics"]


def test_awake_fails_when_metrics_cannot_be_read() -> None:
    with LLMBackend(prefix=unique("")) as server:
        server.route("GET", "/metrics", (503, b"busy"))
        awake = make("awake url=%s" % server.url)
        ok, reason = verdict(awake, observe(awake))
        assert not ok
        assert reason == "%s/metrics: HTTP 503" % server.url


# --- thresholds, hysteresis, missing series ------------------------------------------------------

def test_recover_band_is_hysteresis_under_max() -> None:
    check = make("metric url=http://127.0.0.1:1/metrics metric=q max=10 recover=5")

    def obs(value: float) -> Observation:
        return Observation(True, "", value, detail={"metric": "q", "series": 1,
                                                    "values": [value]})

    assert verdict(check, obs(10), was_ok=True) == (True, "sum(q) = 10 <= max 10")
    assert verdict(check, obs(11), was_ok=True) == (False, "sum(q) = 11 > max 10")
    assert verdict(check, obs(8), was_ok=False) == (
        False, "sum(q) = 8, not yet back to recover 5")
    assert verdict(check, obs(5), was_ok=False) == (True, "sum(q) = 5 <= recover 5")
    assert verdict(check, obs(8), was_ok=True) == (True, "sum(q) = 8 <= max 10")
    assert verdict(check, obs(12), was_ok=False)[0] is False
    # the band is overridable per request, like max
    assert verdict(check, obs(8), was_ok=False, recover="8") == (True, "sum(q) = 8 <= recover 8")
    assert verdict(check, obs(8), was_ok=False, max="20")[0] is False  # recover 5 still holds


def test_recover_band_through_check_state_and_a_real_backend() -> None:
    """The engine's bookkeeping passes `was_ok` correctly: the band holds across polls."""
    def body(waiting: float) -> bytes:
        return vllm_body(1, {"vllm:num_requests_waiting": [waiting]})

    with Backend(body=body(0)) as b:
        check = make("metric url=%s metric=vllm:num_requests_waiting max=10 recover=5 "
                     "interval=100ms" % (unique(b.url) + "/metrics"))
        state = CheckState(check, 0.0, 0.0)
        seen = []
        for i, waiting in enumerate([3, 12, 8, 6, 5, 8, 11, 9]):
            b.serve(200, body(waiting))
            time.sleep(0.12)  # past the shared scrape window (0.9 x the fastest reader pace)
            state.record(observe(check), 0.0, float(i), float(i))
            seen.append((waiting, state.passing))
    assert seen == [(3, True), (12, False), (8, False), (6, False), (5, True), (8, True),
                    (11, False), (9, False)]
    assert b.count(200) == 8  # every poll scraped anew


def test_recover_needs_a_max_at_or_above_it() -> None:
    with pytest.raises(ConfigError, match="recover=6: expected a value <= max"):
        make("metric url=http://127.0.0.1:1/m metric=q max=5 recover=6")
    with pytest.raises(ConfigError, match="recover"):
        make("metric url=http://127.0.0.1:1/m metric=q recover=6")
    with pytest.raises(ConfigError, match="missing=maybe"):
        make("metric url=http://127.0.0.1:1/m metric=q missing=maybe")
    with pytest.raises(ConfigError, match="agg=median"):
        make("metric url=http://127.0.0.1:1/m metric=q agg=median")
    with pytest.raises(ConfigError, match="'metric'"):
        make("metric url=http://127.0.0.1:1/m")


def test_absent_series_follows_missing(backend: Backend) -> None:
    url = unique(backend.url) + "/metrics"
    check = make("metric url=%s 'metric=vllm:num_requests_waiting{model_name=\"other\"}' max=1"
                 % url)
    obs = observe(check)
    assert obs.value is None
    what = 'no series vllm:num_requests_waiting{model_name="other"}'
    # a body that parses without the configured metric: the drift shows in every reason
    drift = "; absent from the body: vllm:num_requests_waiting"
    assert verdict(check, obs) == (True, what + " (missing=pass)" + drift)
    assert verdict(check, obs, missing="fail") == (False, what + " (missing=fail)" + drift)
    assert obs.detail is not None and obs.detail["absent"] == ["vllm:num_requests_waiting"]
    strict = make("metric url=%s metric=tgi_queue_size missing=fail" % url)
    assert verdict(strict, observe(strict)) == (
        False, "no series tgi_queue_size (missing=fail); absent from the body: tgi_queue_size")


@pytest.mark.parametrize("body", [b"", b"null", b"null\n", b"\n \n"],
                         ids=["empty", "null", "null-lf", "blank"])
def test_empty_and_null_bodies_follow_missing(body: bytes) -> None:
    with Backend(body=body) as b:
        url = unique(b.url) + "/metrics"
        check = make("metric url=%s metric=vllm:num_requests_waiting max=0" % url)
        obs = observe(check)
        assert obs.ok and obs.value is None
        assert verdict(check, obs) == (True, "empty metrics body (missing=pass)")
        assert verdict(check, obs, missing="fail") == (False, "empty metrics body (missing=fail)")
        strict = make("metric url=%s metric=vllm:num_requests_waiting missing=fail" % url)
        assert verdict(strict, observe(strict))[0] is False


def test_scrape_failures_fail_with_url_and_cause() -> None:
    with Backend(status=503, body=b"down") as b:
        url = unique(b.url) + "/metrics"
        check = make("metric url=%s metric=q missing=pass timeout=2s" % url)
        assert verdict(check, observe(check)) == (False, url + ": HTTP 503")
        b.set_mode("refuse")
        url = unique(b.url) + "/metrics"
        check = make("metric url=%s metric=q missing=pass timeout=2s" % url)
        ok, reason = verdict(check, observe(check))
        assert not ok and reason.startswith(url + ": ") and "refused" in reason


# --- malformed bodies: the check fails with the line number, never with a value ------------------

def _with_line(body: bytes, lineno: int, line: bytes) -> bytes:
    lines = body.split(b"\n")
    return b"\n".join(lines[:lineno - 1] + [line] + lines[lineno - 1:])


@pytest.mark.parametrize("body, lineno", [
    (_with_line(VLLM_REAL, 100, b'vllm:bogus{engine="0" 1.0'), 100),  # a family nobody selected
    (_with_line(VLLM_REAL, 3, b"vllm:num_requests_waiting 1 2 3"), 3),
    (b"<!DOCTYPE html>\n<html><body>502 Bad Gateway</body></html>\n", 1),
    (VLLM_REAL[:VLLM_REAL.index(b"vllm:generation_tokens_total{") + 60], None),  # cut short
    (b"vllm:num_requests_waiting 1\n\x00\x01\x02\n", 2),
], ids=["unselected-family", "extra-fields", "html", "cut-short", "binary"])
def test_malformed_body_fails_with_the_line_number(body: bytes, lineno: Optional[int]) -> None:
    if lineno is None:
        lineno = body.count(b"\n") + 1
    with Backend(body=body) as b:
        url = unique(b.url) + "/metrics"
        check = make("metric url=%s metric=vllm:num_requests_waiting max=100" % url)
        obs = observe(check)
        assert not obs.ok and obs.value is None
        ok, reason = verdict(check, obs, missing="pass")
        assert not ok
        assert reason.startswith("%s: malformed metrics: line %d: " % (url, lineno)), reason
        # A broken body is no evidence of a stall: progress (a live check) says it cannot
        # tell, with the same line number, and leaves live alone.
        progress = make("progress url=%s" % url)
        ok, reason = verdict(progress, observe(progress))
        assert ok is True and reason.startswith("progress unknown: %s: malformed metrics: line %d"
                                                % (url, lineno)), reason


# --- one scrape per URL per round ----------------------------------------------------------------

def test_checks_on_one_url_in_one_round_share_one_request(backend: Backend) -> None:
    base = unique(backend.url)
    shared = CheckResources()
    queue = make("metric url=%s/metrics metric=vllm:num_requests_waiting max=5" % base, shared)
    kv = make("metric url=%s/metrics metric=vllm:kv_cache_usage_perc agg=max max=0.9" % base,
              shared)
    progress = make("progress url=%s/metrics" % base, shared)
    awake = make("awake url=%s" % base, shared)
    results = observe_together(queue, kv, progress, awake)
    assert [o.ok for o in results] == [True, True, True, True]
    assert results[1].value == 0.0 and results[0].value == 0.0
    assert [r.target for r in backend.requests] == [urlsplit(base).path + "/metrics"]
    # another URL is another scrape
    other = make("metric url=%s/metrics metric=vllm:num_requests_waiting" % unique(backend.url),
                 shared)
    observe(other)
    assert len(backend.requests) == 2
    # the same URL in another daemon (other resources) never rides on this one's scrape
    observe(make("metric url=%s/metrics metric=vllm:num_requests_waiting" % base))
    assert len(backend.requests) == 3


def test_shared_scrape_is_refreshed_once_older_than_half_the_interval(backend: Backend) -> None:
    url = unique(backend.url) + "/metrics"
    shared = CheckResources()
    first = make("metric url=%s metric=vllm:num_requests_waiting interval=200ms" % url, shared)
    second = make("metric url=%s metric=vllm:num_requests_running interval=200ms" % url, shared)
    observe(first)
    observe(second)  # within 100 ms of the first: served from the same scrape
    assert len(backend.requests) == 1
    backend.serve(200, vllm_body(1, {"vllm:num_requests_running": [3]}))
    time.sleep(0.25)
    assert observe(second).value == 3.0  # a fresh scrape, never the old body
    assert len(backend.requests) == 2


def test_different_headers_are_different_scrapes(backend: Backend) -> None:
    url = unique(backend.url) + "/metrics"
    shared = CheckResources()
    plain = make("metric url=%s metric=vllm:num_requests_waiting" % url, shared)
    tenant = make("metric url=%s metric=vllm:num_requests_waiting header='X-Tenant: a'" % url,
                  shared)
    observe_together(plain, tenant)
    assert sorted(r.headers.get("x-tenant", "") for r in backend.requests) == ["", "a"]



def test_tls_options_and_token_sources_are_part_of_the_shared_scrape_key() -> None:
    # Reviewer's find: one process-wide scrape per URL let the first check's ca-file/insecure
    # (and token) serve every later check of that URL.
    shared = CheckResources()
    url = "https://127.0.0.1:1/metrics"
    variants = ["", "insecure=true", "ca-file=/etc/ssl/a.pem", "token-file=/run/t",
                "token-env=KEY", "header='X-A: 1'"]
    checks = [make("metric url=%s metric=x %s" % (url, v), shared) for v in variants]
    sources = [shared.scrapes.source(url, c.request.identity(), c.request.headers,
                                     c.request.tls) for c in checks]
    assert len({id(s) for s in sources}) == len(variants)
    again = make("metric url=%s metric=y insecure=true" % url, shared)
    assert shared.scrapes.source(url, again.request.identity()) is sources[1]
    assert sources[1].tls is not None and sources[1].tls.insecure

# --- progress: stall detection -------------------------------------------------------------------

def _progress(stall_after: str = "120s") -> Check:
    return make("progress url=%s stall-after=%s" % (
        unique("http://127.0.0.1:1") + "/metrics", stall_after))


def test_progress_rising_tokens_pass() -> None:
    check = _progress("10s")
    for i in range(20):
        obs = check.note(running=4, counter=100.0 + i * 50, now=1000.0 + i * 5)
        assert verdict(check, obs) == (
            True, "4 running, vllm:generation_tokens_total at %d (stall after 10s flat)" % (100 + i * 50))
    assert obs.value == 0.0


def test_progress_flat_tokens_while_running_stall_after_stall_after() -> None:
    check = _progress("2m")
    assert verdict(check, check.note(2, 500.0, 1000.0))[0] is True
    assert verdict(check, check.note(2, 500.0, 1060.0))[0] is True
    obs = check.note(2, 500.0, 1119.9)
    assert verdict(check, obs)[0] is True
    obs = check.note(2, 500.0, 1120.0)
    ok, reason = verdict(check, obs)
    assert not ok
    assert reason == "stalled: 2 running, vllm:generation_tokens_total flat for 2m"
    assert obs.detail is not None and obs.detail["flat_seconds"] == 120.0
    # the threshold is a per-request override, judged on the same observation
    assert verdict(check, obs, stall_after="5m")[0] is True
    assert verdict(check, check.note(2, 500.0, 1200.0), stall_after="1m")[0] is False
    # tokens move again: the stall is over at once
    assert verdict(check, check.note(2, 501.0, 1201.0)) == (
        True, "2 running, vllm:generation_tokens_total at 501 (stall after 2m flat)")


def test_progress_idle_is_never_a_stall() -> None:
    check = _progress("10s")
    for i in range(100):  # 500 s of polls every 5 s, tokens flat, nothing running
        obs = check.note(0, 42.0, 1000.0 + i * 5)
        assert verdict(check, obs) == (True, "idle")
    # work arrives after the long idle spell: flat time counts from the last idle poll
    assert verdict(check, check.note(1, 42.0, 1500.0)) == (
        True, "1 running, vllm:generation_tokens_total at 42 (stall after 10s flat)")
    assert verdict(check, check.note(1, 42.0, 1504.0))[0] is True
    assert verdict(check, check.note(1, 42.0, 1505.0))[0] is False


def test_progress_counter_reset_is_a_restart_not_a_stall() -> None:
    check = _progress("60s")
    check.note(3, 9000.0, 1000.0)
    assert verdict(check, check.note(3, 9000.0, 1059.0))[0] is True
    obs = check.note(3, 12.0, 1059.5)  # the server restarted: the counter starts over
    assert verdict(check, obs)[0] is True
    assert obs.value == 0.0  # a new history: nothing has been flat yet
    assert "vllm:generation_tokens_total went back from 9000 to 12" in obs.restart
    assert verdict(check, check.note(3, 12.0, 1100.0))[0] is True  # 40.5 s flat since reset
    assert verdict(check, check.note(3, 12.0, 1119.5))[0] is False


def test_progress_without_a_counter_series_passes_as_unknown() -> None:
    body = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3\n"
    with Backend(body=body) as b:
        check = make("progress url=%s stall-after=1s" % (unique(b.url) + "/metrics"))
        obs = observe(check)
        assert verdict(check, obs) == (
            True, "no series vllm:generation_tokens_total: progress unknown; absent from the "
                  "body: vllm:generation_tokens_total")


def test_progress_in_real_time_against_a_backend() -> None:
    with Backend(body=progress_body(2, 700)) as b:
        check = make("progress url=%s stall-after=500ms interval=100ms timeout=2s" % (
            unique(b.url) + "/metrics"))
        assert verdict(check, observe(check)) == (
            True, "2 running, vllm:generation_tokens_total at 700 (stall after 500ms flat)")
        time.sleep(0.6)
        ok, reason = verdict(check, observe(check))
        assert not ok and reason.startswith("stalled: 2 running"), reason
        b.serve(200, progress_body(2, 701))
        time.sleep(0.06)  # past the scrape cache (max_age = interval / 2)
        assert verdict(check, observe(check)) == (
            True, "2 running, vllm:generation_tokens_total at 701 (stall after 500ms flat)")
        b.serve(200, progress_body(0, 701))
        time.sleep(0.6)
        assert verdict(check, observe(check)) == (True, "idle")
    assert len(b.requests) == 4


def test_progress_observation_is_json_ready(backend: Backend) -> None:
    check = make("progress url=%s/metrics" % unique(backend.url))
    obs, _latency = asyncio.run(poll_once(check))
    detail = json.loads(json.dumps(obs.detail))
    assert (detail["running"], detail["counter"], detail["flat_seconds"]) == (0.0, 584.0, 0.0)
    assert obs.restart == ""


# --- found by these tests ------------------------------------------------------------------------

@pytest.mark.parametrize("text, under_max, over_min", [
    ("NaN", None, None), ("+Inf", False, True), ("-Inf", True, False)])
def test_non_finite_values_are_judged_not_raised(text: str, under_max: Optional[bool],
                                                 over_min: Optional[bool]) -> None:
    body = ("# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting %s\n"
            % text).encode()
    with Backend(body=body) as b:
        url = unique(b.url) + "/metrics"
        high = make("metric url=%s metric=vllm:num_requests_waiting max=10" % url)
        low = make("metric url=%s metric=vllm:num_requests_waiting min=0" % url)
        results = [verdict(high, observe(high)), verdict(low, observe(low))]
    for (passed, reason), expected in zip(results, (under_max, over_min)):
        assert text.lstrip("+").lower() in reason.lower(), reason
        if expected is not None:  # NaN: either verdict, as long as it is given and named
            assert passed is expected, reason


@pytest.mark.parametrize("status", [301, 307, 204])
def test_a_redirect_or_no_content_is_not_an_empty_body(status: int) -> None:
    with Backend(status=status, body=b"") as b:
        url = unique(b.url) + "/metrics"
        check = make("metric url=%s metric=vllm:num_requests_waiting max=5" % url)
        ok, reason = verdict(check, observe(check))
    assert not ok
    assert "HTTP %d" % status in reason, reason


@pytest.mark.parametrize("kind", ["metric", "progress", "awake"])
def test_scrapes_send_the_bearer_token(kind: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("sk-metrics-file\n")
    monkeypatch.setenv("PROBED_TEST_METRICS_TOKEN", "sk-metrics-env")
    with Backend(body=VLLM_REAL) as b:
        for source in ("token-file=%s" % token, "token-env=PROBED_TEST_METRICS_TOKEN"):
            base = unique(b.url)
            url = base if kind == "awake" else base + "/metrics"
            extra = " metric=vllm:num_requests_waiting" if kind == "metric" else ""
            assert observe(make("%s url=%s %s%s" % (kind, url, source, extra))).ok
        sent = [r.headers.get("authorization") for r in b.requests]
    assert sent == ["Bearer sk-metrics-file", "Bearer sk-metrics-env"]
