"""Tests for the vLLM simulator (probed/vllmsim*.py) over real loopback HTTP.

Each state is checked by what a probe sees on the wire: connection refused, /health codes and
bodies, /metrics values (read with probed's own exposition parser), inference replies, and the
control port. The /metrics layout is also checked against the real vLLM 0.29 capture in
tests/fixtures/metrics/real. Delays are short (tenths of a second); every wait is bounded.
"""

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional

import pytest

from probed.client import FetchError, Response, fetch
from probed.expfmt import parse_samples, select_series
from probed.sim.vllm import VLLMSimulator
from probed.sim.api import (SIM_STATES, SimEngineValues, SimMetricsSnapshot,
                                render_sim_metrics, sim_go_float, sim_state_params)
from probed.sim.cli import sim_main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL_VLLM = FIXTURES / "metrics" / "real" / "vllm_inferstack-real.txt"
REAL_032 = FIXTURES / "real-servers" / "vllm-0.32-cpu"  # a real vLLM 0.32 (CPU build)
WAIT = 5.0  # upper bound of every "until" loop (functional bound, not a timing assertion)
DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]


# ---- helpers ---------------------------------------------------------------------------------

def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@contextlib.asynccontextmanager
async def simulator(**kwargs: Any) -> AsyncIterator[VLLMSimulator]:
    kwargs.setdefault("token_latency", 0.001)
    sim = VLLMSimulator("127.0.0.1", 0, **kwargs)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def get(sim: VLLMSimulator, path: str, **kwargs: Any) -> Response:
    kwargs.setdefault("timeout", 2.0)
    return await fetch(sim.url + path, **kwargs)


async def post_json(sim: VLLMSimulator, path: str, payload: Any, **kwargs: Any) -> Response:
    headers = dict(kwargs.pop("headers", {}), **{"Content-Type": "application/json"})
    return await get(sim, path, method="POST", headers=headers,
                     body=json.dumps(payload).encode(), **kwargs)


async def refused(sim: VLLMSimulator, path: str = "/health") -> bool:
    try:
        await get(sim, path)
    except FetchError as exc:
        return exc.kind == "refused"
    return False


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not reached within %ss: %s" % (WAIT, what))


async def metrics(sim: VLLMSimulator) -> bytes:
    reply = await get(sim, "/metrics")
    assert reply.status == 200
    assert "content-type: " + reply.headers["content-type"] in (
        REAL_032 / "idle_metrics.headers").read_text().splitlines()
    return reply.body


def values(body: bytes, selector: str) -> List[float]:
    return [v for _, v in select_series(body, [selector])[0]]


def total(body: bytes, selector: str) -> float:
    found = values(body, selector)
    assert found, "no series %s in the body" % selector
    return sum(found)


def complete(max_tokens: int = 1, **extra: Any) -> Dict[str, Any]:
    return dict({"model": "sim-model", "prompt": "Say hi", "max_tokens": max_tokens}, **extra)


# ---- pure parts ----------------------------------------------------------------------------------

def test_go_float_matches_the_real_capture() -> None:
    assert sim_go_float(0) == "0.0"
    assert sim_go_float(584) == "584.0"
    assert sim_go_float(1789901963.352685) == "1.789901963352685e+09"
    assert sim_go_float(1048576) == "1.048576e+06"
    assert sim_go_float(1.4721317291259766) == "1.4721317291259766"
    assert sim_go_float(float("inf")) == "+Inf" and sim_go_float(float("nan")) == "NaN"


def test_state_params_validate_and_name_the_problem() -> None:
    assert sim_state_params("busy", {"rate": "10"})["rate"] == 10.0
    assert sim_state_params("loading", {})["seconds"] is None
    assert sim_state_params("dead", {}, {"exit_after": 0.5})["exit_after"] == 0.5
    with pytest.raises(ValueError, match="unknown state 'nap'.*loading"):
        sim_state_params("nap", {})
    with pytest.raises(ValueError, match="busy has no parameter speed"):
        sim_state_params("busy", {"speed": 1})
    with pytest.raises(ValueError, match="kv=.*0..1"):
        sim_state_params("busy", {"kv": 2})
    with pytest.raises(ValueError, match="level=.*0, 1 or 2"):
        sim_state_params("sleeping", {"level": 3})
    with pytest.raises(ValueError, match="rate='fast' is not a number"):
        sim_state_params("busy", {"rate": "fast"})


