"""Issue 17 items the daemon owns end to end: a log pipe nobody reads, orphans of exec checks
when probed is PID 1, many checks polling one small server at once, secrets and control
characters a backend echoes, and caps on what one reply or log line carries. Real daemons on
loopback, bounded in time; each test failed on the code before its fix."""

import http.server
import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from backends import Backend, kubelet_probe, wait_for, wait_status
from conftest import REPO, free_port, wait_listening

from probed.reaper import zombie_children

pytestmark = pytest.mark.slow


def flapping_checks(tmp_path: Path, count: int) -> List[str]:
    """`count` exec checks that flip between pass and fail on every poll (many log lines)."""
    script = tmp_path / "flip.sh"
    script.write_text('f="$1"; if [ -e "$f" ]; then rm "$f"; exit 1; else touch "$f"; fi\n')
    return [arg for i in range(count) for arg in (
        "--check", "exec name=flap%d probes=ready interval=100ms timeout=1s cmd='sh %s %s'" % (
            i, script, tmp_path / ("flag%d" % i)))]


def test_a_log_pipe_nobody_reads_never_stops_the_probes(tmp_path: Path) -> None:
    # issue 17 #3: after ~166 transitions the next log write blocked the loop for good
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "probed", "--addr", "127.0.0.1:%d" % port, "--allow-no-checks"]
        + flapping_checks(tmp_path, 12), cwd=str(REPO), env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)  # never read until the end
    try:
        wait_listening("127.0.0.1", port)
        answered, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 8.0:  # ~12 checks x 10 polls/s: the 64 KiB pipe fills
            assert kubelet_probe(port, "/livez", timeout=2.0).status == 200
            answered += 1
            time.sleep(0.05)
        assert answered > 50
    finally:
        proc.kill()
        err = proc.communicate(timeout=10)[1].decode()
    assert "msg=\"check changed\"" in err


def test_stderr_overflow_is_counted_and_said_once_it_drains(tmp_path: Path) -> None:
    code = ("import sys, os, time\n"
            "from probed.eventlog import EventLog\n"
            "log = EventLog('text')\n"
            "r, w = os.pipe()\n"
            "os.dup2(w, 2)\n"  # stderr is a pipe nobody reads yet
            "t0 = time.monotonic()\n"
            "for i in range(5000): log.info('tick', i=i, pad='x' * 100)\n"
            "took = time.monotonic() - t0\n"
            "os.set_blocking(r, False)\n"
            "data = b''\n"
            "deadline = time.monotonic() + 5\n"
            "while b'log lines dropped' not in data and time.monotonic() < deadline:\n"
            "    try: data += os.read(r, 1 << 20)\n"
            "    except BlockingIOError: time.sleep(0.01)\n"
            "    log.info('after')\n"
            "print(round(took, 3), b'log lines dropped' in data)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True,
                          text=True, timeout=30)
    took, said = done.stdout.split()
    assert float(took) < 5.0, "5000 lines with a full pipe must not block the caller"
    assert said == "True", done.stdout


def test_as_pid_1_orphans_of_exec_checks_are_reaped(tmp_path: Path) -> None:
    # issue 17 #17: as PID 1, 24 zombies after 24 polls
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("this test needs root and unshare (util-linux) for a PID namespace")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-m",
         "probed",
         "--addr", "127.0.0.1:%d" % port,
         "--check", "exec name=leaver interval=200ms cmd='sh -c \"sleep 0.05 & exit 0\"'"],
        cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening("127.0.0.1", port)
        probed = child_of(proc.pid)
        counts = []
        for _ in range(4):
            time.sleep(2.0)
            counts.append(len(zombie_children(probed)))
        # polls every 200 ms leave an orphan each; the reaper looks every 2 s
        assert max(counts) <= 12 and counts[-1] <= 12, counts
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def child_of(pid: int) -> int:
    """The one child of `pid` (unshare's forked child: PID 1 in its namespace)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        children = Path("/proc/%d/task/%d/children" % (pid, pid)).read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("unshare started no child")


class SmallBacklogServer(socketserver.TCPServer):
    request_queue_size = 5  # as Python's http.server keeps


@pytest.fixture
def small_backlog() -> Iterator[int]:
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # one request at a time (a single-threaded TCPServer)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = SmallBacklogServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_forty_checks_against_a_small_backlog_all_pass(start_daemon: Any,
                                                        small_backlog: int) -> None:
    # issue 17 #14: 40 checks in lockstep at --start-interval kept colliding for good
    args: List[str] = []
    for i in range(40):
        args += ["--check", "http name=c%d url=http://127.0.0.1:%d/ timeout=1s" % (i, small_backlog)]
    daemon = start_daemon(args)
    wait_status(daemon.port, "/readyz", 200, timeout=30)


def test_a_backend_echoing_the_token_never_shows_it(start_daemon: Any, tmp_path: Path) -> None:
    # issue 17 #15: the token came back in /readyz, ?verbose and the log
    token = tmp_path / "token"
    token.write_text("s3cret-bearer-42\n")
    with Backend() as backend:
        backend.serve(401, b"bad Authorization: Bearer s3cret-bearer-42\r\n\x1b[31m")
        daemon = start_daemon(["--check", "http name=api url=%s/v1/models token-file=%s "
                               "interval=200ms" % (backend.url, token)])
        # /readyz is 503 from the start ("no result yet"): wait for the 401 itself
        wait_for(lambda: b"HTTP 401" in kubelet_probe(daemon.port, "/readyz").body,
                 what="the backend's 401 in /readyz")
        reply = kubelet_probe(daemon.port, "/readyz")
        for path in ("/readyz", "/readyz?verbose", "/readyz?format=json"):
            body = kubelet_probe(daemon.port, path).body
            assert b"s3cret" not in body and b"\x1b" not in body, (path, body)
        assert reply.status == 503 and b"Bearer <redacted>" in reply.body, reply
        log = daemon.stderr_text()
    assert "s3cret" not in log and "\x1b" not in log and "<redacted>" in log


def test_what_a_reply_carries_is_capped(start_daemon: Any) -> None:
    # issue 17 #7: 40k model ids in a reason made every kubelet reply 360 KB (20k here: the
    # /v1/models reply stays under the client's 1 MiB body cap)
    ids = [{"id": "model-%05d" % i, "object": "model"} for i in range(20000)]
    with Backend() as backend:
        backend.serve(200, json.dumps({"data": ids}).encode())
        daemon = start_daemon(["--check", "models name=models url=%s model=absent timeout=5s "
                               "interval=200ms" % backend.url])
        deadline = time.monotonic() + 20
        reply = kubelet_probe(daemon.port, "/readyz")
        while b"not served" not in reply.body and time.monotonic() < deadline:
            time.sleep(0.1)
            reply = kubelet_probe(daemon.port, "/readyz")
        assert reply.status == 503 and b"model 'absent' not served" in reply.body, reply.body
        assert len(reply.body) < 1000, len(reply.body)
        doc = json.loads(kubelet_probe(daemon.port, "/readyz?format=json").body)
        row = doc["checks"][0]
        assert len(json.dumps(row)) < 10000
        assert row["detail"]["models"][-1] == "... 19968 more"
        log = daemon.stderr_text()
    assert max(len(line) for line in log.splitlines()) < 2000
