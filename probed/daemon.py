"""The serving process: builds the pieces, binds the ports, runs until a signal, drains, exits.

Glue only, and all of it here: the pod (the lifecycle truth), the scheduler that polls for it,
the router and servers that answer from it, and the sinks its events go to (the log, the gated
ports). No piece knows another except through what this module hands it at construction.
"""

import asyncio
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from .checks.base import Check, CheckResources
from .eventlog import EventLog
from .pod import Pod
from .reaper import OrphanReaper
from .podevents import CheckChanged, Event, GroupChanged, Restarted, group_changes
from .router import MULTINODE_PROBER_ROUTES, Router, router_paths
from .scheduler import EventSink, Scheduler, log_events
from .scrape import ScrapeHub
from .selfmetrics import SelfMetrics
from .server import ProbeServer, ServerStats, bind_listener
from .settings import Settings
from .values import ConfigError, format_duration

if TYPE_CHECKING:  # the names only: their modules are imported where they are needed
    from .admin import AdminListener
    from .grpchealth import GrpcHealthService
    from .h2server import H2Server
    from .pushbeat import BeatPusher

GATE_FLAGS = {"live": "--tcp-live", "ready": "--tcp-ready", "started": "--tcp-started"}
# SIGHUP drains like SIGTERM: it means the terminal or supervisor went away, and a probe daemon
# has no configuration worth reloading in place (a changed manifest restarts the container).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# The check kinds admin.build_admin() refuses without --admin-addr (manual, and heartbeat read
# from pushed beats): with none of them and no admin flag, admin.py is not even imported.
ADMIN_CHECK_KINDS = ("manual", "heartbeat")


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


class PodRestarter:
    """--restart-pod-on: when a group (or one check) has failed for --restart-pod-after, probed
    exits with the rule's code, so the pod's restartPolicyRules (Kubernetes 1.35+,
    RestartAllContainers) restart every container in place, keeping the pod, its IP, its GPUs."""

    def __init__(self, rules: Dict[str, int], after: float, pod: Pod, log: EventLog,
                 stop: Callable[[int], None]) -> None:
        for name in rules:
            if name not in pod.verdicts and name not in pod.states:
                raise ConfigError("--restart-pod-on %s=%d: %r is neither a group (live, ready, "
                                  "started) nor a check (have: %s)" % (
                                      name, rules[name], name, ", ".join(pod.states) or "none"))
        self.rules, self.after, self.pod, self.log, self.stop = rules, after, pod, log, stop
        self.timers: Dict[str, asyncio.TimerHandle] = {}

    def failing(self, name: str) -> bool:
        """Whether the rule's group or check fails now (a pending check does not)."""
        verdict = self.pod.verdicts.get(name)
        if verdict is not None:
            return not verdict.ok
        state = self.pod.states[name]
        return not state.pending and not state.passing

    def on_events(self, events: Sequence[Event]) -> None:
        """Scheduler sink: arm a rule's timer when it starts failing, disarm when it passes."""
        for name in self.rules:
            failing = self.failing(name)
            if failing and name not in self.timers:
                self.timers[name] = asyncio.get_running_loop().call_later(
                    self.after, self.fire, name)
            elif not failing and name in self.timers:
                self.timers.pop(name).cancel()

    def fire(self, name: str) -> None:
        """The failure lasted: say why in one line, then exit with the rule's code."""
        self.timers.pop(name, None)
        if not self.failing(name):
            return
        verdict = self.pod.verdicts.get(name)
        reason = verdict.reason if verdict is not None else self.pod.states[name].shown_reason
        self.log.warn("restarting the pod", rule="%s=%d" % (name, self.rules[name]),
                      failing_for=format_duration(self.after), reason=reason)
        self.stop(self.rules[name])


