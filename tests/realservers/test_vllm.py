"""probed against a REAL vLLM (0.32, CPU build), as a user runs it: `python3 -m probed --vllm
URL --api-key-file F ...`, faults made with real signals to the real processes.

One server for the module (a ~400 MB random-weight Llama, ~20 ms a token on one core, so a few
requests keep it busy for seconds; `--max-num-seqs 1`, `--api-key`, dev mode for /sleep and
/pause): 40-120 s to start on 2 cores, so it is shared, and each test leaves
it serving. The module's last tests kill its engine and start a new server. Every scenario
records what /livez, /readyz and /startupz answered and checks the detection time against a
bound that allows for this process's own stalls (while vLLM generates on a 2-core machine,
other processes were seen frozen for up to 15 s).

The tests of issue 16's engine items (16.2, 16.7-16.9, 16.11) demand what the pod state machine
does: they failed on the engine before it.
"""

import re
import signal
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest

from .procs import proc_alive, send
from .scenario import (
    Load,
    Probed,
    assert_detected,
    bound,
    never,
    record_row,
    start_probed,
    verbose,
)
from .servers import VLLMServer, port_refuses, request
from .timeline import Timeline, check_row, group_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

KEY = "sk-probed-vllm-test"
LONG = 480  # tokens of one long completion (max-model-len 512): ~10 s here


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory, slow_hf_model: str) -> Iterator[VLLMServer]:
    """The module's server, not started (test_loading starts it; any test starts it if needed)."""
    server = VLLMServer(str(tmp_path_factory.mktemp("vllm")), slow_hf_model, max_num_seqs=1,
                        dev_mode=True, api_key=KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("key") / "api-key"
    path.write_text(KEY + "\n")
    return str(path)


def probed_for(start_daemon: Any, server: VLLMServer, key_file: str, *args: str) -> Probed:
    return start_probed(start_daemon, ["--vllm", server.url, "--api-key-file", key_file] +
                        list(args))


def ready_probed(start_daemon: Any, server: VLLMServer, key_file: str, *args: str) -> Probed:
    """A probed that has seen the (running) server ready."""
    server.ensure_ready()
    probed = probed_for(start_daemon, server, key_file, *args)
    with Timeline(probed.port, probed.pid) as tl:
        t0 = time.monotonic()
        for group in ("started", "ready"):
            tl.wait(group, True, t0, 60)
    return probed


def long_completion(server: VLLMServer, tokens: int = LONG) -> Any:
    return server.complete(max_tokens=tokens, timeout=600)


def wait_running(server: VLLMServer, at_least: float = 1, timeout: float = 60) -> None:
    """Until vLLM's own gauge shows a request running."""
    deadline = time.monotonic() + timeout
    while True:
        body = request(server.url + "/metrics")[2].decode("utf-8")
        for line in body.splitlines():
            if line.startswith("vllm:num_requests_running{") and \
                    float(line.rsplit(" ", 1)[1]) >= at_least:
                return
        assert time.monotonic() < deadline, "no request running in vLLM"
        time.sleep(0.05)


# --- loading and start ------------------------------------------------------------------------

def test_loading_then_started(start_daemon: Any, vllm: VLLMServer, key_file: str) -> None:
    """The port refuses during the whole load: loading, live passes; then all three pass, and no
    restart is seen after the first start (issue 16.10)."""
    vllm.stop()
    probed = probed_for(start_daemon, vllm, key_file)
    with Timeline(probed.port, probed.pid) as tl:
        t0 = time.monotonic()
        vllm.start()
        vllm.wait_ready()
        t_up = time.monotonic()
        started = assert_detected(tl, "started", True, t_up, 3.0, "vLLM started")
        tl.wait("ready", True, t_up, 30)
        time.sleep(12)  # a progress poll (5 s) and more after the start
        t_end = time.monotonic()
    never(tl, "live", t0, t_end, "loading")
    loading = tl.snapshot("started", t0 + 1, t_up - 1)
    assert loading and all(a.ok is False and "loading" in a.reason and
                           "connection refused" in a.reason for a in loading), tl.lines(t0)
    assert not tl.failures("started", started.at, t_end), tl.lines(t0)
    assert not probed.restarts(), probed.log.lines()
    record_row("vLLM", "loading (port refused %.0fs)" % (t_up - t0), tl, t0, t_end,
               "started %.1fs after /health 200" % (started.at - t_up))


def test_idle(start_daemon: Any, vllm: VLLMServer, key_file: str) -> None:
    """Idle: all pass; sleep gauge awake, nothing in flight, the process start time is the
    incarnation. And no call into the engine: a vLLM 0.32 never answers /is_paused or
    /is_sleeping when its engine dies with one in flight, and then never exits."""
    vllm.ensure_ready()
    log_start = len(vllm.log_text())
    probed = ready_probed(start_daemon, vllm, key_file)
    text = verbose(probed.port, "ready")
    assert "[+]vllm-awake ok" in text and "[+]vllm-model ok" in text, text
    assert check_row(probed.port, "ready", "vllm-awake")["reason"] == \
        "awake (vllm:engine_sleep_state)"
    assert check_row(probed.port, "live", "vllm-progress")["reason"] == "idle"
    with Timeline(probed.port, probed.pid) as tl:
        t0 = time.monotonic()
        time.sleep(2)
        t_end = time.monotonic()
    incarnation = group_json(probed.port, "ready")["incarnation"]
    assert incarnation and incarnation.startswith("20"), incarnation  # a timestamp
    polled = vllm.log_text()[log_start:]
    assert '"GET /metrics HTTP/1.1" 200' in polled
    assert "/is_paused" not in polled and "/is_sleeping" not in polled, polled[-2000:]
    record_row("vLLM", "idle", tl, t0, t_end, "-", note="incarnation %s" % incarnation)


def test_without_the_key_the_reason_says_so(start_daemon: Any, vllm: VLLMServer) -> None:
    """--api-key guards /v1/*: without the key probed never starts, and says why."""
    vllm.ensure_ready()
    probed = start_probed(start_daemon, ["--vllm", vllm.url])
    hint = "HTTP 401 (the server wants an API key: --api-key-file)"
    with Timeline(probed.port, probed.pid) as tl:
        # the first polls are spread over half a second: from the first answer that says so,
        # every one does
        t0 = tl.wait_reason("started", hint, time.monotonic(), 10).at
        time.sleep(4)
        t_end = time.monotonic()
    answers = tl.snapshot("started", t0)
    assert answers and all(a.ok is False and hint in a.reason for a in answers), tl.lines(t0)
    never(tl, "live", t0, t_end, "no key")
    record_row("vLLM", "--api-key, probed without the key", tl, t0, t_end, "at once")


# --- saturation, sleep, pause, drain -----------------------------------------------------------

def test_saturated_fails_ready_only(start_daemon: Any, vllm: VLLMServer, key_file: str) -> None:
    """--max-num-seqs 1 and a burst: waiting requests fail ready (--max-waiting 1), never live.
    On this small machine the busy API server answers probed's polls late, so the first failure
    may be a timed-out poll; the queue must show within the bound all the same."""
    probed = ready_probed(start_daemon, vllm, key_file, "--max-waiting", "1", "--interval", "2s")
    with Timeline(probed.port, probed.pid) as tl:
        with Load(lambda: long_completion(vllm), count=4) as load:
            t0 = time.monotonic()
            first = tl.wait("ready", False, t0, 120)
            queue = tl.wait_reason("ready", "vllm-queue: sum(vllm:num_requests_waiting) = ",
                                   t0, 120)
            assert queue.at - t0 <= bound(2.2 + 5.0, tl), tl.lines(t0)
            load.join(600)
            t_done = time.monotonic()
        back = assert_detected(tl, "ready", True, t_done, 2.2 + 5.0, "saturation over")
    assert all(r[0] == 200 for r in load.results), load.results
    never(tl, "live", t0, back.at, "saturated")
    never(tl, "started", t0, back.at, "saturated")
    record_row("vLLM", "saturated (--max-num-seqs 1, 4 long requests)", tl, t0, back.at,
               "ready 503 after %.1fs (queue reason after %.1fs)" % (first.at - t0,
                                                                     queue.at - t0))


def test_sleeping_fails_ready(start_daemon: Any, vllm: VLLMServer, key_file: str) -> None:
    """Dev mode /sleep: /health stays 200, the sleep gauge says asleep: ready fails, live not;
    the drain cannot count what a sleeping engine holds, so it says unknown."""
    probed = ready_probed(start_daemon, vllm, key_file, "--interval", "2s")
    drainer = ready_probed(start_daemon, vllm, key_file)  # a drain lasts until a restart
    with Timeline(probed.port, probed.pid) as tl:
        t0 = time.monotonic()
        status, _, body = request(vllm.url + "/sleep?level=1", method="POST", timeout=60)
        assert status == 200, body
        try:
            asleep = assert_detected(tl, "ready", False, t0, 2.2 + 5.0, "sleep")
            drain = drainer.admin("/wait-for-drain?timeout=2s")
        finally:
            assert request(vllm.url + "/wake_up", method="POST", timeout=60)[0] == 200
        t_wake = time.monotonic()
        awake = assert_detected(tl, "ready", True, t_wake, 2.2 + 5.0, "wake_up")
    assert asleep.reason == "vllm-awake: sleeping (engine 0; vllm:engine_sleep_state)", asleep
    assert drain.startswith("timed out after") and "engine asleep" in drain, drain
    never(tl, "live", t0, awake.at, "sleeping")
    record_row("vLLM", "sleeping (dev mode /sleep level 1)", tl, t0, awake.at,
               "ready 503 after %.1fs" % (asleep.at - t0), note="drain: " + drain.strip())


def test_paused_fails_ready_and_the_drain_waits(start_daemon: Any, vllm: VLLMServer,
                                                key_file: str) -> None:
    """Issue 16.13: a paused engine (/pause, dev mode) reads awake on the gauge and holds new
    requests where /metrics does not count them: with --vllm-dev-mode, ready fails from
    /is_paused, and the drain reports unknown instead of "nothing in flight"."""
    probed = ready_probed(start_daemon, vllm, key_file, "--interval", "2s",
                          "--vllm-dev-mode", "true")
    drainer = ready_probed(start_daemon, vllm, key_file, "--vllm-dev-mode", "true")
    with Timeline(probed.port, probed.pid) as tl:
        t0 = time.monotonic()
        status, _, body = request(vllm.url + "/pause?mode=keep", method="POST", timeout=60)
        assert status == 200, body
        try:
            with Load(lambda: vllm.complete(max_tokens=4, timeout=300)) as held:
                paused = assert_detected(tl, "ready", False, t0, 2.2 + 5.0, "pause")
                time.sleep(1)
                assert held.alive(), held.results  # the engine holds it
                drain = drainer.admin("/wait-for-drain?timeout=3s")
                assert request(vllm.url + "/resume", method="POST", timeout=60)[0] == 200
                t_resume = time.monotonic()
        finally:
            request(vllm.url + "/resume", method="POST", timeout=60)
        back = assert_detected(tl, "ready", True, t_resume, 2.2 + 5.0, "resume")
    assert held.results and held.results[0][0] == 200, held.results
    assert paused.reason == "vllm-awake: paused (/is_paused): the engine holds new requests", \
        paused
    assert drain.startswith("timed out after") and "engine paused (/is_paused)" in drain, drain
    never(tl, "live", t0, back.at, "paused")
    record_row("vLLM", "paused (dev mode /pause?mode=keep)", tl, t0, back.at,
               "ready 503 after %.1fs" % (paused.at - t0), note="drain: " + drain.strip())


def test_drain_waits_for_running_requests(start_daemon: Any, vllm: VLLMServer,
                                          key_file: str) -> None:
    """/wait-for-drain while requests run: ready fails at once, the reply comes when the last
    request finished, never before."""
    probed = ready_probed(start_daemon, vllm, key_file)
    with Timeline(probed.port, probed.pid) as tl:
        with Load(lambda: long_completion(vllm), count=2) as load:
            wait_running(vllm)
            t0 = time.monotonic()
            reply: List[str] = []
            waiter = threading.Thread(target=lambda: reply.append(
                probed.admin("/wait-for-drain?timeout=300s", timeout=400)))
            waiter.start()
            draining = assert_detected(tl, "ready", False, t0, 0.5, "drain")
            waiter.join(400)
            t_reply = time.monotonic()
    assert draining.reason == "draining", draining
    assert reply and reply[0].startswith("drained after "), reply
    assert len(load.finished_at) == 2 and t_reply >= max(load.finished_at) - 0.6, (
        reply, load.finished_at, t_reply)
    never(tl, "live", t0, t_reply, "draining")
    record_row("vLLM", "drained (2 long requests running/waiting)", tl, t0, t_reply,
               "ready 503 after %.1fs; reply %.1fs after the last request" % (
                   draining.at - t0, t_reply - max(load.finished_at)), note=reply[0].strip())


# --- a hung engine -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hung(start_daemon_module: Any, vllm: VLLMServer, key_file: str) -> Dict[str, Any]:
    """EngineCore SIGSTOPped with a request running: /health stays 200, the gauges freeze
    (running 1, tokens flat). probed runs with --stall-after 6s; SIGCONT after live failed."""
    vllm.ensure_ready()
    probed = probed_for(start_daemon_module, vllm, key_file, "--stall-after", "6s")
    with Timeline(probed.port, probed.pid) as tl:
        for group in ("started", "ready"):
            tl.wait(group, True, time.monotonic(), 60)
        with Load(lambda: long_completion(vllm)) as load:
            wait_running(vllm)
            engine = vllm.engine_pid()
            t0 = time.monotonic()
            send(engine, signal.SIGSTOP)
            try:
                health = [vllm.health() for _ in range(3)]
                dead = tl.wait("live", False, t0, 60)
                ready_failed = tl.first("ready", False, t0)
            finally:
                send(engine, signal.SIGCONT)
            t_cont = time.monotonic()
            back = tl.wait("live", True, t_cont, 60)
            load.join(600)
        tl.wait("ready", True, t_cont, 60)
    return {"tl": tl, "t0": t0, "dead": dead, "ready": ready_failed, "back": back,
            "t_cont": t_cont, "health": health, "result": load.results[0]}


def test_hung_engine_fails_live_as_a_stall(hung: Dict[str, Any]) -> None:
    """/health says 200 throughout; progress (running 1, tokens flat 6 s) fails live within
    stall-after + one progress poll (5 s) + its timeout; SIGCONT heals it."""
    tl, t0, dead = hung["tl"], hung["t0"], hung["dead"]
    assert hung["health"] == [200, 200, 200], hung["health"]
    assert dead.reason.startswith("vllm-progress: stalled: 1 running, "
                                  "vllm:generation_tokens_total flat for "), dead
    took = dead.at - t0
    # The progress check polls every 5 s (+-10%): one poll may still see the tokens made just
    # before the SIGSTOP; from that poll the counter must stay flat 6 s, which the poll grid
    # sees at the second poll after it; plus the scrape's own time (up to its 5 s timeout).
    assert took <= bound(5.5 + 2 * 5.5 + 5.0, tl), (took, tl.lines(t0))
    assert hung["result"][0] == 200, hung["result"]  # the request finished after SIGCONT
    never(tl, "started", t0, hung["back"].at, "hung")
    ready = hung["ready"]
    record_row("vLLM", "hung (EngineCore SIGSTOP, 1 running, --stall-after 6s)", tl, t0,
               hung["back"].at, "live 503 after %.1fs; ready %s" % (
                   took, "503 after %.1fs" % (ready.at - t0) if ready else "stayed 200"))


def test_hung_engine_fails_ready_at_once(hung: Dict[str, Any]) -> None:
    """Issue 16.7: a stalled engine can serve nothing: ready fails no later than live (today
    ready stays 200: the stall counts only for live)."""
    ready, dead = hung["ready"], hung["dead"]
    assert ready is not None and ready.at <= dead.at + bound(0, hung["tl"]), \
        hung["tl"].lines(hung["t0"])


def test_a_timed_out_scrape_is_no_evidence(start_daemon: Any, vllm: VLLMServer) -> None:
    """Issue 16.8: a scrape that times out while probed itself runs late (stopped past the
    scrape's deadline, so its own timeout and the engine's hard deadline come due together) is
    "progress unknown", never a failure of live (today the engine's deadline wins: "timed out
    after 3s", and the progress check fails live at once). The API server is stopped, so every
    scrape waits its full timeout; the progress check polls every 1 s with a 3 s timeout, so a
    scrape is in flight 3/4 of the time: probed is stopped 3 times, 4 s each."""
    vllm.ensure_ready()
    metrics = vllm.url + "/metrics"
    probed = start_probed(start_daemon, [
        "--check", "http name=health url=%s/health probes=live interval=10s fail-after=3" %
        vllm.url,
        "--check", "progress name=progress url=%s interval=1s timeout=3s stall-after=60s" %
        metrics])
    with Timeline(probed.port, probed.pid) as tl:
        tl.wait("live", True, time.monotonic(), 30)
        time.sleep(2)
        t0 = time.monotonic()
        send(vllm.pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                time.sleep(1.5)
                send(probed.pid, signal.SIGSTOP)
                try:
                    time.sleep(4)
                finally:
                    send(probed.pid, signal.SIGCONT)
        finally:
            send(vllm.pid, signal.SIGCONT)
        time.sleep(4)
        t_end = time.monotonic()
    timed_out = probed.lines('check=progress', 'reason="timed out after')
    record_row("vLLM", "scrapes timing out while probed runs late (3 x 4 s)", tl, t0, t_end,
               "-", note="; ".join(timed_out[:1]))
    assert not timed_out, timed_out
    never(tl, "live", t0, t_end, "a timed-out scrape", frozen=True)


# --- engine death and restart ------------------------------------------------------------------

@pytest.fixture(scope="module")
def died(start_daemon_module: Any, vllm: VLLMServer, key_file: str) -> Dict[str, Any]:
    """EngineCore SIGKILLed: /health 503 for 0-4 s, the API server exits (code 0), the port
    refuses; then the server is started again (a slow restart: the port refuses while it loads)."""
    vllm.ensure_ready()
    probed = probed_for(start_daemon_module, vllm, key_file, "--interval", "1s")
    with Timeline(probed.port, probed.pid) as tl:
        for group in ("started", "ready"):
            tl.wait(group, True, time.monotonic(), 60)
        old_pid = vllm.pid
        t0 = time.monotonic()
        send(vllm.engine_pid(), signal.SIGKILL)
        statuses = []
        while not port_refuses(vllm.port) and time.monotonic() - t0 < 60:
            statuses.append((round(time.monotonic() - t0, 2), vllm.health()))
            time.sleep(0.1)
        t_closed = time.monotonic()
        code = vllm.wait_exit(30)
        unlatched = tl.wait("started", False, t0, 30)
        vllm.start()
        vllm.wait_ready()
        t_up = time.monotonic()
        started = tl.wait("started", True, t_up, 60)
        tl.wait("ready", True, t_up, 60)
        time.sleep(3)
        t_end = time.monotonic()
    assert not proc_alive(old_pid)
    return {"tl": tl, "t0": t0, "t_closed": t_closed, "t_up": t_up, "t_end": t_end,
            "code": code, "statuses": statuses, "unlatched": unlatched, "started": started,
            "restarts": probed.restarts(), "log": probed.log.lines()}


def test_engine_death_is_a_restart_not_a_dead_pod(died: Dict[str, Any]) -> None:
    """The API server answers 503 only briefly and exits 0, so the kubelet restarts it: probed
    unlatches started (live passes while the new process loads) and starts again."""
    tl, t0 = died["tl"], died["t0"]
    assert died["code"] == 0, died["code"]
    assert died["t_closed"] - t0 < 15, died["statuses"]
    assert set(s for _, s in died["statuses"]) <= {200, 503, 0}, died["statuses"]
    unlatched = died["unlatched"]
    assert unlatched.at - died["t_closed"] <= bound(1.1 + 1.0, tl), tl.lines(t0)
    assert len(died["restarts"]) == 1, died["restarts"]
    never(tl, "live", died["t_closed"] + bound(1.1 + 1.0, tl), died["t_end"], "reload")
    failed_live = tl.failures("live", t0, died["t_end"])
    record_row("vLLM", "engine killed (SIGKILL EngineCore), then restarted", tl, t0,
               died["t_end"], "port closed %.1fs after the kill; started 503 %.1fs after "
               "that; 200 %.1fs after the new /health 200" % (
                   died["t_closed"] - t0, unlatched.at - died["t_closed"],
                   died["started"].at - died["t_up"]),
               note="health while dying: %s; exit code %s; live 503 %d times; %s" % (
                   died["statuses"], died["code"], len(failed_live),
                   "; ".join(died["restarts"])))


def test_restart_line_names_the_new_start(died: Dict[str, Any]) -> None:
    """Issue 16.11: the `backend restarted` line says new_start=unknown for vLLM: the restart is
    seen as a refusal, before the new process exists; its start time must be logged once seen."""
    restarted = [l for l in died["log"] if 'msg="backend restarted"' in l]
    seen = [l for l in died["log"] if 'msg="backend process seen"' in l]
    assert len(restarted) == 1, restarted
    # seen as a refusal, before the new process exists: its start time follows in one line
    assert "new_start=unknown" not in restarted[0] or (
        len(seen) == 1 and re.search(r"start=20\d\d-", seen[0])), (restarted, seen)
