"""probed against a REAL llama-server (llama.cpp), as a user runs it: `python3 -m probed
--llamacpp URL ...`, faults made with real signals to the real process.

Two servers for the module: a tiny model (loads at once, generates fast) for idle, saturation,
hangs, death and restarts, and a ~1.9 GB f16 model (`--load-mode dio`, so "Loading model" lasts
seconds; ~0.1 s a token on one thread) for loading, one long generation, draining and a fast
restart. Servers started with other flags are in test_llamacpp_flags.py. Every scenario records what /livez, /readyz and /startupz answered (Timeline) and checks
the detection time against a bound that allows for this process's own stalls.

The tests of issue 16's engine items (16.2, 16.7-16.9, 16.11) demand what the pod state machine
does: they failed on the engine before it.
"""

import signal
import threading
import time
from typing import Any, Callable, Dict, List

import pytest

from .procs import send
from .scenario import (
    Load,
    Probed,
    assert_detected,
    bound,
    never,
    record_row,
    start_probed,
)
from .servers import LlamaServer, port_refuses, request
from .timeline import Timeline, check_row, group_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KEY = "sk-probed-llama-test"


@pytest.fixture(scope="module")
def tiny(llama_servers: Callable[..., LlamaServer], tiny_gguf: str) -> LlamaServer:
    server = llama_servers(tiny_gguf)
    server.start().wait_ready()
    return server


@pytest.fixture(scope="module")
def big(llama_servers: Callable[..., LlamaServer], big_gguf: str) -> LlamaServer:
    """Not started: test_loading starts it (a test run alone starts it itself)."""
    return llama_servers(big_gguf, extra=["--load-mode", "dio"])


def probed_for(start_daemon: Any, server: LlamaServer, *args: str) -> Probed:
    return start_probed(start_daemon, ["--llamacpp", server.url] + list(args))


def wait_ready(timeline: Timeline, since: float, timeout: float = 60.0) -> None:
    for group in ("started", "ready", "live"):
        timeline.wait(group, True, since, timeout)


def per_token_seconds(server: LlamaServer) -> float:
    """Decode time of one token on this machine now (a short generation, timed by the server)."""
    status, doc = server.complete(n_predict=8)
    assert status == 200, doc
    return max(doc["timings"]["predicted_per_token_ms"] / 1000.0, 0.005)


# --- loading and start ------------------------------------------------------------------------

def test_loading_then_started(start_daemon: Any, big: LlamaServer) -> None:
    """Port open while loading, /health 503 "Loading model": not started, never dead; then all
    three pass, and no restart is seen right after the first start (issue 16.10)."""
    big.stop()
    probed = probed_for(start_daemon, big)
    with Timeline(probed.port, probed.pid) as tl:
        t0 = time.monotonic()
        tl.wait("started", False, t0, 10)
        big.start()
        loading_seen, t_ready = 0.0, 0.0
        while not t_ready:
            status = big.health()
            if status == 503 and not loading_seen:
                loading_seen = time.monotonic()
            if status == 200:
                t_ready = time.monotonic()
            assert time.monotonic() - t0 < big.start_timeout, big.log_tail()
            time.sleep(0.05)
        assert loading_seen, "llama-server never said 503 Loading model"
        started = assert_detected(tl, "started", True, t_ready, 3.0, "llama started")
        time.sleep(5)
        t_end = time.monotonic()
    never(tl, "live", t0, t_end, "loading")
    loading = tl.snapshot("started", loading_seen + 0.5, t_ready)
    assert loading and all(a.ok is False for a in loading), tl.lines(t0)
    assert any("Loading model" in a.reason for a in loading), tl.lines(t0)
    assert all(a.ok is False for a in tl.snapshot("ready", t0, t_ready)), tl.lines(t0)
    assert not tl.failures("started", started.at, t_end), tl.lines(t0)
    assert not probed.restarts(), probed.log.lines()
    record_row("llama.cpp", "loading (port open, 503 Loading model)", tl, loading_seen, t_end,
               "started %.1fs after /health 200" % (started.at - t_ready))


