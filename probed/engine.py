"""The engine: runs every check on its schedule and keeps the group verdicts probes read.

One asyncio task per check polls with interval + jitter under a hard deadline and folds each
observation into its `CheckState`; timers expire results that grow stale and end the start-up
grace. Whenever a group verdict changes, listeners (the reply cache, gated ports) are told and
one log line is written. Probe handling never waits on anything here: it reads `verdicts`.
"""

import asyncio
import random
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .checks.base import Check, Observation
from .eventlog import EventLog
from .values import GROUPS, format_duration
from .lifecycle import describe_incarnation, restart_signal, startup_phase
from .verdicts import CheckState, GroupVerdict, evaluate_checks, first_failure

JITTER = 0.1  # +-10% of the interval, so many pods do not poll a shared backend in step
# The engine's deadline trails the check's own timeout a little, so a check that bounds its I/O
# with the same timeout (the HTTP client does) reports what stalled before the engine cuts in.
DEADLINE_GRACE = 0.1
STARTED_ONLY = frozenset(("started",))
FAST_UNTIL_READY = frozenset(("started", "ready"))  # groups polled at --start-interval until
# the pod has been ready once, so it turns ready soon after the model loads
DORMANT_RECHECK = 1.0  # how soon a dormant check notices that started unlatched

Listener = Callable[[str, bool], None]


