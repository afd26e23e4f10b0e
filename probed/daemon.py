"""The serving process: builds the pieces, binds the ports, runs until a signal, drains, exits.

Glue only, and all of it here: the pod (the lifecycle truth), the scheduler that polls for it,
the router and servers that answer from it, and the sinks its events go to (the log, the gated
ports). No piece knows another except through what this module hands it at construction.
"""

import asyncio
import signal
import socket
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .admin import build_admin
from .checks.base import Check, CheckResources
from .eventlog import EventLog
from .pod import Pod
from .podevents import Event, Restarted, group_changes
from .router import MULTINODE_PROBER_ROUTES, Router, router_paths
from .scheduler import EventSink, Scheduler, log_events
from .scrape import ScrapeHub
from .selfmetrics import SelfMetrics
from .server import ProbeServer, ServerStats, bind_listener
from .values import ConfigError, format_duration

GATE_FLAGS = {"live": "--tcp-live", "ready": "--tcp-ready", "started": "--tcp-started"}
# SIGHUP drains like SIGTERM: it means the terminal or supervisor went away, and a probe daemon
# has no configuration worth reloading in place (a changed manifest restarts the container).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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

    def on_events(self, events: Sequence[Event]) -> None:
        """Scheduler sink: follow every group flip."""
        for change in group_changes(list(events)):
            self.set(change.group, change.ok)

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
        self.pod = Pod(checks, time.monotonic(), time.time(), settings["startup_timeout"],
                       settings["start_interval"])
        routes = MULTINODE_PROBER_ROUTES if settings.get("vllm_endpoint") else None
        stats = ServerStats(router_paths(self.pod, routes))
        self.selfmetrics = SelfMetrics(self.pod, stats)
        self.router = Router(self.pod, metrics=self.selfmetrics.render, routes=routes)
        self.server = ProbeServer(self.router.respond, settings["read_timeout"],
                                  settings["write_timeout"], settings["idle_timeout"],
                                  settings["max_connections"], stats=stats)
        cap = self.server.cap
        if cap.lowered:
            log.warn("connection cap lowered to fit the open-file limit", max_connections=cap.cap,
                     asked=cap.requested, open_files=cap.soft_limit, kept_for_checks=cap.reserve)
        gates = {g: settings["tcp_" + g] for g in GATE_FLAGS if settings.get("tcp_" + g)}
        self.gates = GatedPorts(self.server, gates, log, settings["addr"][0])
        self.scheduler = Scheduler(self.pod, checks, log, sinks=[
            log_events(log), self.gates.on_events, forget_scrapes_on_restart(resources.scrapes)],
            on_poll=self.selfmetrics.on_poll)
        self.admin = build_admin(settings, self.pod, self.scheduler, checks, log,
                                 resources.beats)  # None: --admin-addr off
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
        for group, verdict in self.pod.verdicts.items():
            self.gates.set(group, verdict.ok)
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.on_signal, signum)
        self.scheduler.start()
        self.selfmetrics.start()
        self.log.info("probed serving", addr=_show_addr(listener.getsockname()),
                      checks=" ".join("%s(%s)" % (s.check.name, s.check.kind)
                                      for s in self.pod.states.values()) or "none")
        if admin_addr is not None:
            self.log.info("admin listening", addr=admin_addr)
        await self.stopping.wait()
        self.server.close()
        if self.admin is not None:
            self.admin.close()
        await self.scheduler.stop()
        await self.selfmetrics.stop()
        self.log.info("probed stopped")
        return 0

    def on_signal(self, signum: int) -> None:
        """First signal: fail ready, keep answering for --drain-seconds. Second: stop now."""
        assert self.stopping is not None
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals > 1:
            self.log.info("second signal, stopping now", signal=name)
            self.stopping.set()
            return
        drain = self.settings["drain_seconds"]
        self.log.info("shutting down", signal=name, drain=format_duration(drain))
        self.scheduler.drain("shutdown")
        asyncio.get_running_loop().call_later(drain, self.stop_when_waits_return)

    def stop_when_waits_return(self) -> None:
        """Stop, unless a preStop /wait-for-drain is still open: it must get its answer."""
        assert self.stopping is not None
        if self.admin is not None and self.admin.waits_open():
            asyncio.get_running_loop().call_later(0.2, self.stop_when_waits_return)
            return
        self.stopping.set()


def forget_scrapes_on_restart(hub: ScrapeHub) -> EventSink:
    """A sink that drops every cached /metrics body when the backend restarts."""
    def sink(events: Sequence[Event]) -> None:
        if any(isinstance(e, Restarted) for e in events):
            hub.forget()
    return sink


def _show_addr(sockname: Tuple[Any, ...]) -> str:
    host, port = sockname[0], sockname[1]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