def test_idle_reports_its_process_identity(start_daemon: Any, tiny: LlamaServer) -> None:
    """Idle: all pass; the incarnation is the Process-Start-Time-Unix header (issue 16.3):
    monotonic microseconds, shown as an opaque identity, never as a date."""
    probed = probed_for(start_daemon, tiny)
    with Timeline(probed.port, probed.pid) as tl:
        t0 = time.monotonic()
        wait_ready(tl, t0)
        _, headers, _ = request(tiny.url + "/metrics")
        identity = "Process-Start-Time-Unix %s" % headers["process-start-time-unix"]
        tl.wait("ready", True, t0, 30)
        deadline = time.monotonic() + 30
        while group_json(probed.port, "ready")["incarnation"] != identity:
            assert time.monotonic() < deadline, group_json(probed.port, "ready")
            time.sleep(0.2)
        t_end = time.monotonic()
    assert check_row(probed.port, "live", "llamacpp-progress")["reason"] == "idle"
    record_row("llama.cpp", "idle", tl, t0, t_end, "-", note="incarnation %s" % identity)


# --- progress: one long generation (issue 16.1) -------------------------------------------------

def test_one_long_generation_is_progress_not_a_stall(start_daemon: Any, big: LlamaServer) -> None:
    """tokens_predicted_total rises only when a request finishes; one long generation must not
    fail live. With --stall-after 4s, the old counter failed live after ~5-10 s."""
    big.ensure_ready()
    seconds = 20.0
    n_predict = int(seconds / per_token_seconds(big))
    probed = probed_for(start_daemon, big, "--stall-after", "4s")
    with Timeline(probed.port, probed.pid) as tl:
        wait_ready(tl, time.monotonic())
        with Load(lambda: big.complete(n_predict=n_predict, timeout=300)) as load:
            t0 = time.monotonic()
            readings = []
            while load.alive():
                row = check_row(probed.port, "live", "llamacpp-progress")
                readings.append(row["reason"])
                time.sleep(1.0)
            t_end = time.monotonic()
    status, doc = load.results[0]
    assert status == 200 and doc["timings"]["predicted_n"] == n_predict, doc
    assert t_end - t0 > 10, "the generation took %.1fs: too short to show a stall" % (t_end - t0)
    never(tl, "live", t0, t_end, "one long generation")
    running = [r for r in readings if r.startswith("1 running, llamacpp:n_decode_total at ")]
    assert len(set(running)) >= 2, readings  # the step counter rose while it ran
    record_row("llama.cpp", "one long generation (%.0fs, --stall-after 4s)" % (t_end - t0),
               tl, t0, t_end, "never a stall", note=running[-1])


# --- saturation, hang, death, restarts ---------------------------------------------------------

def test_saturated_fails_ready_only(start_daemon: Any, tiny: LlamaServer) -> None:
    """--parallel 1 and a burst: deferred requests fail ready (--max-waiting 0), never live."""
    n_predict = int(1.5 / per_token_seconds(tiny))
    probed = probed_for(start_daemon, tiny, "--max-waiting", "0", "--interval", "1s")
    with Timeline(probed.port, probed.pid) as tl:
        wait_ready(tl, time.monotonic())
        with Load(lambda: tiny.complete(n_predict=min(n_predict, 3500), timeout=300),
                  count=8) as load:
            t0 = time.monotonic()
            failed = assert_detected(tl, "ready", False, t0, 1.1 + 1.0, "saturation")
            load.join(300)
            t_done = time.monotonic()
        back = assert_detected(tl, "ready", True, t_done, 1.1 + 1.0, "saturation over")
    assert "llamacpp-queue: sum(llamacpp:requests_deferred) = " in failed.reason, failed
    never(tl, "live", t0, back.at, "saturated")
    never(tl, "started", t0, back.at, "saturated")
    record_row("llama.cpp", "saturated (--parallel 1, burst of 8)", tl, t0, back.at,
               "ready 503 after %.1fs" % (failed.at - t0))


def test_hung_server_fails_live_after_fail_after(start_daemon: Any, tiny: LlamaServer) -> None:
    """SIGSTOP: connections are accepted and never answered; /health times out 3 times (the
    preset's fail-after) before live fails; SIGCONT heals it."""
    probed = probed_for(start_daemon, tiny, "--interval", "2s")
    with Timeline(probed.port, probed.pid) as tl:
        wait_ready(tl, time.monotonic())
        t0 = time.monotonic()
        send(tiny.pid, signal.SIGSTOP)
        try:
            dead = assert_detected(tl, "live", False, t0, 3 * (2.2 + 1.0) + 1.0, "hung")
            ready = tl.first("ready", False, t0)
        finally:
            send(tiny.pid, signal.SIGCONT)
        t_cont = time.monotonic()
        back = assert_detected(tl, "live", True, t_cont, 2.2 + 1.0, "resumed")
        tl.wait("ready", True, t_cont, 30)
    assert "llamacpp-health: timed out" in dead.reason, dead
    assert ready is not None and ready.at <= dead.at + bound(0, tl), tl.lines(t0)
    never(tl, "started", t0, back.at, "hung")
    record_row("llama.cpp", "hung (SIGSTOP)", tl, t0, back.at,
               "live 503 after %.1fs (3 health timeouts), ready 503 after %.1fs" % (
                   dead.at - t0, ready.at - t0))


