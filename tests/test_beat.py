"""`probed beat NAME`: touch a beat file or POST to the admin listener; exit 0, 1 or 2.

File beats are checked by mtime; admin beats against a recording `Backend` (method, path,
Authorization header) and, end to end, against a real probed whose heartbeat check must see
the beat. Usage errors exit 2 from the real command line.
"""

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
from backends import Backend, kubelet_probe, wait_status
from conftest import REPO, free_port

from probed.beat import admin_base_url, beat_main

OLD = 1_000_000_000.0  # an mtime long ago (2001)


def run_beat(args: List[str], env: Dict[str, str] = None) -> "subprocess.CompletedProcess[str]":
    full = {k: v for k, v in os.environ.items() if not k.startswith("PROBED_")}
    full["PYTHONPATH"] = str(REPO)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "probed", "beat"] + args, cwd=str(REPO),
                          env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30)


def test_dir_beat_creates_then_refreshes_the_file(tmp_path: Path) -> None:
    beat = tmp_path / "worker-0"
    assert beat_main(["worker-0", "--dir", str(tmp_path)], env={}) == 0
    assert beat.is_file() and abs(beat.stat().st_mtime - time.time()) < 60
    beat.write_text("kept")
    os.utime(str(beat), (OLD, OLD))
    assert beat_main(["worker-0", "--dir", str(tmp_path)], env={}) == 0
    assert beat.stat().st_mtime > OLD + 1e8
    assert beat.read_text() == "kept", "a beat never writes into the file"


def test_dir_from_the_environment_and_remove(tmp_path: Path) -> None:
    env = {"PROBED_BEAT_DIR": str(tmp_path)}
    assert beat_main(["w1"], env=env) == 0
    assert (tmp_path / "w1").exists()
    assert beat_main(["w1", "--remove"], env=env) == 0
    assert not (tmp_path / "w1").exists()
    assert beat_main(["w1", "--remove"], env=env) == 0, "removing twice is fine"


def test_a_missing_directory_fails_with_1(tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    assert beat_main(["w1", "--dir", str(tmp_path / "nope")], env={}) == 1
    assert "no such directory" in capsys.readouterr().err


def test_admin_beat_posts_with_the_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0k\n")
    with Backend(200, b"OK\n") as admin:
        assert beat_main(["w-1", "--admin", admin.url, "--admin-token-file", str(token)],
                         env={}) == 0
        req = admin.requests[-1]
        assert (req.method, req.target) == ("POST", "/heartbeat/w-1")
        assert req.headers["authorization"] == "Bearer t0k"
        env = {"PROBED_BEAT_ADMIN": ":%d" % admin.port, "PROBED_ADMIN_TOKEN_FILE": str(token)}
        assert beat_main(["w-1", "--remove"], env=env) == 0
        req = admin.requests[-1]
        assert (req.method, req.target) == ("DELETE", "/heartbeat/w-1")
        assert req.headers["authorization"] == "Bearer t0k"


def test_admin_refusal_and_unreachable_fail_with_1(capsys: pytest.CaptureFixture) -> None:
    with Backend(401, b"401 Unauthorized: admin calls need a token\n") as admin:
        assert beat_main(["w1", "--admin", admin.url], env={}) == 1
        assert "HTTP 401: 401 Unauthorized" in capsys.readouterr().err
    port = free_port()
    assert beat_main(["w1", "--admin", ":%d" % port, "--timeout", "1s"], env={}) == 1
    assert "refused" in capsys.readouterr().err


def test_admin_base_url() -> None:
    assert admin_base_url(":9090") == "http://127.0.0.1:9090"
    assert admin_base_url("pod:9090") == "http://pod:9090"
    assert admin_base_url("http://127.0.0.1:9090/") == "http://127.0.0.1:9090"


@pytest.mark.parametrize("args", [["w1"], ["w1", "--dir", "/tmp", "--admin", ":1"],
                                  ["../etc", "--dir", "/tmp"], ["a/b", "--dir", "/tmp"],
                                  [], ["w1", "--dir", "/tmp", "--timeout", "0"]])
def test_usage_errors_exit_2(args: List[str]) -> None:
    result = run_beat(args)
    assert result.returncode == 2, result.stderr
    assert "probed beat" in result.stderr


def test_help_exits_0() -> None:
    result = run_beat(["--help"])
    assert result.returncode == 0 and "--admin" in result.stdout and "--dir" in result.stdout


@pytest.mark.slow
def test_beats_reach_a_running_probed(start_daemon, tmp_path: Path) -> None:  # type: ignore
    admin = free_port()
    beats = tmp_path / "beats"
    beats.mkdir()
    daemon = start_daemon([
        "--admin-addr", ":%d" % admin,
        "--check", "heartbeat name=pushed expect=1 interval=200ms",
        "--check", "heartbeat name=files path=%s expect=1 interval=200ms" % beats])
    assert run_beat(["w1", "--admin", ":%d" % admin]).returncode == 0
    assert run_beat(["w1", "--dir", str(beats)]).returncode == 0
    wait_status(daemon.port, "/readyz", 200)
    assert run_beat(["w1", "--admin", ":%d" % admin, "--remove"]).returncode == 0
    reply = wait_status(daemon.port, "/readyz/pushed", 503)
    assert b"missing: 1 never beat" in reply.body
    assert kubelet_probe(daemon.port, "/readyz/files").status == 200