def test_metrics_layout_follows_the_real_vllm_capture() -> None:
    """Every family the simulator shares with real vLLM 0.29 has the same HELP and TYPE lines,
    label order (`le` between `engine` and `model_name`) and number format."""
    real = REAL_VLLM.read_text(encoding="utf-8").splitlines()
    real_meta = {" ".join(line.split(" ")[:3]): line for line in real if line.startswith("# ")}
    snap = SimMetricsSnapshot("qwen2.5-1.5b", "v1", 1789901808.66, 1789901963.352685, 28.04,
                              [SimEngineValues(generation_tokens=584, prompt_tokens=530,
                                               finished=10, ttft_count=10, ttft_sum=1.47)])
    ours = render_sim_metrics(snap).decode("utf-8").splitlines()
    shared = [line for line in ours if line.startswith("# ")
              and " ".join(line.split(" ")[:3]) in real_meta]
    assert len(shared) >= 30, "too few families in common with the capture: %d" % len(shared)
    for line in shared:
        assert line == real_meta[" ".join(line.split(" ")[:3])]
    for expected in ('vllm:generation_tokens_total{engine="0",model_name="qwen2.5-1.5b"} 584.0',
                     'vllm:request_success_total{engine="0",finished_reason="length",'
                     'model_name="qwen2.5-1.5b"} 10.0',
                     'vllm:generation_tokens_created{engine="0",model_name="qwen2.5-1.5b"} '
                     '1.789901963352685e+09',
                     'vllm:engine_sleep_state{engine="0",model_name="qwen2.5-1.5b",'
                     'sleep_state="awake"} 1.0',
                     'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.25",'
                     'model_name="qwen2.5-1.5b"} 10.0'):
        assert expected in ours
    assert "process_start_time_seconds 1.78990180866e+09" in ours
    assert len(list(parse_samples(render_sim_metrics(snap)))) > 50


def test_metrics_body_parses_with_prometheus_client() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    snap = SimMetricsSnapshot("m", "v1", 1.0, 2.0, 0.0,
                              [SimEngineValues(running=1), SimEngineValues(waiting=2)])
    families = {f.name: f for f in parser.text_string_to_metric_families(
        render_sim_metrics(snap).decode())}
    assert {s.value for s in families["vllm:num_requests_waiting"].samples} == {0.0, 2.0}
    assert families["vllm:generation_tokens"].type == "counter"


# ---- states on the wire --------------------------------------------------------------------------

def test_loading_refuses_connections_then_opens() -> None:
    async def scenario() -> None:
        async with simulator(state="loading", state_params={"seconds": 0.3}) as sim:
            assert await refused(sim) and not sim.listening and sim.state == "loading"
            await until(lambda: _health_is(sim, 200), "the port opens after loading")
            assert sim.state == "ready" and sim.incarnation == 1
            assert (await get(sim, "/health")).body == b""
    run(scenario())


async def _health_is(sim: VLLMSimulator, status: int) -> bool:
    try:
        return (await get(sim, "/health")).status == status
    except FetchError:
        return False


def test_ready_health_models_and_fastapi_errors() -> None:
    async def scenario() -> None:
        async with simulator(model="my-model") as sim:
            health = await get(sim, "/health")
            assert (health.status, health.body) == (200, b"")
            assert "content-type" not in health.headers and health.headers["server"] == "uvicorn"
            models = (await get(sim, "/v1/models")).json()
            assert models["object"] == "list"
            assert [(m["id"], m["object"], m["owned_by"]) for m in models["data"]] == [
                ("my-model", "model", "vllm")]
            missing = await get(sim, "/nope")
            assert (missing.status, missing.json()) == (404, {"detail": "Not Found"})
            assert (await get(sim, "/health", method="POST")).status == 405
            assert (await get(sim, "/is_sleeping")).status == 404  # not in dev mode
            body = await metrics(sim)
            assert total(body, "vllm:num_requests_running") == 0
            assert values(body, 'vllm:engine_sleep_state{sleep_state="awake"}') == [1.0]
            assert sim.hits["/health"] == 2
    run(scenario())