def test_killed_then_restarted_slow(start_daemon: Any, tiny: LlamaServer) -> None:
    """SIGKILL: the port refuses; that is a restart, not death (the kubelet restarts the
    container): started unlatches, live passes while it loads; then the new process starts."""
    probed = probed_for(start_daemon, tiny, "--interval", "2s")
    with Timeline(probed.port, probed.pid) as tl:
        wait_ready(tl, time.monotonic())
        t0 = time.monotonic()
        tiny.kill(signal.SIGKILL)
        tiny.wait_exit(10)
        unlatched = assert_detected(tl, "started", False, t0, 2.2 + 1.0, "killed")
        # the first 503 may come between the restart and the first refused poll of the new
        # incarnation ("no result since the backend restarted"); the phase follows at once
        loading = tl.wait_reason("started", "loading for", unlatched.at, bound(2.2, tl))
        time.sleep(3)
        t_start = time.monotonic()
        tiny.start().wait_ready()
        t_up = time.monotonic()
        started = assert_detected(tl, "started", True, t_up, 3.0, "restarted")
        tl.wait("ready", True, t_up, 30)
    never(tl, "live", t0, started.at, "killed and restarted")
    assert "connection refused" in loading.reason, loading
    restarts = probed.restarts()
    assert len(restarts) == 1 and "refused connections after passing" in restarts[0], restarts
    record_row("llama.cpp", "killed, restarted after 3 s", tl, t0, started.at,
               "started 503 after %.1fs; 200 %.1fs after the new /health 200" % (
                   unlatched.at - t0, started.at - t_up), note=restarts[0])


@pytest.fixture(scope="module")
def handover(llama_servers: Callable[..., LlamaServer], tiny_gguf: str,
             start_daemon_module: Any) -> Dict[str, Any]:
    """A restart no poll can see: a new llama-server binds the same port with --reuse-port
    while the old one serves, then the old one is killed. The port never refuses."""
    old = llama_servers(tiny_gguf, extra=["--reuse-port"])
    old.start().wait_ready()
    probed = probed_for(start_daemon_module, old, "--interval", "1s")
    with Timeline(probed.port, probed.pid) as tl:
        wait_ready(tl, time.monotonic())
        before = group_json(probed.port, "ready")["incarnation"]
        new = llama_servers(tiny_gguf, port=old.port, extra=["--reuse-port"])
        new.start().wait_loaded()  # else its 503 Loading model is a restart a poll saw
        time.sleep(1.0)
        t0 = time.monotonic()
        old.kill(signal.SIGKILL)
        old.wait_exit(10)
        assert not port_refuses(old.port)
        new.wait_ready()
        probed.log.wait_line('msg="backend restarted"', timeout=bound(2 * 5.5 + 2, tl))
        t_restart = time.monotonic()
        tl.wait("started", True, t_restart, 30)
        time.sleep(2)
        t_end = time.monotonic()
    after = group_json(probed.port, "ready")["incarnation"]
    return {"tl": tl, "t0": t0, "t_end": t_end, "before": before, "after": after,
            "restarts": probed.restarts(), "detected": t_restart - t0}


def test_identity_header_witnesses_a_restart_no_poll_saw(handover: Dict[str, Any]) -> None:
    """Issue 16.3: the Process-Start-Time-Unix header changed, so probed saw a new process."""
    restarts = handover["restarts"]
    assert len(restarts) == 1, restarts
    assert "process identity changed from Process-Start-Time-Unix " in restarts[0], restarts
    assert handover["before"].startswith("Process-Start-Time-Unix ")
    assert handover["after"].startswith("Process-Start-Time-Unix ")
    assert handover["before"] != handover["after"]
    record_row("llama.cpp", "restarted, port never closed (--reuse-port handover)",
               handover["tl"], handover["t0"], handover["t_end"],
               "restart seen %.1fs after the old process died" % handover["detected"],
               note=restarts[0])


