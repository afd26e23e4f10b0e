"""Fast tests of the preset checks against replies captured from the real servers
(tests/fixtures/real-servers), replayed with their captured status and headers. Each one pins
a mismatch the real servers showed (issue 16); the scenario tests (test_vllm.py,
test_llamacpp.py) show the same against the running servers.
"""

import asyncio
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from probed.checks.base import Check, CheckResources, Observation
from probed.checkspecs import build_checks
from probed.pod import Pod
from probed.podevents import Restarted
from probed.presets import FLAVOURS, backend_checks

from .replay import CAPTURES, Replay, captured

LLAMA = "llamacpp-0.6.0-dev/"
LLAMA_OLD = "llamacpp-0.5.0-dev/"
VLLM = "vllm-0.32-cpu/"
KEY = "sk-capture-test"
SCRAPE_REUSE = 1.1  # a scrape younger than 1 s is reused (scrape_selectors): wait past that


def preset(flavour: str, base: str, **opts: Any) -> Dict[str, Check]:
    """The checks `--<flavour> base` expands into, by name, sharing one set of resources."""
    full = {"stall_after": 120.0}
    full.update(opts)
    raws = backend_checks(FLAVOURS[flavour], base, full)
    checks = build_checks(raws, ["--" + flavour] * len(raws), CheckResources())
    return {c.name: c for c in checks}


def observe(check: Check) -> Observation:
    async def run() -> Observation:
        return await asyncio.wait_for(check.observe(), 10)
    return asyncio.run(run())


def verdict(check: Check, obs: Observation, **overrides: Any) -> Any:
    config: Dict[str, Any] = dict(check.config)
    config.update(overrides)
    return check.judge(obs, config, True)


# --- llama.cpp ---------------------------------------------------------------------------------

def test_llamacpp_one_long_generation_is_progress() -> None:
    """Issue 16.1: two scrapes 4 s apart during one long generation: tokens_predicted_total
    stayed 0 (it rises when the request ends) while n_decode_total went 38 -> 106."""
    with Replay({"/metrics": captured(LLAMA + "metrics-long-generation-1.txt")}) as server:
        progress = preset("llamacpp", server.url, stall_after=0.2)["llamacpp-progress"]
        old = preset("llamacpp", server.url, stall_after=0.2)["llamacpp-progress"]
        old.config["counter"] = old.config["counter"][1:]  # what the preset read before
        old.counter_name = old.config["counter"][0].name
        observe(progress), observe(old)
        time.sleep(SCRAPE_REUSE)
        server.routes["/metrics"] = captured(LLAMA + "metrics-long-generation-2.txt")
        assert verdict(progress, observe(progress)) == (
            True, "1 running, llamacpp:n_decode_total at 106 (stall after 200ms flat)")
        ok, reason = verdict(old, observe(old))
        assert not ok and reason.startswith(
            "stalled: 1 running, llamacpp:tokens_predicted_total flat for "), reason


def test_llamacpp_process_identity_is_the_header() -> None:
    """Issue 16.3: no process_start_time_seconds; the Process-Start-Time-Unix header (monotonic
    microseconds) names the process: a new value is a restart, shown as is, never as a date."""
    with Replay({"/metrics": captured(LLAMA + "metrics-process-a.txt")}) as server:
        process = preset("llamacpp", server.url)["llamacpp-process"]
        first = observe(process)
        assert first.incarnation == "Process-Start-Time-Unix 4140487181", first
        assert first.reason == "process Process-Start-Time-Unix 4140487181"
        server.routes["/metrics"] = captured(LLAMA + "metrics-process-b.txt")
        time.sleep(SCRAPE_REUSE)
        second = observe(process)
    assert second.incarnation == "Process-Start-Time-Unix 4148877906"
    pod = Pod([process], 0.0, 0.0)
    learned = pod.observe(process.name, first, 0.0, 1.0, 1.0, 1.0)
    assert not any(isinstance(e, Restarted) for e in learned)  # the first one is learned
    events = pod.observe(process.name, second, 0.0, 2.0, 2.0, 2.0)
    restarted = [e for e in events if isinstance(e, Restarted)]
    assert [e.why for e in restarted] == [
        "process identity changed from Process-Start-Time-Unix 4140487181 to "
        "Process-Start-Time-Unix 4148877906"]
    assert pod.incarnation == second.incarnation


