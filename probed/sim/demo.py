"""`probed demo`: a simulated vLLM walks through its lives while probed answers for it.

The newcomer's first command. Both run in this process on loopback: the simulator goes
loading -> ready -> busy -> saturated -> sleeping -> ready -> stalled -> dead -> exited, probed (the
`--vllm` preset with short intervals) logs each transition, and after every stage the demo
prints what the kubelet would see and the curl commands to look for yourself.
"""

import argparse
import asyncio
import socket
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..flags import parse_serve_args
from ..settings import resolve_settings
from ..checks.base import CheckResources
from ..checkspecs import build_checks
from ..daemon import Daemon
from ..eventlog import EventLog
from .vllm import VLLMSimulator

# (state, simulator parameters, seconds to hold, (livez, readyz, startupz) codes, what happens)
DEMO_STAGES: List[Tuple[str, Dict[str, Any], float, Tuple[int, int, int], str]] = [
    ("loading", {}, 4.0, (200, 503, 503),
     "weights loading, port closed: startupz 503 (loading), livez 200"),
    ("ready", {}, 5.0, (200, 200, 200), "model served, first inference passes: all three 200"),
    ("busy", {}, 4.0, (200, 200, 200), "requests running, tokens rising: still 200"),
    ("saturated", {}, 5.0, (200, 503, 200), "queue over --max-waiting: readyz 503, livez 200"),
    ("sleeping", {}, 5.0, (200, 503, 200),
     "engine asleep, /health still 200: readyz 503 (sleeping)"),
    ("ready", {}, 4.0, (200, 200, 200), "awake again: readyz 200"),
    ("stalled", {}, 8.0, (503, 503, 200),
     "requests running, tokens flat: livez and readyz 503 after --stall-after"),
    ("dead", {"exit_after": 30.0}, 3.0, (503, 503, 200),
     "EngineDeadError: /health 503 -> livez 503 at once"),
    ("exited", {}, 4.0, (200, 503, 503), "the process exits, the port refuses: a restart, so "
     "startupz 503 (loading) and livez 200 (grace) until the new process has loaded"),
]
DEMO_SETTLE = 10.0  # a loaded machine may take a few polls longer to show a stage


def free_loopback_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_daemon(sim_url: str, port: int, log: EventLog) -> Daemon:
    """probed with the --vllm preset against the simulator, polling every second."""
    argv = ["--vllm", sim_url, "--max-waiting", "8", "--stall-after", "3s",
            "--addr", "127.0.0.1:%d" % port, "--drain-seconds", "0"]
    settings, raws = resolve_settings(parse_serve_args(argv), {})
    for raw, _ in raws:
        raw["interval"] = "1s"
    resources = CheckResources()
    checks = build_checks([r for r, _ in raws], [o for _, o in raws], resources)
    return Daemon(settings, checks, log, resources)


def verdict_codes(daemon: Daemon) -> Tuple[int, int, int]:
    """(livez, readyz, startupz) status codes from the daemon's cache."""
    verdicts = daemon.pod.verdicts
    return tuple(200 if verdicts[g].ok else 503 for g in ("live", "ready", "started"))  # type: ignore


def verdict_line(daemon: Daemon) -> str:
    """`livez 200  readyz 503 (reason)  startupz 200` from the daemon's cache."""
    parts = []
    for group, path in (("live", "livez"), ("ready", "readyz"), ("started", "startupz")):
        verdict = daemon.pod.verdicts[group]
        parts.append("%s %d%s" % (path, 200 if verdict.ok else 503,
                                  "" if verdict.ok else " (%s)" % verdict.reason))
    return "  ".join(parts)


async def walk(sim: VLLMSimulator, daemon: Daemon, port: int, stages: Sequence[Any],
               speed: float, out: Any) -> None:
    """Drive the simulator through `stages`, printing what probed answers after each."""
    probe = "http://127.0.0.1:%d" % port
    print("\nprobed answers on %s for a simulated vLLM on %s. Try, in another shell:" % (
        probe, sim.url), file=out)
    for path in ("/readyz?verbose", "/livez", "/startupz?format=json", "/metrics"):
        print("  curl -s '%s%s'" % (probe, path), file=out)
    for state, params, hold, codes, expect in stages:
        print("\n== %s: %s" % (state, expect), file=out)
        sim.set_state(state, **params)
        await asyncio.sleep(hold / speed)
        for _ in range(int(DEMO_SETTLE * 10)):
            if verdict_codes(daemon) == codes:
                break
            await asyncio.sleep(0.1)
        print("   now: " + verdict_line(daemon), file=out)
        out.flush()


async def run_demo(speed: float, keep: bool, out: Any) -> int:
    """Start the simulator and probed, walk the stages, stop both."""
    port = free_loopback_port()
    sim = VLLMSimulator(state="loading", dead_exit_after=3.0)
    await sim.start()
    daemon = demo_daemon(sim.url, port, EventLog("text", out))
    served = asyncio.ensure_future(daemon.run())
    try:
        await asyncio.sleep(0.2)
        await walk(sim, daemon, port, DEMO_STAGES, speed, out)
        if keep:
            print("\n--keep: both keep running; Ctrl-C ends the demo.", file=out)
            await served
    finally:
        if daemon.stopping is not None:
            daemon.stopping.set()
        await served
        await sim.stop()
    print("\ndone: see README.md for real deployments.", file=out)
    return 0


def demo_main(argv: Sequence[str], out: Optional[Any] = None) -> int:
    """Command line of `probed demo`."""
    parser = argparse.ArgumentParser(prog="probed demo", description=__doc__.split("\n")[0])
    parser.add_argument("--speed", type=float, default=1.0,
                        help="play the stages this many times faster (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep running after the walk")
    args = parser.parse_args(list(argv))
    if args.speed <= 0:
        parser.error("--speed must be > 0")
    return asyncio.run(run_demo(args.speed, args.keep, out or sys.stdout))
