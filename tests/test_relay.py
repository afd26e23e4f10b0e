"""Check kind `relay`: a remote probe endpoint's verdict, followed up and down.

Against `tests/backends.Backend` (a remote that answers, fails, refuses, hangs) and, end to end,
against a second real probed whose readiness is flipped through its admin listener: the
relaying probed's `/readyz` must follow it both ways and say why in its reason.
"""

import asyncio
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
from backends import Backend, LogTail, kubelet_probe, wait_status
from conftest import free_port

from probed.checks.base import Check, Observation
from probed.checks.relay import RELAY_LINE_CHARS, first_body_line
from probed.config import build_checks
from probed.scheduler import poll_once


def make_relay(url: str, **keys: Any) -> Check:
    raw: Dict[str, Any] = {"kind": "relay", "url": url, "timeout": "1s"}
    raw.update({k.replace("_", "-"): v for k, v in keys.items()})
    return build_checks([raw], ["test"])[0]


def poll(check: Check) -> Tuple[bool, str]:
    async def run() -> Observation:
        obs, _ = await asyncio.wait_for(poll_once(check), 10)
        return obs

    obs = asyncio.run(run())
    return check.judge(obs, check.config, False)


def test_relay_follows_a_remote_up_and_down() -> None:
    with Backend(200, b"ok\n") as remote:
        check = make_relay(remote.url + "/readyz")
        assert poll(check) == (True, "remote HTTP 200: ok")
        remote.serve(503, b"readyz failed: vllm: HTTP 503\nmore detail\n")
        assert poll(check) == (False, "remote HTTP 503: readyz failed: vllm: HTTP 503")
        remote.serve(204, b"")
        assert poll(check) == (True, "remote HTTP 204")
        remote.set_mode("refuse")
        ok, reason = poll(check)
        assert not ok and "refused" in reason
        remote.serve(200, b"Healthy")
        assert poll(check) == (True, "remote HTTP 200: Healthy")
        assert remote.requests[-1].method == "GET" and remote.requests[-1].target == "/readyz"


@pytest.mark.parametrize("status", [301, 404, 500])
def test_only_2xx_passes(status: int) -> None:
    with Backend(status, b"nope") as remote:
        ok, reason = poll(make_relay(remote.url + "/health"))
        assert not ok and reason == "remote HTTP %d: nope" % status


def test_a_hanging_remote_fails_at_the_timeout() -> None:
    with Backend(mode="hang") as remote:
        ok, reason = poll(make_relay(remote.url + "/readyz", timeout="300ms"))
        assert not ok and "timed out" in reason


def test_relay_sends_headers_and_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    with Backend(200, b"ok") as remote:
        check = make_relay(remote.url + "/readyz", token_file=str(token), header="X-Pod: a")
        assert poll(check)[0]
        headers = remote.requests[-1].headers
        assert headers["authorization"] == "Bearer abc" and headers["x-pod"] == "a"


def test_defaults_keep_a_remote_out_of_live() -> None:
    check = make_relay("http://127.0.0.1:1/readyz")
    assert check.spec.probes == frozenset(("ready",))
    assert check.spec.interval == 2.0


def test_first_body_line() -> None:
    assert first_body_line(b"") == ""
    assert first_body_line(b"\n\n  readyz failed: x\r\nnext") == "readyz failed: x"
    assert first_body_line(b"a\x1b[31mred\x00") == "a [31mred"
    assert first_body_line(b"\xff\xfe ok") == "\ufffd\ufffd ok"
    long = first_body_line(b"x" * 1000)
    assert long == "x" * RELAY_LINE_CHARS + "..."


@pytest.mark.slow
def test_a_pod_relays_another_probeds_readiness(start_daemon) -> None:  # type: ignore
    admin = free_port()
    server = start_daemon(["--admin-addr", ":%d" % admin,
                           "--check", "manual name=model-loaded initial=ready interval=200ms"])
    wait_status(server.port, "/readyz", 200)
    requester = start_daemon([
        "--check", "relay name=server url=http://127.0.0.1:%d/readyz interval=200ms "
                   "timeout=500ms" % server.port])
    log = LogTail(requester.proc.stderr)
    wait_status(requester.port, "/readyz", 200)
    assert kubelet_probe(admin, "/v1/become-unready", method="POST").status == 200
    reply = wait_status(requester.port, "/readyz", 503)
    assert reply.text.startswith("readyz failed: server: remote HTTP 503: readyz failed: "
                                 "model-loaded: POST /v1/become-unready at ")
    assert kubelet_probe(requester.port, "/livez").status == 200, "relay is not in live"
    assert kubelet_probe(admin, "/v1/become-ready", method="POST").status == 200
    wait_status(requester.port, "/readyz", 200)
    assert kubelet_probe(admin, "/drain", method="POST").status == 200
    assert b"draining (admin)" in wait_status(requester.port, "/readyz", 503).body
    assert kubelet_probe(admin, "/undrain", method="POST").status == 200
    wait_status(requester.port, "/readyz", 200)
    server.stop()
    reply = wait_status(requester.port, "/readyz", 503)
    assert b"server: " in reply.body and b"refused" in reply.body
    log.wait_line("check changed", "check=server", "to=fail")