def test_busy_tokens_rise_over_time_across_engines() -> None:
    async def scenario() -> None:
        async with simulator(num_engines=3) as sim:
            sim.set_state("busy", running=5, waiting=7, kv=0.6, rate=400)
            first = await metrics(sim)
            assert total(first, "vllm:num_requests_running") == 5
            assert total(first, "vllm:num_requests_waiting") == 7
            assert max(values(first, "vllm:kv_cache_usage_perc")) == 0.6
            engines = {lab["engine"] for lab, _ in
                       select_series(first, ["vllm:num_requests_running"])[0]}
            assert engines == {"0", "1", "2"}
            start = total(first, "vllm:generation_tokens_total")
            await until(lambda: _tokens_above(sim, start), "generation tokens rise while busy")
            assert values(await metrics(sim), "process_start_time_seconds") == [
                sim.process_start_time]
    run(scenario())


async def _tokens_above(sim: VLLMSimulator, floor: float) -> bool:
    return total(await metrics(sim), "vllm:generation_tokens_total") > floor


def test_saturated_shows_a_long_queue_and_full_cache() -> None:
    async def scenario() -> None:
        async with simulator(num_engines=2) as sim:
            sim.set_state("saturated")
            body = await metrics(sim)
            assert total(body, "vllm:num_requests_waiting") == 40
            assert total(body, "vllm:num_requests_running") == 64
            assert max(values(body, "vllm:kv_cache_usage_perc")) == 0.98
            assert total(body, 'vllm:num_requests_waiting_by_reason{reason="capacity"}') == 40
            assert (await get(sim, "/health")).status == 200
            reply = await post_json(sim, "/v1/completions", complete())
            assert reply.status == 200
    run(scenario())


def test_stalled_keeps_health_200_freezes_gauges_and_hangs_inference() -> None:
    """As a real 0.32 with its EngineCore SIGSTOPped: /health 200, gauges frozen (running stays
    what it was, a new request does not show), tokens flat, requests never answered."""
    async def scenario() -> None:
        async with simulator() as sim:
            sim.set_state("busy", rate=1000)
            await asyncio.sleep(0.05)
            sim.set_state("stalled", running=3)
            before = await metrics(sim)
            hung = asyncio.ensure_future(post_json(sim, "/v1/completions", complete(), timeout=10))
            await asyncio.sleep(0.2)
            after = await metrics(sim)
            assert total(after, "vllm:num_requests_running") == 3
            assert total(after, "vllm:generation_tokens_total") == total(
                before, "vllm:generation_tokens_total") > 0
            assert (await get(sim, "/health")).status == 200 and not hung.done()
            with pytest.raises(FetchError) as info:
                await post_json(sim, "/v1/completions", complete(), timeout=0.3)
            assert info.value.kind == "timeout"
            sim.set_state("ready")  # the engine recovers: the held request finishes
            assert (await hung).status == 200
            assert sim.requests_running == 0
    run(scenario())


async def _running_is(sim: VLLMSimulator, count: int) -> bool:
    return total(await metrics(sim), "vllm:num_requests_running") == count