@pytest.fixture(scope="module")
def fast_restart(big: LlamaServer, start_daemon_module: Any) -> Dict[str, Any]:
    """The big model restarted with the port closed ~0.2 s: the new process then says 503
    Loading model for seconds."""
    big.ensure_ready()
    probed = probed_for(start_daemon_module, big, "--interval", "1s")
    with Timeline(probed.port, probed.pid) as tl:
        wait_ready(tl, time.monotonic())
        t0 = time.monotonic()
        closed = big.crash_and_restart(0.2)
        loading = 0.0
        while big.health() != 200:
            loading = loading or time.monotonic()
            assert time.monotonic() - t0 < big.start_timeout, big.log_tail()
            time.sleep(0.05)
        t_up = time.monotonic()
        tl.wait("started", True, t_up, 30)
        tl.wait("live", True, t_up, 30)
        time.sleep(3)
        t_end = time.monotonic()
    return {"tl": tl, "t0": t0, "t_up": t_up, "t_end": t_end, "closed": closed,
            "loading": loading, "restarts": probed.restarts()}


def test_fast_restart_is_a_new_incarnation_never_dead(fast_restart: Dict[str, Any]) -> None:
    """Issue 16.2: a server that says it is loading after it had served is a new incarnation:
    live passes and startupz fails for the whole reload (today live fails: the 503s count as
    failures of the started server, and startupz stays 200)."""
    tl, t0, t_up = fast_restart["tl"], fast_restart["t0"], fast_restart["t_up"]
    record_row("llama.cpp", "fast restart (port closed %.1fs, then 503 Loading %.1fs)" % (
        fast_restart["closed"], t_up - (fast_restart["loading"] or t_up)), tl, t0,
        fast_restart["t_end"], "see rows", note="; ".join(fast_restart["restarts"]))
    never(tl, "live", t0, fast_restart["t_end"], "fast restart")
    assert tl.first("started", False, t0) is not None, tl.lines(t0)
    assert tl.first("started", False, t0).at <= t_up, tl.lines(t0)


# --- draining and probed's own lateness --------------------------------------------------------

def test_drain_waits_for_the_running_generation(start_daemon: Any, big: LlamaServer) -> None:
    """/wait-for-drain: ready fails at once; the reply comes once the generation finished."""
    big.ensure_ready()
    n_predict = int(8.0 / per_token_seconds(big))
    probed = probed_for(start_daemon, big)
    with Timeline(probed.port, probed.pid) as tl:
        wait_ready(tl, time.monotonic())
        with Load(lambda: big.complete(n_predict=n_predict, timeout=300)) as load:
            deadline = time.monotonic() + 10
            while request(big.url + "/slots")[2].count(b'"is_processing":true') == 0:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            t0 = time.monotonic()
            reply: List[str] = []
            waiter = threading.Thread(target=lambda: reply.append(
                probed.admin("/wait-for-drain?timeout=120s")))
            waiter.start()
            draining = assert_detected(tl, "ready", False, t0, 0.5, "drain")
            waiter.join(150)
            t_reply = time.monotonic()
    assert draining.reason == "draining", draining
    assert reply and reply[0].startswith("drained after "), reply
    assert load.finished_at and t_reply >= load.finished_at[0] - 0.6, (reply, tl.lines(t0))
    never(tl, "live", t0, t_reply, "draining")
    record_row("llama.cpp", "drained (/wait-for-drain during a generation)", tl, t0, t_reply,
               "ready 503 after %.1fs; reply %.1fs after the generation ended" % (
                   draining.at - t0, t_reply - load.finished_at[0]), note=reply[0].strip())


def test_probed_frozen_is_no_evidence_against_the_server(start_daemon: Any,
                                                         tiny: LlamaServer) -> None:
    """Issue 16.9: with --interval 1s a result is stale after 4 s. probed stopped for 6 s, then
    resumed while the server answers nothing for 1.5 s: one slow answer is no evidence (the
    health check fails live only after 3), and probed's own lateness must not make it one.
    Staleness may fail ready; live needs evidence. (Today: stale, then the first timeout
    confirms the stale failure, and live fails.)"""
    probed = probed_for(start_daemon, tiny, "--interval", "1s")
    with Timeline(probed.port, probed.pid) as tl:
        wait_ready(tl, time.monotonic())
        send(probed.pid, signal.SIGSTOP)
        try:
            time.sleep(6)
            send(tiny.pid, signal.SIGSTOP)
        finally:
            send(probed.pid, signal.SIGCONT)
        t0 = time.monotonic()
        try:
            time.sleep(1.5)
        finally:
            send(tiny.pid, signal.SIGCONT)
        time.sleep(4)
        t_end = time.monotonic()
    record_row("llama.cpp", "probed stopped 6 s, server silent 1.5 s as it resumes", tl, t0,
               t_end, "-")
    never(tl, "live", t0, t_end, "probed resumed")