class Engine:
    """Check states, the `started` latch, draining, and the three group verdicts."""

    def __init__(self, checks: Sequence[Check], log: Optional[EventLog] = None,
                 startup_timeout: Optional[float] = None, start_interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.clock, self.wall = clock, wall
        self.log = log or EventLog()
        self.startup_timeout = startup_timeout
        self.start_interval = start_interval
        self.states: Dict[str, CheckState] = {
            c.name: CheckState(c, clock(), wall()) for c in checks}
        self.by_group: Dict[str, List[CheckState]] = {
            g: [s for s in self.states.values() if g in s.check.spec.probes] for g in GROUPS}
        self.started = False
        self.ready_seen = False  # ready has passed since the (re)start: polling slows down
        self.started_at: Optional[float] = None
        self.starting_since = clock()
        self.incarnation: Optional[float] = None  # the backend's process start time, if seen
        self.start_time_seen = False
        self.phase, self.phase_since, self.phase_since_wall = "starting", clock(), wall()
        self.draining = ""  # non-empty: the reason ready fails
        self.drain_ends_on_restart = False
        self.listeners: List[Listener] = []
        self.poll_listeners: List[Callable[[CheckState], None]] = []  # after every poll (metrics)
        self.version = 0  # bumped on every verdict change; reply caches key on it
        self._tasks: List["asyncio.Task[None]"] = []
        self._startup_timer: Optional[asyncio.TimerHandle] = None
        self._wake: Optional[asyncio.Event] = None
        self.verdicts: Dict[str, GroupVerdict] = {}
        self._refresh(log_changes=False)

    # --- verdicts ------------------------------------------------------------------------------

    def evaluate(self, group: str, exclude: Sequence[str] = (),
                 overrides: Optional[Dict[str, Dict[str, Any]]] = None) -> GroupVerdict:
        """A group's verdict now, optionally excluding checks or re-judging with overrides."""
        rows = evaluate_checks(self.by_group[group], exclude, overrides, group == "live")
        failure = first_failure(rows)
        if group == "started":
            if self.started:
                return GroupVerdict(group, True, "started", rows)
            rows = self._with_phase(rows)
            return GroupVerdict(group, not failure, first_failure(rows) or "ok", rows)
        if not self.started:
            waiting = first_failure(evaluate_checks(self.by_group["started"], exclude, overrides))
            if group == "live":
                return self._live_before_start(rows, waiting)
            return GroupVerdict(group, False, "not started: " + (waiting or "starting"), rows)
        if group == "ready" and self.draining:
            return GroupVerdict(group, False, self.draining, rows)
        return GroupVerdict(group, not failure, failure or "ok", rows)

    def _with_phase(self, rows: List[Any]) -> List[Any]:
        # "loading for 312s (connection refused)": how long the backend has been in its phase.
        since = int(self.clock() - self.phase_since)
        return [(st, ok, reason if ok else "%s for %ds (%s)" % (self.phase, since, reason))
                for st, ok, reason in rows]

    def _forget_loading_results(self) -> None:
        # What a live-only check saw while the model loaded (refusals, empty metrics) is no
        # evidence against the started server: it starts over, and pending counts as alive.
        now, wall = self.clock(), self.wall()
        for st in self.by_group["live"]:
            if "started" not in st.check.spec.probes and not st.passing:
                st.reset(now, wall)

    def _live_before_start(self, rows: List[Any], waiting: str) -> GroupVerdict:
        # Loading must not be killed: live passes until --startup-timeout runs out.
        elapsed = self.clock() - self.starting_since
        if self.startup_timeout is not None and elapsed >= self.startup_timeout:
            return GroupVerdict("live", False, "not started within %s: %s" % (
                format_duration(self.startup_timeout), waiting or "starting"), rows)
        return GroupVerdict("live", True, "starting for %ds" % elapsed, rows)

    def _refresh(self, log_changes: bool = True) -> None:
        """Recompute group verdicts; latch `started`; tell listeners about changes."""
        phase = startup_phase(self.by_group["started"], self.started)
        if not self.started and self.evaluate("started").ok:
            self.started, self.started_at = True, self.clock()
            phase = "started"
            self._forget_loading_results()
            if log_changes:
                self.log.info("started", after=format_duration(
                    round(self.started_at - self.starting_since, 3)))
        if phase != self.phase:
            self.phase, self.phase_since, self.phase_since_wall = phase, self.clock(), self.wall()
        previous = self.verdicts
        self.verdicts = {g: self.evaluate(g) for g in GROUPS}
        self.ready_seen = self.ready_seen or self.verdicts["ready"].ok
        if any(previous.get(g) is None or (previous[g].ok, previous[g].reason) != (v.ok, v.reason)
               for g, v in self.verdicts.items()):
            self.version += 1  # cached replies carry the reason, so they go stale too
        for group, verdict in self.verdicts.items():
            old = previous.get(group)
            if old is None or old.ok == verdict.ok:
                continue
            if log_changes:
                self.log.info("group changed", group=group, to="pass" if verdict.ok else "fail",
                              reason=verdict.reason)
            for listener in self.listeners:
                listener(group, verdict.ok)

    # --- state changes -------------------------------------------------------------------------

    def record(self, name: str, obs: Observation, latency: float) -> None:
        """Fold one observation of check `name` in, log a transition, schedule staleness."""
        st = self.states[name]
        self.start_time_seen = self.start_time_seen or obs.incarnation is not None
        old = self.incarnation
        why, self.incarnation = restart_signal(st, obs, self.started, old, self.start_time_seen)
        if why:
            self.restart(why, old)
        before, since = st.state_word(), st.since
        now = self.clock()
        if st.record(obs, latency, now, self.wall()):
            self._log_transition(st, before, now - since)
        self._schedule_expiry(st)
        for listener in self.poll_listeners:
            listener(st)
        self._refresh()

    def _log_transition(self, st: CheckState, before: str, lasted: float) -> None:
        fields = {"check": st.check.name, "kind": st.check.kind, "from": before,
                  "to": st.state_word(), "reason": st.shown_reason, "consecutive": st.streak,
                  "after": format_duration(round(lasted, 3))}
        self.log.info("check changed", **fields)

    def _schedule_expiry(self, st: CheckState) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # unit tests drive record() without a loop and call expire() themselves
        loop.call_later(st.check.spec.stale_after, self.expire, st.check.name, st.generation)

    def expire(self, name: str, generation: int) -> None:
        """Called stale-after past a result: if nothing newer came, the result goes stale."""
        st = self.states[name]
        if self.dormant(st):
            return  # its last result stands for the latched start; nobody reads it as fresh
        before, since = st.state_word(), st.since
        now = self.clock()
        if st.expire(generation, now, self.wall()):
            self._log_transition(st, before, now - since)
            self._refresh()

    def set_draining(self, reason: str, until_restart: bool = False) -> None:
        """Fail `ready` with `reason` (shutting down, draining) until cleared with ''.
        `until_restart`: a new backend incarnation clears it too (a preStop drain ran because
        the kubelet restarts the server container, whose new process must be able to be ready)."""
        self.drain_ends_on_restart = until_restart and bool(reason)
        if reason != self.draining:
            self.draining = reason
            self._refresh()

    def restart(self, reason: str, old_incarnation: Optional[float] = None) -> None:
        """The backend restarted: forget the old incarnation's results and start over."""
        self.log.info("backend restarted", reason=reason,
                      old_start=describe_incarnation(old_incarnation),
                      new_start=describe_incarnation(self.incarnation))
        now, wall = self.clock(), self.wall()
        for st in self.states.values():
            st.reset(now, wall, "no result since the backend restarted")
            st.check.forget()
        self.unlatch(reason)
        self._refresh()

    def unlatch(self, reason: str) -> None:
        """A new backend incarnation: `started` fails again and loading grace restarts."""
        if self.drain_ends_on_restart:
            self.draining, self.drain_ends_on_restart = "", False
        if self.started:
            self.started, self.started_at, self.ready_seen = False, None, False
            self.starting_since = self.clock()
            self.log.info("started unlatched", reason=reason)
            self._arm_startup_timer()
            self.wake_pollers()
            self._refresh()

    # --- scheduling ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start one polling task per check (call inside the running loop)."""
        loop = asyncio.get_running_loop()
        for name in self.states:
            self._tasks.append(loop.create_task(self._poll_forever(name)))
        self._arm_startup_timer()

    def _arm_startup_timer(self) -> None:
        if self.startup_timeout is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._startup_timer is not None:
            self._startup_timer.cancel()
        self._startup_timer = loop.call_later(self.startup_timeout + 0.001, self._refresh)

    async def stop(self) -> None:
        """Cancel every polling task and wait for them to finish."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def next_delay(self, st: CheckState) -> float:
        """Seconds until the next poll: --start-interval for started and ready checks until
        the pod has been ready once (since the last restart), else the interval with jitter."""
        spec = st.check.spec
        if not self.ready_seen and spec.probes & FAST_UNTIL_READY:
            fast = spec.start_interval if spec.start_interval is not None else self.start_interval
            return min(spec.interval, fast)
        return spec.interval * random.uniform(1 - JITTER, 1 + JITTER)

    def dormant(self, st: CheckState) -> bool:
        """A check only `started` reads has nothing to tell once started has latched."""
        return self.started and st.check.spec.probes == STARTED_ONLY

    async def _poll_forever(self, name: str) -> None:
        st = self.states[name]
        while True:
            if self.dormant(st):
                await self._sleep(min(st.check.spec.interval, DORMANT_RECHECK))
                continue
            obs, latency = await poll_once(st.check)
            try:
                self.record(name, obs, latency)
            except Exception as exc:  # a bug in one check must not stop the others
                self.log.warn("check bookkeeping failed", check=name, error=repr(exc))
            await self._sleep(self.next_delay(st))

    async def _sleep(self, delay: float) -> None:
        """Sleep `delay`, or less when a restart wakes every poller (see wake_pollers)."""
        wake = self._wake
        if wake is None:
            self._wake = wake = asyncio.Event()
        try:
            await asyncio.wait_for(wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    def wake_pollers(self) -> None:
        """A new incarnation: poll now at the start pace, not after the old long sleeps."""
        if self._wake is not None:
            self._wake.set()
            self._wake = None  # sleepers from now on wait on a fresh event


async def poll_once(check: Check) -> Tuple[Observation, float]:
    """Run one observation under the check's hard deadline; never raises (but cancellation)."""
    t0 = time.monotonic()
    timeout = check.spec.timeout
    try:
        obs = await asyncio.wait_for(check.observe(), timeout + DEADLINE_GRACE)
    except asyncio.TimeoutError:
        obs = Observation(False, "timed out after %s" % format_duration(timeout))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        obs = Observation(False, "%s: %s" % (type(exc).__name__, exc))
    return obs, time.monotonic() - t0