def test_sleeping_gauges_and_requests_wait_until_wake_up() -> None:
    async def scenario() -> None:
        async with simulator(dev_mode=True, num_engines=2) as sim:
            sim.set_state("sleeping", level=1)
            assert (await get(sim, "/health")).status == 200
            body = await metrics(sim)
            assert values(body, 'vllm:engine_sleep_state{sleep_state="awake"}') == [0.0, 0.0]
            assert values(body, 'vllm:engine_sleep_state{sleep_state="weights_offloaded"}') == [
                1.0, 1.0]
            assert (await get(sim, "/is_sleeping")).json() == {"is_sleeping": True}
            held = asyncio.ensure_future(post_json(sim, "/v1/chat/completions", {
                "model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2}, timeout=10))
            await asyncio.sleep(0.2)
            assert not held.done()
            # a real 0.32 asleep holding a request reads 0 running and 0 waiting
            assert await _waiting_is(sim, 0) and await _running_is(sim, 0)
            woke = await get(sim, "/wake_up", method="POST")
            assert (woke.status, woke.body) == (200, (REAL_032 / "wake_up_response.txt").read_bytes(
            ).split(b" [")[0])
            reply = await held
            assert reply.status == 200 and reply.json()["usage"]["completion_tokens"] == 2
            assert (await get(sim, "/is_sleeping")).json() == {"is_sleeping": False}
            assert (await get(sim, "/sleep?level=2", method="POST")).json() == {
                "status": "sleeping", "level": 2}
            body = await metrics(sim)
            assert values(body, 'vllm:engine_sleep_state{sleep_state="discard_all"}') == [1.0, 1.0]
            await get(sim, "/wake_up", method="POST")
            level0 = await get(sim, "/sleep?level=0", method="POST")
            assert level0.body == (REAL_032 / "sleep_level0_response.txt").read_bytes(
            ).split(b" [")[0]
            assert (await get(sim, "/is_sleeping")).json() == {"is_sleeping": True}
            # as the real capture: asleep at level 0, all three series read 0
            real = (REAL_032 / "sleeping_level0_metrics.body").read_bytes()
            for state in ("awake", "weights_offloaded", "discard_all"):
                selector = 'vllm:engine_sleep_state{sleep_state="%s"}' % state
                assert values(await metrics(sim), selector) == [0.0, 0.0] and \
                    values(real, selector) == [0.0]
    run(scenario())


def test_paused_reads_awake_holds_requests_uncounted_until_resume() -> None:
    """Dev mode /pause, as a real 0.32: the sleep gauge says awake, /is_paused true, a new
    request is held and counted nowhere; /resume lets it finish."""
    async def scenario() -> None:
        async with simulator(dev_mode=True) as sim:
            assert (await get(sim, "/is_paused")).body == (
                REAL_032 / "is_paused_false.json").read_bytes()
            assert (await get(sim, "/pause?mode=keep", method="POST")).json() == {
                "status": "paused"}
            assert (await get(sim, "/is_paused")).body == (
                REAL_032 / "is_paused_true.json").read_bytes()
            held = asyncio.ensure_future(post_json(sim, "/v1/completions", complete(),
                                                   timeout=10))
            await asyncio.sleep(0.2)
            assert not held.done()
            body = await metrics(sim)
            real = (REAL_032 / "paused_holding_one_metrics.body").read_bytes()
            for selector in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                             'vllm:engine_sleep_state{sleep_state="awake"}'):
                assert values(body, selector) == values(real, selector), selector
            assert (await get(sim, "/health")).status == 200
            assert (await get(sim, "/resume", method="POST")).json() == {"status": "resumed"}
            assert (await held).status == 200
            assert (await get(sim, "/is_paused")).json() == {"is_paused": False}
    run(scenario())


async def _waiting_is(sim: VLLMSimulator, count: int) -> bool:
    return total(await metrics(sim), "vllm:num_requests_waiting") == count


def test_is_sleeping_is_404_without_dev_mode() -> None:
    async def scenario() -> None:
        async with simulator(state="sleeping") as sim:
            for path, method in (("/is_sleeping", "GET"), ("/wake_up", "POST"),
                                 ("/is_paused", "GET"), ("/pause", "POST"), ("/resume", "POST")):
                reply = await get(sim, path, method=method)
                assert (reply.status, reply.json()) == (404, {"detail": "Not Found"})
            assert values(await metrics(sim),
                          'vllm:engine_sleep_state{sleep_state="awake"}') == [0.0]
    run(scenario())


def test_completions_honour_max_tokens_and_count_tokens() -> None:
    async def scenario() -> None:
        async with simulator() as sim:
            reply = await post_json(sim, "/v1/completions", complete(max_tokens=3))
            data = reply.json()
            assert reply.status == 200 and data["object"] == "text_completion"
            assert data["model"] == "sim-model" and data["choices"][0]["finish_reason"] == "length"
            assert data["usage"]["completion_tokens"] == 3
            assert data["usage"]["total_tokens"] == 3 + data["usage"]["prompt_tokens"]
            chat = await post_json(sim, "/v1/chat/completions", {
                "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1})
            assert chat.json()["choices"][0]["message"]["role"] == "assistant"
            assert chat.json()["object"] == "chat.completion"
            body = await metrics(sim)
            assert total(body, "vllm:generation_tokens_total") == 4 == sim.generation_tokens
            assert total(body, 'vllm:request_success_total{finished_reason="length"}') == 2
            assert total(body, "vllm:prompt_tokens_total") > 0
            assert total(body, "vllm:time_to_first_token_seconds_count") == 2
    run(scenario())


def test_bad_inference_requests_get_openai_errors() -> None:
    async def scenario() -> None:
        async with simulator() as sim:
            wrong = await post_json(sim, "/v1/completions", complete(model="other"))
            assert wrong.status == 404
            assert wrong.json()["error"]["type"] == "NotFoundError"
            assert "other" in wrong.json()["error"]["message"]
            zero = await post_json(sim, "/v1/completions", complete(max_tokens=0))
            assert zero.status == 400 and zero.json()["error"]["param"] == "max_tokens"
            garbage = await get(sim, "/v1/completions", method="POST", body=b"{nope")
            assert garbage.status == 400 and "JSON" in garbage.json()["error"]["message"]
            assert sim.generation_tokens == 0
    run(scenario())


def test_api_key_guards_v1_only() -> None:
    async def scenario() -> None:
        async with simulator(api_key="s3cret") as sim:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                reply = await get(sim, "/v1/models", headers=headers)
                assert (reply.status, reply.json()) == (401, {"error": "Unauthorized"})
            denied = await post_json(sim, "/v1/completions", complete())
            assert denied.status == 401
            assert (await get(sim, "/health")).status == 200
            assert (await get(sim, "/metrics")).status == 200
            good = {"Authorization": "bearer s3cret"}  # the scheme is case-insensitive
            assert (await get(sim, "/v1/models", headers=good)).status == 200
            assert (await post_json(sim, "/v1/completions", complete(), headers=good)).status == 200
    run(scenario())


def test_restart_is_a_new_process_with_counters_at_zero() -> None:
    async def scenario() -> None:
        async with simulator() as sim:
            assert (await post_json(sim, "/v1/completions", complete(max_tokens=5))).status == 200
            body = await metrics(sim)
            old_start = values(body, "process_start_time_seconds")[0]
            assert total(body, "vllm:generation_tokens_total") == 5
            sim.set_state("restart", seconds=0.3)
            assert await refused(sim)
            await until(lambda: _health_is(sim, 200), "the new process opens the port")
            body = await metrics(sim)
            assert values(body, "process_start_time_seconds")[0] > old_start
            assert total(body, "vllm:generation_tokens_total") == 0
            assert total(body, "vllm:request_success_total") == 0
            assert sim.incarnation == 2 and sim.state == "ready"
    run(scenario())


def test_restart_faster_than_a_poll_still_changes_the_start_time() -> None:
    async def scenario() -> None:
        async with simulator() as sim:
            before = values(await metrics(sim), "process_start_time_seconds")[0]
            sim.set_state("restart", seconds=0)
            await until(lambda: _health_is(sim, 200), "the port reopens at once")
            assert values(await metrics(sim), "process_start_time_seconds")[0] > before
    run(scenario())


def test_dead_answers_503_then_the_port_closes() -> None:
    async def scenario() -> None:
        async with simulator(dead_exit_after=0.4) as sim:
            sim.set_state("dead", exit_on_request=0)
            health = await get(sim, "/health")
            assert (health.status, health.body) == (503, b"")
            assert (await get(sim, "/metrics")).status == 200  # the API process still serves
            reply = await post_json(sim, "/v1/completions", complete())
            assert reply.status == 500
            assert reply.json() == {"error": {"message": DEAD_MESSAGE, "type": "InternalServerError",
                                              "param": None, "code": 500}}
            await until(lambda: refused(sim), "the process exits after the delay")
            assert sim.state == "exited" and not sim.listening
    run(scenario())


def test_dead_engine_exits_right_after_a_failed_request() -> None:
    async def scenario() -> None:
        async with simulator(dead_exit_after=30) as sim:
            sim.set_state("dead")
            assert (await post_json(sim, "/v1/completions", complete())).status == 500
            await until(lambda: refused(sim), "vLLM's error handler stops the server")
            assert sim.state == "exited"
    run(scenario())


def test_closing_the_port_drops_requests_in_flight() -> None:
    async def scenario() -> None:
        async with simulator() as sim:
            sim.set_state("stalled")
            hung = asyncio.ensure_future(post_json(sim, "/v1/completions", complete(), timeout=5))
            await asyncio.sleep(0.2)
            assert not hung.done()  # held by the hung engine
            sim.set_state("exited")
            with pytest.raises(FetchError) as info:
                await hung
            assert info.value.kind in ("closed", "reset")
            assert await refused(sim)
    run(scenario())


@pytest.mark.parametrize("style,kv_name,labels", [
    ("early-v1", "vllm:gpu_cache_usage_perc", {"engine", "model_name"}),
    ("v0", "vllm:gpu_cache_usage_perc", {"model_name"}),
])
def test_older_metric_names(style: str, kv_name: str, labels: set) -> None:
    async def scenario() -> None:
        async with simulator(metrics_style=style, num_engines=2, state="busy") as sim:
            body = await metrics(sim)
            series = select_series(body, [kv_name])[0]
            assert series and all(set(lab) == labels for lab, _ in series)
            assert max(v for _, v in series) == 0.35
            assert total(body, "vllm:num_requests_running") == 4
            assert values(body, "vllm:kv_cache_usage_perc") == []
            assert values(body, "vllm:engine_sleep_state") == []
            assert bool(values(body, "vllm:num_requests_swapped")) == (style == "v0")
    run(scenario())


# ---- control surfaces ----------------------------------------------------------------------------

def test_control_port_drives_the_states_while_the_server_port_is_closed() -> None:
    async def scenario() -> None:
        async with simulator(state="loading", control_port=0) as sim:
            control = "http://127.0.0.1:%d/_sim/state" % sim.control_port
            status = (await fetch(control, timeout=2)).json()
            assert (status["state"], status["listening"]) == ("loading", False)
            assert await refused(sim)
            reply = await fetch(control + "/busy?running=3&rate=0", method="POST", timeout=2)
            assert reply.status == 200 and reply.json()["state"] == "busy"
            assert total(await metrics(sim), "vllm:num_requests_running") == 3
            reply = await fetch(control + "/sleeping", method="POST", timeout=2,
                                body=json.dumps({"level": 2}).encode())
            assert reply.json()["params"] == {"level": 2}
            bad = await fetch(control + "/nap", method="POST", timeout=2)
            assert bad.status == 400 and "expected one of" in bad.json()["error"]
            bad = await fetch(control + "/busy?speed=9", method="POST", timeout=2)
            assert bad.status == 400 and "speed" in bad.json()["error"]
            assert sim.state == "sleeping"
            assert (await get(sim, "/_sim/state")).status == 404  # not on the vLLM port
    run(scenario())


def _read_line(proc: "subprocess.Popen[bytes]", timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the simulator printed nothing within %ss" % timeout
    return proc.stdout.readline().decode()


def test_sim_main_runs_until_sigterm() -> None:
    code = "import sys; from probed.sim.cli import sim_main; sys.exit(sim_main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--control-port", "0", "--state", "loading",
         "--num-engines", "2", "--model", "cli-model"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        found = re.match(r"vllmsim port=(\d+) control_port=(\d+)", _read_line(proc, 10))
        assert found, "unexpected first line"
        port, control = int(found.group(1)), int(found.group(2))

        async def scenario() -> None:
            base = "http://127.0.0.1:%d" % port
            with pytest.raises(FetchError):
                await fetch(base + "/health", timeout=2)
            await fetch("http://127.0.0.1:%d/_sim/state/ready" % control, method="POST", timeout=2)
            assert (await fetch(base + "/health", timeout=2)).status == 200
            models = (await fetch(base + "/v1/models", timeout=2)).json()
            assert models["data"][0]["id"] == "cli-model"
        run(scenario())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and b"loading -> ready" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_sim_main_rejects_bad_arguments(capsys: pytest.CaptureFixture) -> None:
    assert sim_main(["--state", "nap"]) == 2
    assert sim_main(["--state", "busy", "--param", "speed=3"]) == 2
    assert "speed" in capsys.readouterr().err
    assert sim_main(["--param", "novalue"]) == 2
    assert set(SIM_STATES) >= {"loading", "ready", "busy", "saturated", "sleeping", "stalled",
                               "dead", "restart"}


def test_stop_releases_the_port() -> None:
    async def scenario() -> Optional[int]:
        async with simulator(state="loading", control_port=0) as sim:
            port = sim.port
        return port

    port = run(scenario())
    assert port is not None
    import socket
    with socket.socket() as probe:  # nothing holds the port any more: it can be bound again
        probe.bind(("127.0.0.1", port))
