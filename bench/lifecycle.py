"""Lifecycle timings against the vLLM simulator (issue 11), medians over a few runs.

  python3 bench/lifecycle.py [--runs 3]

1. backend able to serve -> /startupz and /readyz 200, every check at a 10 s interval:
   with fast start (--start-interval 500ms) and without it (--start-interval 10s);
2. engine death (/health 503) -> /livez 503, with the --vllm preset at a 2 s interval;
3. /wait-for-drain: requests finishing 2 s after the call, and a 3 s timeout with requests stuck.
Loopback only; every process is started here and stopped by PID.
"""

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Tuple

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, method: str = "GET", timeout: float = 5.0) -> Tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    except OSError:
        return 0, ""
    finally:
        conn.close()


def wait_until(predicate: Callable[[], bool], limit: float, step: float = 0.02) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if predicate():
            return time.monotonic() - t0
        time.sleep(step)
    raise RuntimeError("not reached within %ss" % limit)


class Procs:
    """Subprocesses of one measurement, stopped by PID at the end."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def start(self, *args: str) -> None:
        self.procs.append(subprocess.Popen([sys.executable, "-m", "probed"] + list(args),
                                           cwd=str(REPO), stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def sim_and_daemon(state: str, *daemon_args: str) -> Tuple[Procs, int, int, int]:
    procs = Procs()
    port, control, probe, admin = free_port(), free_port(), free_port(), free_port()
    procs.start("sim", "--port", str(port), "--control-port", str(control), "--state", state)
    wait_until(lambda: get(control, "/_sim/state")[0] == 200, 10)
    procs.start("--addr", "127.0.0.1:%d" % probe, "--admin-addr", "127.0.0.1:%d" % admin,
                "--vllm", "http://127.0.0.1:%d" % port, *daemon_args)
    wait_until(lambda: get(probe, "/livez")[0] == 200, 10)
    return procs, control, probe, admin


def time_to_ready(start_interval: str) -> Tuple[float, float]:
    procs, control, probe, _ = sim_and_daemon("loading", "--interval", "10s",
                                              "--start-interval", start_interval)
    try:
        time.sleep(1.0)
        get(control, "/_sim/state/ready", "POST")
        startupz = wait_until(lambda: get(probe, "/startupz")[0] == 200, 40)
        readyz = startupz + wait_until(lambda: get(probe, "/readyz")[0] == 200, 40)
        return startupz, readyz
    finally:
        procs.stop()


def time_to_dead() -> float:
    procs, control, probe, _ = sim_and_daemon("ready", "--interval", "2s")
    try:
        wait_until(lambda: get(probe, "/readyz")[0] == 200, 20)
        time.sleep(0.7)
        get(control, "/_sim/state/dead?exit_after=30", "POST")
        return wait_until(lambda: get(probe, "/livez")[0] == 503, 20)
    finally:
        procs.stop()


def drain_timings() -> Tuple[float, str, float, str]:
    procs, control, probe, admin = sim_and_daemon("busy", "--interval", "1s")
    try:
        wait_until(lambda: get(probe, "/readyz")[0] == 200, 20)
        threading.Timer(2.0, lambda: get(control, "/_sim/state/ready", "POST")).start()
        t0 = time.monotonic()
        _, finished = get(admin, "/wait-for-drain?timeout=30s", timeout=40)
        finished_after = time.monotonic() - t0
        get(control, "/_sim/state/stalled", "POST")
        t0 = time.monotonic()
        _, stuck = get(admin, "/wait-for-drain?timeout=3s", timeout=40)
        return finished_after, finished.strip(), time.monotonic() - t0, stuck.strip()
    finally:
        procs.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    fast = [time_to_ready("500ms") for _ in range(args.runs)]
    slow = [time_to_ready("10s") for _ in range(args.runs)]
    dead = [time_to_dead() for _ in range(args.runs)]
    drain = drain_timings()
    med = lambda xs: round(statistics.median(xs), 2)  # noqa: E731
    result = {
        "runs": args.runs,
        "ready_to_startupz_200_s": {"fast_start": med([a for a, _ in fast]),
                                    "interval_only": med([a for a, _ in slow])},
        "ready_to_readyz_200_s": {"fast_start": med([b for _, b in fast]),
                                  "interval_only": med([b for _, b in slow])},
        "engine_death_to_livez_503_s": med(dead),
        "wait_for_drain": {"requests_finish_after_2s": round(drain[0], 2), "body": drain[1],
                           "stuck_with_3s_timeout": round(drain[2], 2), "stuck_body": drain[3]},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
