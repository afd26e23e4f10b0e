"""Multi-node vLLM without Ray (issue 19): worker pods' probed beat to the leader's admin
listener while their own worker is healthy (`--beat-to`), and the leader's ready needs every
rank (`--worker-ranks`). Real daemons on loopback; each worker's health is an exec check
toggled by a file (its local worker process); every wait bounded."""

import time
from pathlib import Path
from typing import Any, List

import pytest
from backends import kubelet_probe, wait_status
from conftest import free_port, wait_listening

pytestmark = pytest.mark.slow


def worker_check(alive: Path) -> str:
    return ("exec name=worker probes=live,ready,started interval=200ms timeout=1s "
            "cmd='test -e %s'" % alive)


def leader(start_daemon: Any, admin: int, token: Path) -> Any:
    daemon = start_daemon(["--check", "exec name=engine cmd=true interval=200ms",
                           "--admin-addr", "127.0.0.1:%d" % admin,
                           "--admin-token-file", str(token),
                           "--worker-ranks", "2", "--worker-window", "1500ms"])
    wait_listening("127.0.0.1", admin)
    return daemon


def worker(start_daemon: Any, rank: int, alive: Path, admin: int, token: Path) -> Any:
    return start_daemon(["--check", worker_check(alive), "--beat-to", "http://127.0.0.1:%d" % admin,
                         "--beat-every", "300ms", "--beat-token-file", str(token)],
                        env={"LWS_WORKER_INDEX": str(rank)})


def test_the_leader_is_ready_only_while_every_rank_beats(start_daemon: Any,
                                                          tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("group-secret\n")
    admin = free_port()
    lead = leader(start_daemon, admin, token)
    wait_status(lead.port, "/startupz", 200)
    assert kubelet_probe(lead.port, "/readyz").status == 503  # no rank has beaten yet
    alive: List[Path] = []
    for rank in (1, 2):
        alive.append(tmp_path / ("alive%d" % rank))
        alive[-1].touch()
        worker(start_daemon, rank, alive[-1], admin, token)
    reply = wait_status(lead.port, "/readyz", 200, timeout=15)
    assert reply.body == b"ok\n"
    verbose = kubelet_probe(lead.port, "/readyz?verbose").text
    assert "[+]ranks ok: 2 of 2 workers beat within 1.5s" in verbose
    # rank 2's worker process dies: its probed stops beating, the leader leaves the Service
    alive[1].unlink()
    t0 = time.monotonic()
    reply = wait_status(lead.port, "/readyz", 503, timeout=15)
    assert "ranks: 1 of 2 workers beat within 1.5s" in reply.text and "rank-2" in reply.text
    assert time.monotonic() - t0 < 10
    alive[1].touch()
    wait_status(lead.port, "/readyz", 200, timeout=15)


def test_a_worker_without_the_token_is_refused_and_says_so(start_daemon: Any,
                                                             tmp_path: Path) -> None:
    token, wrong = tmp_path / "token", tmp_path / "wrong"
    token.write_text("group-secret\n")
    wrong.write_text("not-it\n")
    admin = free_port()
    lead = leader(start_daemon, admin, token)
    alive = tmp_path / "alive"
    alive.touch()
    rogue = worker(start_daemon, 1, alive, admin, wrong)
    wait_status(rogue.port, "/readyz", 200)
    time.sleep(1.0)
    assert kubelet_probe(lead.port, "/readyz").status == 503
    log = rogue.stderr_text()
    assert 'level=warn msg="heartbeat not delivered"' in log and "HTTP 401" in log
    assert log.count("heartbeat not delivered") == 1, "one line per change, not per beat"