class Daemon:
    """One probed process: settings in, serve until a signal and the drain are done."""

    def __init__(self, settings: Settings, checks: List[Check], log: EventLog,
                 resources: CheckResources) -> None:
        self.settings = settings
        self.log = log
        self.pod = Pod(checks, time.monotonic(), time.time(), settings.startup_timeout,
                       settings.start_interval)
        routes = MULTINODE_PROBER_ROUTES if settings.multinode_prober else None
        self.stats = ServerStats(router_paths(self.pod, routes))
        self.selfmetrics = SelfMetrics(self.pod, self.stats)
        self.router = Router(self.pod, metrics=self.selfmetrics.render, routes=routes)
        self.timeouts = (settings.read_timeout, settings.write_timeout, settings.idle_timeout)
        self.grpc: Optional["GrpcHealthService"] = None  # built with the HTTP/2 server
        self.server = ProbeServer(self.router.respond, *self.timeouts, settings.max_connections,
                                  stats=self.stats, make_h2=self.build_h2)
        cap = self.server.cap
        if cap.lowered:
            log.warn("connection cap lowered to fit the open-file limit", max_connections=cap.cap,
                     asked=cap.requested, open_files=cap.soft_limit, kept_for_checks=cap.reserve)
        gates = {g: port for g, port in (("live", settings.tcp_live), ("ready", settings.tcp_ready),
                                          ("started", settings.tcp_started)) if port}
        self.gates = GatedPorts(self.server, gates, log, settings.addr[0])
        sinks: List[EventSink] = [log_events(log), self.gates.on_events,
                                  forget_scrapes_on_restart(resources.scrapes), self.tell_watchers]
        if settings.restart_pod_on:
            sinks.append(PodRestarter(settings.restart_pod_on, settings.restart_pod_after,
                                      self.pod, log, self.exit_now).on_events)
        self.absent: Dict[str, Tuple[str, ...]] = {}  # per check: configured metrics last absent
        self.scheduler = Scheduler(self.pod, checks, log, sinks, on_poll=self.after_poll)
        self.admin: Optional["AdminListener"] = None  # --admin-addr off
        if (settings.admin_addr is not None or settings.admin_token_file
                or any(c.kind in ADMIN_CHECK_KINDS for c in checks)):
            from .admin import build_admin  # here: admin and drain code is RSS most pods skip

            self.admin = build_admin(settings, self.pod, self.scheduler, checks, log,
                                     resources.beats)
        self.reaper = OrphanReaper(resources.children)  # works only as PID 1
        self.beats: Optional["BeatPusher"] = None
        if settings.beat_to:
            from .pushbeat import BeatPusher  # only with --beat-to (RSS)

            self.beats = BeatPusher(settings.beat_to, settings.beat_name or "worker",
                                    settings.beat_every, settings.beat_token_file,
                                    settings.beat_on, self.pod, log)
        self.stopping: Optional[asyncio.Event] = None
        self.signals = 0
        self.exit_code = 0

    async def run(self) -> int:
        """Serve until stopped; returns the exit code."""
        host, port = self.settings.addr
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
        self.reaper.start()
        if self.beats is not None:
            self.beats.start()
        self.log.info("probed serving", addr=_show_addr(listener.getsockname()),
                      checks=" ".join("%s(%s)" % (s.check.name, s.check.kind)
                                      for s in self.pod.states.values()) or "none")
        if admin_addr is not None:
            self.log.info("admin listening", addr=admin_addr)
        for note in self.settings.notes:
            self.log.warn("configuration changed", note=note)
        await self.stopping.wait()
        self.server.close()
        if self.admin is not None:
            self.admin.close()
        if self.beats is not None:
            await self.beats.stop()
        self.reaper.stop()
        await self.scheduler.stop()
        await self.selfmetrics.stop()
        self.log.info("probed stopped", exit_code=self.exit_code)
        return self.exit_code

    def exit_now(self, code: int) -> None:
        """Stop at once with `code` (a --restart-pod-on rule fired)."""
        assert self.stopping is not None
        self.exit_code = code
        self.stopping.set()

    def build_h2(self) -> "H2Server":
        """The gRPC health service and its HTTP/2 server, which the probe server builds at its
        first HTTP/2 connection."""
        # Imported here, not at the top: about 0.4 MB of RSS that HTTP/1.1-only pods never use.
        from .grpchealth import GrpcHealthService
        from .h2server import H2Server

        self.grpc = GrpcHealthService(self.grpc_verdict, count=self.stats.count_grpc)
        return H2Server(self.grpc, *self.timeouts)

    def grpc_verdict(self, service: str) -> Optional[bool]:
        """What a gRPC health service name reports: a group's verdict, else one check's own
        (as /readyz/NAME answers it); None for a name that is neither."""
        from .grpchealth import SERVICE_GROUPS  # loaded by build_h2(), the only way here (RSS)

        group = SERVICE_GROUPS.get(service)
        if group is not None:
            return self.pod.verdicts[group].ok
        state = self.pod.states.get(service)
        return None if state is None else state.passing

    def after_poll(self, name: str, latency: float) -> None:
        """After every poll: its duration to /metrics, and metric drift named once in the log
        (a renamed or removed metric would otherwise pass as `missing` forever)."""
        self.selfmetrics.on_poll(name, latency)
        obs = self.pod.states[name].obs
        absent = tuple(obs.detail.get("absent") or ()) if obs and obs.detail else ()
        if absent != self.absent.get(name, ()):
            self.absent[name] = absent
            if absent:
                self.log.warn("metric absent", check=name, metrics=",".join(absent),
                              hint="renamed or removed by the server's version?")
            else:
                self.log.info("metric present again", check=name)

    def tell_watchers(self, events: Sequence[Event]) -> None:
        """Scheduler sink: gRPC Watch streams hear each group flip and each check's own."""
        if self.grpc is not None and any(isinstance(e, (GroupChanged, CheckChanged))
                                         for e in events):
            self.grpc.changed()

    def on_signal(self, signum: int) -> None:
        """First signal: fail ready, keep answering for --drain-seconds. Second: stop now."""
        assert self.stopping is not None
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals > 1:
            self.log.info("second signal, stopping now", signal=name)
            self.stopping.set()
            return
        drain = self.settings.drain_seconds
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
