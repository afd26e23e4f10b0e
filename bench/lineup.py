"""The servers a bench run compares, each answering GET /readyz with a tiny 200 on loopback.

A Peer knows what it needs installed, how to start (in the run's tmp dir, on a free port) and
how to tell that it is ready. probed runs three ways: from the package, as the single file, and
from the package while the backend of one of its http checks hangs (its /readyz is then 503,
answered from the cache like every other probe).
"""

import hashlib
import os
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from lab import Lab, Proc, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS_DIR = os.path.join(HERE, "peers")
READY_TIMEOUT = 30.0
GO_BUILD_TIMEOUT = 300.0
PATH = "/readyz"
HUNG_CHECK = "http name=backend url=http://127.0.0.1:%d/health probes=ready interval=200ms " \
             "timeout=2s"


class Env(NamedTuple):
    """What the start functions share."""
    lab: Lab
    tmp: str
    repo: str
    venv: str
    max_seconds: int
    tcp_sink: int   # port of a backend that accepts and closes (passing tcp check)
    hang_sink: int  # port of a backend that accepts and never answers


Starter = Callable[[Env, int], Proc]


class Peer(NamedTuple):
    """One server under test."""
    key: str
    label: str
    needs: Tuple[str, ...]
    start: Starter
    expect: int = 200
    tcp: bool = False      # also measured as a tcpSocket probe
    python: bool = False   # a Python server (its CPU per probe is compared with probed's)
    ready: Optional[Callable[[int, bytes], bool]] = None


def _start_nginx(env: Env, port: int) -> Proc:
    prefix = os.path.join(env.tmp, "nginx")
    os.makedirs(prefix, exist_ok=True)
    with open(os.path.join(PEERS_DIR, "nginx.conf"), encoding="utf-8") as fh:
        conf = fh.read().format(prefix=prefix, port=port)
    conf_path = os.path.join(prefix, "nginx.conf")
    with open(conf_path, "w", encoding="utf-8") as fh:
        fh.write(conf)
    return env.lab.start("nginx", ["nginx", "-p", prefix, "-c", conf_path,
                                   "-e", os.path.join(prefix, "error.log")])


