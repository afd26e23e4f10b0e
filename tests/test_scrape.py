"""probed.scrape: the checks of one metrics source cost one scrape per interval, whatever their
count and jitter (issue 16 item 12, issue 18 item 4).

A loopback backend serving the real vLLM body counts the requests while N checks poll it for a
short simulated window, each on its own interval with the engine's +-10% jitter.
"""

import asyncio
import random
import time
from pathlib import Path
from typing import List, Optional

import pytest

from backends import Backend
from probed.checks import CHECK_KINDS
from probed.checks.base import Check, CheckResources
from probed.checkspecs import build_spec, split_check_text
from probed.scrape import is_openmetrics

VLLM_REAL = (Path(__file__).resolve().parent / "fixtures" / "metrics" / "real"
             / "vllm_inferstack-real.txt").read_bytes()
SELECTORS = ["vllm:num_requests_waiting", "vllm:num_requests_running",
             "vllm:kv_cache_usage_perc", "vllm:engine_sleep_state",
             "process_start_time_seconds", "vllm:generation_tokens_total"]

pytestmark = pytest.mark.timeout(60)


def make(text: str, resources: Optional[CheckResources] = None) -> Check:
    spec = build_spec(split_check_text(text, "test"), "test")
    return CHECK_KINDS[spec.kind](spec, resources)


async def poll(checks: List[Check], interval: float, window: float, rng: random.Random) -> None:
    """Each check polls for `window` seconds, sleeping interval +-10% between polls."""
    async def one(check: Check) -> None:
        await asyncio.sleep(rng.uniform(0, interval))  # checks start out of phase
        end = time.monotonic() + window
        while time.monotonic() < end:
            obs = await check.observe()
            assert obs.ok, obs
            await asyncio.sleep(interval * rng.uniform(0.9, 1.1))
    await asyncio.gather(*(one(c) for c in checks))


@pytest.mark.parametrize("count", [2, 6, 12])
def test_n_checks_of_one_source_cost_about_one_scrape_per_interval(count: int) -> None:
    interval, window = 0.2, 2.0
    with Backend(body=VLLM_REAL) as backend:
        resources = CheckResources()
        url = backend.url + "/metrics"
        checks = [make("metric name=m%d url=%s metric=%s interval=%gs"
                       % (i, url, SELECTORS[i % len(SELECTORS)], interval), resources)
                  for i in range(count)]
        asyncio.run(poll(checks, interval, window, random.Random(count)))
        scrapes = len(backend.requests)
    rounds = window / interval  # 10: what one check alone costs
    # Before: a body was reused only while younger than half the interval, so N checks made
    # up to N scrapes a round (28 a minute against a real vLLM at default intervals).
    assert rounds * 0.5 <= scrapes <= rounds * 1.3 + 2, scrapes


def test_a_check_polled_faster_than_its_interval_still_gets_fresh_readings() -> None:
    # Until ready the engine polls at --start-interval, faster than the interval: the reuse
    # window follows the pace a reader really asks at, not its configured interval.
    with Backend(body=VLLM_REAL) as backend:
        check = make("metric url=%s/metrics metric=vllm:num_requests_waiting interval=10s"
                     % backend.url, CheckResources())

        async def fast() -> None:
            for _ in range(6):
                await check.observe()
                await asyncio.sleep(0.1)
        asyncio.run(fast())
        assert len(backend.requests) >= 5  # the first two share; then each ask is 0.1 s apart


def test_a_reader_asking_for_max_age_zero_always_gets_a_new_scrape() -> None:
    with Backend(body=VLLM_REAL) as backend:
        resources = CheckResources()
        url = backend.url + "/metrics"
        slow = make("metric name=slow url=%s metric=vllm:num_requests_waiting interval=30s"
                    % url, resources)
        drain = make("inflight url=%s metric=vllm:num_requests_running" % url, resources)

        other = make("metric name=other url=%s metric=vllm:num_requests_waiting interval=30s"
                     % url, resources)

        async def run() -> None:
            await slow.observe()
            for _ in range(3):  # each a new scrape, though the last reading is fresh
                assert (await drain.observe()).ok
            await other.observe()  # reuses the drain's last reading
        asyncio.run(run())
        assert len(backend.requests) == 4


def test_a_dormant_reader_stops_setting_the_pace() -> None:
    # A check that stops polling (started-only, after the latch) must not keep the window at
    # its old fast pace: the others go back to one scrape per their own interval.
    with Backend(body=VLLM_REAL) as backend:
        resources = CheckResources()
        url = backend.url + "/metrics"
        fast = make("metric name=fast url=%s metric=vllm:num_requests_waiting interval=100ms"
                    % url, resources)
        slow = [make("metric name=slow%d url=%s metric=vllm:num_requests_running interval=800ms"
                     % (i, url), resources) for i in range(2)]

        async def run() -> int:
            for _ in range(3):
                await fast.observe()
                await asyncio.sleep(0.1)
            before = len(backend.requests)
            for _ in range(4):  # fast has gone quiet; the slow two ask 0.2 s apart
                await slow[0].observe()
                await asyncio.sleep(0.2)
                await slow[1].observe()
                await asyncio.sleep(0.6)
            return len(backend.requests) - before
        # one scrape a round; 8 if the quiet check's 100 ms pace still set the window
        assert asyncio.run(run()) <= 5


@pytest.mark.parametrize("ctype,expected", [
    ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
    ("text/plain; version=0.0.4; charset=utf-8", False),  # prometheus_client, llama.cpp
    ("text/plain; version=1.0.0; charset=utf-8", False),  # vLLM 0.32 (prometheus_client 0.22)
    ("text/plain", None),  # no version: the body's last line decides
    ("", None),
])
def test_the_content_type_decides_the_format_as_prometheus_does(ctype: str,
                                                                expected: Optional[bool]) -> None:
    assert is_openmetrics({"content-type": ctype} if ctype else {}) is expected
