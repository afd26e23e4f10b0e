"""The serving process: binds the ports, runs the engine, drains on SIGTERM, exits 0.

Glue only: the pieces (engine, router, server) know nothing of each other; this module wires
the engine's group changes to the gated TCP ports and the signals to the drain sequence.
"""

import asyncio
import signal
import socket
from typing import Any, Dict, List, Optional, Tuple

from .admin import build_admin
from .checks.base import Check, CheckResources
from .drain import optional_waiter
from .engine import Engine
from .eventlog import EventLog
from .router import MULTINODE_PROBER_ROUTES, Router
from .selfmetrics import SelfMetrics
from .server import ProbeServer, bind_listener
from .values import ConfigError, format_duration

GATE_FLAGS = {"live": "--tcp-live", "ready": "--tcp-ready", "started": "--tcp-started"}


class GatedPorts:
    """Listens on a group's port only while that group passes, so tcpSocket carries a verdict."""

    def __init__(self, server: ProbeServer, ports: Dict[str, int], log: EventLog,
                 host: str = "") -> None:
        self.server = server
        self.ports = ports
        self.log = log
        self.host = host  # the --addr host: gated ports listen where the probe port does
        self.open: Dict[str, socket.socket] = {}

    def check_bindable(self) -> None:
        """Fail at start (not at the first verdict change) when a gated port is taken."""
        for group, port in self.ports.items():
            bind_listener(self.host, port, GATE_FLAGS[group]).close()

    def set(self, group: str, passing: bool) -> None:
        """Open or close `group`'s port to match its verdict."""
        port = self.ports.get(group)
        if port is None:
            return
        if passing and group not in self.open:
            try:
                sock = bind_listener(self.host, port, GATE_FLAGS[group])
            except ConfigError as exc:
                self.log.warn("gated port not opened", group=group, error=str(exc))
                return
            self.open[group] = sock
            self.server.add_listener(sock)
        elif not passing and group in self.open:
            self.server.remove_listener(self.open.pop(group))


class Daemon:
    """One probed process: settings in, serve until a signal and the drain are done."""

    def __init__(self, settings: Dict[str, Any], checks: List[Check], log: EventLog,
                 resources: CheckResources) -> None:
        self.settings = settings
        self.log = log
        self.engine = Engine(checks, log, settings["startup_timeout"], settings["start_interval"])
        self.selfmetrics = SelfMetrics(self.engine)
        routes = MULTINODE_PROBER_ROUTES if settings.get("vllm_endpoint") else None
        self.router = Router(self.engine, metrics=self.selfmetrics.render, routes=routes)
        self.server = ProbeServer(self.router.respond, settings["read_timeout"],
                                  settings["write_timeout"], settings["idle_timeout"],
                                  settings["max_connections"])
        cap = self.server.cap
        if cap.lowered:
            log.warn("connection cap lowered to fit the open-file limit", max_connections=cap.cap,
                     asked=cap.requested, open_files=cap.soft_limit, kept_for_checks=cap.reserve)
        self.selfmetrics.watch(self.server, self.router)
        gates = {g: settings["tcp_" + g] for g in GATE_FLAGS if settings.get("tcp_" + g)}
        self.gates = GatedPorts(self.server, gates, log, settings["addr"][0])
        self.admin = build_admin(settings, self.engine, checks, log, resources.beats)  # None: off
        self.drain = optional_waiter(self.engine, log, self.admin)
        self.stopping: Optional[asyncio.Event] = None
        self.signals = 0

    async def run(self) -> int:
        """Serve until stopped; returns the exit code."""
        host, port = self.settings["addr"]
        listener = bind_listener(host, port, "--addr")
        self.gates.check_bindable()
        admin_addr = self.admin.start() if self.admin is not None else None
        self.stopping = asyncio.Event()
        self.server.add_listener(listener)
        self.engine.listeners.append(self.gates.set)
        for group, verdict in self.engine.verdicts.items():
            self.gates.set(group, verdict.ok)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        self.engine.start()
        self.selfmetrics.start()
        self.log.info("probed serving", addr=_show_addr(listener.getsockname()),
                      checks=" ".join("%s(%s)" % (s.check.name, s.check.kind)
                                      for s in self.engine.states.values()) or "none")
        if admin_addr is not None:
            self.log.info("admin listening", addr=admin_addr)
        await self.stopping.wait()
        self.server.close()
        if self.admin is not None:
            self.admin.close()
        await self.engine.stop()
        await self.selfmetrics.stop()
        self.log.info("probed stopped")
        return 0

    def on_signal(self, signum: int) -> None:
        """First signal: fail ready, keep answering for --drain-seconds. Second: stop now."""
        assert self.stopping is not None
        self.signals += 1
        if self.signals > 1:
            self.log.info("second signal, stopping now", signal=signal.Signals(signum).name)
            self.stopping.set()
            return
        drain = self.settings["drain_seconds"]
        self.log.info("shutting down", signal=signal.Signals(signum).name,
                      drain=format_duration(drain))
        self.engine.set_draining("shutting down")
        asyncio.get_running_loop().call_later(drain, self.stop_when_waits_return)

    def stop_when_waits_return(self) -> None:
        """Stop, unless a preStop /wait-for-drain is still open: it must get its answer."""
        assert self.stopping is not None
        if self.drain is not None and self.drain.active:
            asyncio.get_running_loop().call_later(0.2, self.stop_when_waits_return)
            return
        self.stopping.set()


def _show_addr(sockname: Tuple[Any, ...]) -> str:
    host, port = sockname[0], sockname[1]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
