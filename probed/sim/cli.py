"""`probed sim`: run the vLLM simulator (probed/sim/vllm.py) as a process, until SIGTERM.

Prints `vllmsim port=N control_port=M` to stdout once both ports are bound (so a parent that
asked for port 0 learns them), logs state changes to stderr, exits 0 on SIGTERM/SIGINT. Must
never exit when the engine "exits" in state `dead`: only the port closes, so the control port
can start the next incarnation.
"""

import argparse
import asyncio
import signal
import sys
from typing import Any, Dict, List, Optional

from .vllm import VLLMSimulator
from .api import SIM_METRIC_STYLES, SIM_STATES


def _sim_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="probed sim", description="Run a simulated vLLM OpenAI server until SIGTERM. "
        "States: " + ", ".join(SIM_STATES) + ".")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--control-port", type=int, default=None, metavar="PORT",
                   help="loopback control port (0: any free port): GET /_sim/state, "
                        "POST /_sim/state/NAME?key=value")
    p.add_argument("--model", default="sim-model", help="served model id")
    p.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1/*")
    p.add_argument("--dev-mode", action="store_true",
                   help="serve /is_sleeping, /sleep, /wake_up, /is_paused, /pause, /resume "
                        "(vLLM's VLLM_SERVER_DEV_MODE=1)")
    p.add_argument("--num-engines", type=int, default=1, help="data-parallel ranks (engine label)")
    p.add_argument("--metrics-style", choices=SIM_METRIC_STYLES, default="v1")
    p.add_argument("--token-latency", type=float, default=0.02, help="seconds per token")
    p.add_argument("--dead-exit-after", type=float, default=2.0,
                   help="seconds from engine death to the port closing (a real 0.32: 0-4 s)")
    p.add_argument("--state", choices=SIM_STATES, default="ready", help="initial state")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the initial state, e.g. seconds=30 for loading")
    return p


async def _sim_run(sim: VLLMSimulator) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await sim.start()
    print("vllmsim port=%d control_port=%s" % (sim.port, sim.control_port), flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()
    return 0


def sim_main(argv: Optional[List[str]] = None) -> int:
    """`probed sim ...`: run a VLLMSimulator until SIGTERM/SIGINT; 0 then, 1 bind error, 2 usage."""
    try:
        args = _sim_arg_parser().parse_args(argv)
    except SystemExit as exc:  # --help is 0, a usage error 2
        return int(exc.code or 0)
    params: Dict[str, Any] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            print("probed sim: --param %r: expected KEY=VALUE" % item, file=sys.stderr)
            return 2
        params[key] = value
    try:
        sim = VLLMSimulator(
            args.host, args.port, model=args.model, api_key=args.api_key, dev_mode=args.dev_mode,
            num_engines=args.num_engines, metrics_style=args.metrics_style,
            token_latency=args.token_latency, dead_exit_after=args.dead_exit_after,
            state=args.state, state_params=params, control_port=args.control_port,
            log=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as exc:
        print("probed sim: %s" % exc, file=sys.stderr)
        return 2
    try:
        return asyncio.run(_sim_run(sim))
    except OSError as exc:
        print("probed sim: cannot listen on %s port %d (or control port %s): %s" % (
            args.host, args.port, args.control_port, exc), file=sys.stderr)
        return 1