def test_llamacpp_loading_reply_after_serving_is_a_new_incarnation() -> None:
    """Issue 16.2: a llama-server restarted faster than a poll is never seen refusing; its 503
    `Loading model` is the sign. Seen in CI: live 503 for the 3 polls of fail-after until the
    process check saw the new identity. The health check says `loading`, the pod restarts."""
    with Replay({"/health": captured(LLAMA_OLD + "health-ok.json")}) as server:
        health = preset("llamacpp", server.url)["llamacpp-health"]
        served = observe(health)
        server.routes["/health"] = captured(LLAMA_OLD + "health-loading-503.json", 503)
        loading = observe(health)
        server.routes["/health"] = (503, [], b'{"error":{"message":"Service Unavailable"}}')
        other = observe(health)
    assert (served.loading, loading.loading, other.loading) == (False, True, False)
    pod = Pod([health], 0.0, 0.0)
    pod.observe(health.name, served, 0.0, 1.0, 1.0, 1.0)
    assert pod.started
    events = pod.observe(health.name, loading, 0.0, 2.0, 2.0, 2.0)
    assert [e.why for e in events if isinstance(e, Restarted)] == [
        "llamacpp-health says the server is loading after it had served"]
    assert not pod.started and pod.verdict("live", 2.0).ok and pod.phase == "starting"


