"""probed against REAL llama-servers started with other flags: `--api-key` (it guards /metrics
too), no `--metrics` (501), `--sleep-idle-seconds` (idle sleep). One short-lived server each;
see test_llamacpp.py for the scenarios on the default flags."""

import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from .scenario import never, record_row, start_probed, verbose
from .servers import LlamaServer, request
from .timeline import Timeline, check_row

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEY = "sk-probed-llama-test"


def probed_for(start_daemon: Any, server: LlamaServer, *args: str) -> Any:
    return start_probed(start_daemon, ["--llamacpp", server.url] + list(args))


def wait_ready(timeline: Timeline, since: float, timeout: float = 60.0) -> None:
    for group in ("started", "ready", "live"):
        timeline.wait(group, True, since, timeout)


def test_api_key_covers_metrics(start_daemon: Any, llama_servers: Callable[..., LlamaServer],
                                tiny_gguf: str, tmp_path: Path) -> None:
    """Issue 16.4: llama-server --api-key leaves only /health open. With --api-key-file every
    metric check sends the key (ready passes with --max-waiting); without it the reason says
    the server wants a key."""
    server = llama_servers(tiny_gguf, api_key=KEY)
    server.start().wait_ready()
    assert request(server.url + "/metrics")[0] == 401
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    probed = probed_for(start_daemon, server, "--api-key-file", str(key_file),
                        "--max-waiting", "4", "--interval", "1s")
    with Timeline(probed.port, probed.pid) as tl:
        t0 = time.monotonic()
        wait_ready(tl, t0)
        time.sleep(2)
        t_end = time.monotonic()
        assert check_row(probed.port, "live", "llamacpp-progress")["reason"] == "idle"
    never(tl, "ready", tl.first("ready", True, t0).at, t_end, "with the key")
    record_row("llama.cpp", "--api-key, probed has --api-key-file", tl, t0, t_end, "-")
    probed = probed_for(start_daemon, server, "--max-waiting", "4", "--interval", "1s")
    with Timeline(probed.port, probed.pid) as tl:
        t0 = time.monotonic()
        time.sleep(4)
        t_end = time.monotonic()
    hint = "HTTP 401 (the server wants an API key: --api-key-file)"
    first = tl.wait_reason("started", hint, t0, 10)  # the first result says it
    assert all(a.ok is False and hint in a.reason for a in tl.snapshot("started", first.at)), \
        tl.lines(t0)
    assert hint in check_row(probed.port, "live", "llamacpp-progress")["reason"]
    assert hint in verbose(probed.port, "ready")
    record_row("llama.cpp", "--api-key, probed without the key", tl, t0, t_end, "at once")


def test_without_metrics_the_reason_says_so(start_daemon: Any,
                                            llama_servers: Callable[..., LlamaServer],
                                            tiny_gguf: str) -> None:
    """Issue 16.5: /metrics is 501 unless llama-server runs with --metrics: say so."""
    server = llama_servers(tiny_gguf, metrics=False)
    server.start().wait_ready()
    probed = probed_for(start_daemon, server, "--max-waiting", "4", "--interval", "1s")
    with Timeline(probed.port, probed.pid) as tl:
        t0 = time.monotonic()
        tl.wait("started", True, t0, 30)
        time.sleep(3)
        t_end = time.monotonic()
    hint = "HTTP 501 (no such endpoint on this server: llama-server serves /metrics only " \
           "with --metrics)"
    last = tl.snapshot("ready", t0)[-1]
    assert last.ok is False and hint in last.reason, tl.lines(t0)
    assert hint in check_row(probed.port, "live", "llamacpp-progress")["reason"]
    record_row("llama.cpp", "no --metrics (--max-waiting set)", tl, t0, t_end, "at once")


def test_idle_sleep_stays_ready_and_asleep(start_daemon: Any,
                                           llama_servers: Callable[..., LlamaServer],
                                           tiny_gguf: str) -> None:
    """Issue 16.15: --sleep-idle-seconds wakes on the next request, so the pod stays ready;
    and probed's own polling (/health, /metrics) does not wake it."""
    server = llama_servers(tiny_gguf, extra=["--sleep-idle-seconds", "2"])
    server.start().wait_ready()
    probed = probed_for(start_daemon, server, "--interval", "1s")

    def sleeping() -> bool:
        return json.loads(request(server.url + "/props")[2])["is_sleeping"] is True

    with Timeline(probed.port, probed.pid) as tl:
        wait_ready(tl, time.monotonic())
        deadline = time.monotonic() + 30
        while not sleeping():
            assert time.monotonic() < deadline, "llama-server never went to sleep"
            time.sleep(0.2)
        t0 = time.monotonic()
        time.sleep(8)
        assert sleeping(), "probed's polling woke the server"
        t_end = time.monotonic()
        status, doc = server.complete(n_predict=4)
        assert status == 200, doc
    never(tl, "ready", t0, t_end, "idle sleep")
    never(tl, "live", t0, t_end, "idle sleep")
    record_row("llama.cpp", "idle sleep (--sleep-idle-seconds 2)", tl, t0, t_end,
               "stays ready; asleep under polling")