def _start_go(env: Env, port: int) -> Proc:
    build = os.path.join(env.tmp, "go")
    os.makedirs(build, exist_ok=True)
    shutil.copy(os.path.join(PEERS_DIR, "go_server.go"), build)
    go_env = dict(os.environ, GOCACHE=os.path.join(build, "cache"),
                  GOPATH=os.path.join(build, "gopath"), GO111MODULE="off", CGO_ENABLED="0")
    done = subprocess.run(["go", "build", "-o", "go_server", "go_server.go"], cwd=build,
                          env=go_env, capture_output=True, text=True, timeout=GO_BUILD_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError("go build failed (exit %d): %s" % (done.returncode, done.stderr[-800:]))
    return env.lab.start("go", [os.path.join(build, "go_server"), "127.0.0.1:%d" % port,
                                str(env.max_seconds)])


def _venv_peer(script: str, name: str) -> Starter:
    def start(env: Env, port: int) -> Proc:
        return env.lab.start(name, [os.path.join(env.venv, "bin", "python"),
                                    os.path.join(PEERS_DIR, script), str(port),
                                    str(env.max_seconds)], cwd=PEERS_DIR)
    return start


def _start_httpserver(env: Env, port: int) -> Proc:
    return env.lab.start("httpserver", [sys.executable, os.path.join(PEERS_DIR,
                         "httpserver_peer.py"), str(port), str(env.max_seconds)], cwd=PEERS_DIR)


def probed_args(env: Env, port: int, hung: bool = False) -> List[str]:
    """Flags of a probed under test: a cached passing tcp check, maybe a hung http check."""
    args = ["--addr", "127.0.0.1:%d" % port, "--drain-seconds", "0",
            "--check", "tcp addr=127.0.0.1:%d probes=ready,started" % env.tcp_sink]
    if hung:
        args += ["--check", HUNG_CHECK % env.hang_sink]
    return args


def _start_probed(env: Env, port: int) -> Proc:
    return env.lab.start("probed", [sys.executable, "-m", "probed"] + probed_args(env, port),
                         cwd=env.repo)


def _start_probed_file(env: Env, port: int) -> Proc:
    # Copied away from the checkout, as a user copies it into an image.
    single = os.path.join(env.tmp, "single")
    os.makedirs(single, exist_ok=True)
    shutil.copy(os.path.join(env.repo, "probed.py"), single)
    return env.lab.start("probed_file", [sys.executable, "probed.py"] + probed_args(env, port),
                         cwd=single)


def _start_probed_hung(env: Env, port: int) -> Proc:
    return env.lab.start("probed_hung", [sys.executable, "-m", "probed"] +
                         probed_args(env, port, hung=True), cwd=env.repo)


def _ok_200(status: int, _body: bytes) -> bool:
    return status == 200


def _hung_seen(status: int, body: bytes) -> bool:
    return status == 503 and b"timed out" in body


PEERS: List[Peer] = [
    Peer("nginx", "nginx", ("nginx",), _start_nginx, tcp=True),
    Peer("go", "Go net/http", ("go",), _start_go, tcp=True),
    Peer("fastapi", "FastAPI (uvicorn)", ("fastapi",), _venv_peer("fastapi_peer.py", "fastapi"),
         python=True),
    Peer("aiohttp", "aiohttp", ("aiohttp",), _venv_peer("aiohttp_peer.py", "aiohttp"),
         python=True),
    Peer("httpserver", "http.server", (), _start_httpserver, python=True),
    Peer("probed", "probed (-m probed)", (), _start_probed, tcp=True, python=True),
    Peer("probed_file", "probed.py (single file)", (), _start_probed_file, tcp=True, python=True),
    Peer("probed_hung", "probed, backend hung", (), _start_probed_hung, expect=503, python=True,
         ready=_hung_seen),
]


def start_sinks(lab: Lab, max_seconds: int) -> Tuple[int, int]:
    """Start the two backends probed's checks point at; (tcp_sink port, hang_sink port)."""
    ports = []
    for mode in ("close", "hang"):
        port = free_port()
        proc = lab.start("sink_" + mode, [sys.executable, os.path.join(PEERS_DIR, "sink.py"),
                                          str(port), mode, str(max_seconds)], cwd=PEERS_DIR)
        lab.wait_listening(proc, port, READY_TIMEOUT)
        ports.append(port)
    return ports[0], ports[1]


def snapshot_source(repo: str, tmp: str) -> Tuple[str, str]:
    """Copy probed/ and probed.py out of the checkout, so the whole run (servers and the
    `probed bench` client) uses one version even while the checkout is being edited.
    Returns (the copy's folder, sha256 of its files, 12 hex digits)."""
    src = os.path.join(tmp, "src")
    shutil.copytree(os.path.join(repo, "probed"), os.path.join(src, "probed"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(os.path.join(repo, "probed.py"), src)
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(src)):
        dirs.sort()
        for name in sorted(files):
            with open(os.path.join(folder, name), "rb") as fh:
                digest.update(name.encode() + b"\0" + fh.read())
    for argv in ([sys.executable, "-m", "probed", "--version"],
                 [sys.executable, "probed.py", "--version"]):
        done = subprocess.run(argv, cwd=src, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError("`%s` fails in the checkout's copy: %s" % (
                " ".join(argv[1:]), done.stderr.strip()[-600:]))
    return src, digest.hexdigest()[:12]


def start_peer(env: Env, peer: Peer) -> Tuple[Proc, str]:
    """Start one peer and wait until it answers as it should; (process, probe URL)."""
    port = free_port()
    proc = peer.start(env, port)
    path = PATH + ("?verbose" if peer.ready is _hung_seen else "")
    env.lab.wait_ready(proc, port, path, peer.ready or _ok_200, READY_TIMEOUT)
    return proc, "http://127.0.0.1:%d%s" % (port, PATH)


def available(peers: List[Peer],
              status: Dict[str, Optional[str]]) -> Tuple[List[Peer], List[str]]:
    """The peers whose needs are met, and a note for each one left out."""
    keep, notes = [], []
    for peer in peers:
        missing = [status[n] for n in peer.needs if status.get(n)]
        if missing:
            notes.append("%s left out: %s" % (peer.label, "; ".join(str(m) for m in missing)))
        else:
            keep.append(peer)
    return keep, notes