def test_llamacpp_api_key_goes_to_every_check_but_health(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16.4: llama-server --api-key leaves only /health open, so the metric checks send
    the key: from --api-key-file, else $LLAMA_API_KEY (llama-server's own variable)."""
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    routes = {"/metrics": captured(LLAMA + "metrics-process-a.txt"),
              "/health": captured(LLAMA_OLD + "health-ok.json")}
    for opts, env in (({"api_key_file": str(key)}, {}), ({}, {"LLAMA_API_KEY": KEY})):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with Replay(routes) as server:
            checks = preset("llamacpp", server.url, max_waiting=4, **opts)
            for name in ("llamacpp-health", "llamacpp-queue", "llamacpp-progress",
                         "llamacpp-inflight", "llamacpp-process"):
                assert observe(checks[name]).ok, name
        sent = {path: auth for path, auth in server.seen}
        assert sent == {"/health": None, "/metrics": "Bearer " + KEY}, sent


def test_after_a_restart_the_identity_comes_from_a_fresh_scrape() -> None:
    """The scrape is shared and reused for up to 1 s; right after probed saw a restart another
    way (refused connections), a reused body would still name the dead process, and the next
    poll would see "another" restart. Seen on the real server: two restart lines for one kill."""
    with Replay({"/metrics": captured(LLAMA + "metrics-process-a.txt")}) as server:
        process = preset("llamacpp", server.url)["llamacpp-process"]
        assert observe(process).incarnation == "Process-Start-Time-Unix 4140487181"
        server.routes["/metrics"] = captured(LLAMA + "metrics-process-b.txt")
        process.forget()  # what the engine does on a restart
        assert observe(process).incarnation == "Process-Start-Time-Unix 4148877906"


@pytest.mark.parametrize("capture, status, hint", [
    ("apikey-metrics-nokey.json", 401, "HTTP 401 (the server wants an API key: --api-key-file)"),
    ("nometrics-metrics.json", 501, "HTTP 501 (no such endpoint on this server: llama-server "
                                    "serves /metrics only with --metrics)"),
])
def test_llamacpp_metrics_refusals_say_why(capture: str, status: int, hint: str) -> None:
    """Issues 16.4 and 16.5: a 401 (no key) or 501 (no --metrics) on /metrics says why."""
    with Replay({"/metrics": captured(LLAMA_OLD + capture, status)}) as server:
        checks = preset("llamacpp", server.url, max_waiting=4)
        queue = observe(checks["llamacpp-queue"])
        progress = observe(checks["llamacpp-progress"])
    assert verdict(checks["llamacpp-queue"], queue) == (
        False, "%s/metrics: %s" % (server.url, hint))
    assert verdict(checks["llamacpp-progress"], progress) == (
        True, "progress unknown: %s/metrics: %s" % (server.url, hint))


# --- vLLM: paused and sleeping engines hold what /metrics does not count (issue 16.13) ---------

def test_vllm_paused_engine_is_not_ready_and_its_count_is_unknown() -> None:
    """/pause (dev mode): the gauge says awake and running/waiting read 0 while the engine
    holds a request; /is_paused is what tells, asked with --vllm-dev-mode."""
    routes = {"/metrics": captured(VLLM + "paused_holding_one_metrics.body"),
              "/is_paused": captured(VLLM + "is_paused_true.json")}
    with Replay(routes) as server:
        default = preset("vllm", server.url)  # /is_paused is an engine call: not asked
        assert verdict(default["vllm-awake"], observe(default["vllm-awake"])) == (
            True, "awake (vllm:engine_sleep_state)")
        assert observe(default["vllm-inflight"]).reason == "0 in flight"
        assert "/is_paused" not in [p for p, _ in server.seen]
        checks = preset("vllm", server.url, vllm_dev_mode=True)
        awake, inflight = checks["vllm-awake"], checks["vllm-inflight"]
        assert verdict(awake, observe(awake)) == (
            False, "paused (/is_paused): the engine holds new requests")
        obs = observe(inflight)
        assert (obs.ok, obs.reason) == (False, "engine paused (/is_paused): the requests it "
                                               "holds are not counted in /metrics")
        server.routes["/is_paused"] = captured(VLLM + "is_paused_false.json")
        assert verdict(awake, observe(awake)) == (True, "awake (vllm:engine_sleep_state)")
        obs = observe(inflight)
        assert (obs.ok, obs.reason, obs.value) == (True, "0 in flight", 0.0)


def test_vllm_sleeping_engine_count_is_unknown() -> None:
    """/sleep: the engine holds a request, running/waiting read 0: not drained, unknown."""
    with Replay({"/metrics": captured(VLLM + "sleeping_holding_one_metrics.body")}) as server:
        inflight = preset("vllm", server.url)["vllm-inflight"]
        obs = observe(inflight)
    assert (obs.ok, obs.reason) == (False, "engine asleep (vllm:engine_sleep_state): the "
                                           "requests it holds are not counted in /metrics")


def test_vllm_without_dev_mode_pause_is_asked_once() -> None:
    """--vllm-dev-mode on a server without it: /is_paused is 404, asked once, then not until
    a restart."""
    with Replay({"/metrics": captured(VLLM + "idle_metrics.body")}) as server:
        awake = preset("vllm", server.url, vllm_dev_mode=True)["vllm-awake"]
        for _ in range(3):
            assert verdict(awake, observe(awake)) == (True, "awake (vllm:engine_sleep_state)")
        assert [p for p, _ in server.seen].count("/is_paused") == 1
        awake.forget()
        observe(awake)
        assert [p for p, _ in server.seen].count("/is_paused") == 2


@pytest.mark.parametrize("idle_sleep, expected", [
    (False, (False, "sleeping (engine 0; vllm:engine_sleep_state)")),
    (True, (True, "sleeping (engine 0; vllm:engine_sleep_state); idle sleep: wakes on the next "
                  "request")),
])
def test_vllm_idle_sleep_policy(idle_sleep: bool, expected: Any) -> None:
    """Issue 16.15: an engine vLLM put to sleep itself (--sleep-idle-ttl) wakes on the next
    request, so with --idle-sleep it stays ready; by default sleeping fails ready."""
    with Replay({"/metrics": captured(VLLM + "sleeping_level1_metrics.body")}) as server:
        awake = preset("vllm", server.url, idle_sleep=idle_sleep)["vllm-awake"]
        assert verdict(awake, observe(awake)) == expected


# --- metric names: drift and SGLang's two spellings --------------------------------------------

def test_a_configured_metric_absent_from_the_body_is_visible() -> None:
    """Issue 16.17: vLLM 0.32 has no vllm:gpu_cache_usage_perc (renamed): a check that still
    asks for it passes as missing, and says the name is absent; the preset's fallback list
    reads the new name."""
    from probed.checks import CHECK_KINDS
    from probed.checkspecs import build_spec, split_check_text
    with Replay({"/metrics": captured(VLLM + "idle_metrics.body")}) as server:
        spec = build_spec(split_check_text(
            "metric url=%s/metrics metric=vllm:gpu_cache_usage_perc max=0.9" % server.url,
            "t"), "t")
        old = CHECK_KINDS["metric"](spec, CheckResources())
        obs = observe(old)
        kv = preset("vllm", server.url, max_kv_cache=0.9)["vllm-kv-cache"]
        kv_obs = observe(kv)
    assert verdict(old, obs) == (True, "no series vllm:gpu_cache_usage_perc (missing=pass); "
                                       "absent from the body: vllm:gpu_cache_usage_perc")
    assert obs.detail is not None and obs.detail["absent"] == ["vllm:gpu_cache_usage_perc"]
    assert verdict(kv, kv_obs) == (True, "max(vllm:kv_cache_usage_perc) = 0 <= max 0.9")
    assert kv_obs.detail is not None and "absent" not in kv_obs.detail


def test_sglang_names_behind_its_router() -> None:
    """Issue 16.16: SGLang's router exposes `sglang_` names where the server says `sglang:`;
    the preset reads both. The body is SGLang's documented exposition (tests/fixtures/metrics),
    spelled as the router spells it."""
    doc = (CAPTURES.parent / "metrics" / "sglang_docs_production_metrics.txt").read_bytes()
    for body in (doc, doc.replace(b"sglang:", b"sglang_")):
        with Replay({"/metrics": (200, [("Content-Type", "text/plain")], body)}) as server:
            checks = preset("sglang", server.url, max_waiting=10 ** 6)
            queue, progress = checks["sglang-queue"], checks["sglang-progress"]
            ok, reason = verdict(queue, observe(queue))
            assert ok and reason.startswith("sum(sglang") and "num_queue_reqs) = " in reason, \
                reason
            obs = observe(progress)
            assert obs.detail is not None and "absent" not in obs.detail, obs.detail
