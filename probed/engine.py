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
from .verdicts import CheckState, GroupVerdict, evaluate_checks, first_failure

JITTER = 0.1  # +-10% of the interval, so many pods do not poll a shared backend in step
# The engine's deadline trails the check's own timeout a little, so a check that bounds its I/O
# with the same timeout (the HTTP client does) reports what stalled before the engine cuts in.
DEADLINE_GRACE = 0.1

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
        self.started_at: Optional[float] = None
        self.starting_since = clock()
        self.draining = ""  # non-empty: the reason ready fails
        self.listeners: List[Listener] = []
        self.version = 0  # bumped on every verdict change; reply caches key on it
        self._tasks: List["asyncio.Task[None]"] = []
        self._startup_timer: Optional[asyncio.TimerHandle] = None
        self.verdicts: Dict[str, GroupVerdict] = {}
        self._refresh(log_changes=False)

    # --- verdicts ------------------------------------------------------------------------------

    def evaluate(self, group: str, exclude: Sequence[str] = (),
                 overrides: Optional[Dict[str, Dict[str, Any]]] = None) -> GroupVerdict:
        """A group's verdict now, optionally excluding checks or re-judging with overrides."""
        rows = evaluate_checks(self.by_group[group], exclude, overrides)
        failure = first_failure(rows)
        if group == "started":
            if self.started:
                return GroupVerdict(group, True, "started", rows)
            return GroupVerdict(group, not failure, failure or "ok", rows)
        if not self.started:
            waiting = first_failure(evaluate_checks(self.by_group["started"], exclude, overrides))
            if group == "live":
                return self._live_before_start(rows, waiting)
            return GroupVerdict(group, False, "not started: " + (waiting or "starting"), rows)
        if group == "ready" and self.draining:
            return GroupVerdict(group, False, self.draining, rows)
        return GroupVerdict(group, not failure, failure or "ok", rows)

    def _live_before_start(self, rows: List[Any], waiting: str) -> GroupVerdict:
        # Loading must not be killed: live passes until --startup-timeout runs out.
        elapsed = self.clock() - self.starting_since
        if self.startup_timeout is not None and elapsed >= self.startup_timeout:
            return GroupVerdict("live", False, "not started within %s: %s" % (
                format_duration(self.startup_timeout), waiting or "starting"), rows)
        return GroupVerdict("live", True, "starting for %ds" % elapsed, rows)

    def _refresh(self, log_changes: bool = True) -> None:
        """Recompute group verdicts; latch `started`; tell listeners about changes."""
        if not self.started and self.evaluate("started").ok:
            self.started, self.started_at = True, self.clock()
            if log_changes:
                self.log.info("started", after=format_duration(
                    round(self.started_at - self.starting_since, 3)))
        previous = self.verdicts
        self.verdicts = {g: self.evaluate(g) for g in GROUPS}
        self.version += 1
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
        before, since = st.state_word(), st.since
        now = self.clock()
        if st.record(obs, latency, now, self.wall()):
            self._log_transition(st, before, now - since)
        self._schedule_expiry(st)
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
        before, since = st.state_word(), st.since
        now = self.clock()
        if st.expire(generation, now, self.wall()):
            self._log_transition(st, before, now - since)
            self._refresh()

    def set_draining(self, reason: str) -> None:
        """Fail `ready` with `reason` (shutting down, draining) until cleared with ''."""
        if reason != self.draining:
            self.draining = reason
            self._refresh()

    def unlatch(self, reason: str) -> None:
        """A new backend incarnation: `started` fails again and loading grace restarts."""
        if self.started:
            self.started, self.started_at = False, None
            self.starting_since = self.clock()
            self.log.info("started unlatched", reason=reason)
            self._arm_startup_timer()
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
        """Seconds until the next poll: the fast start interval until started, else interval."""
        spec = st.check.spec
        if not self.started and "started" in spec.probes:
            fast = spec.start_interval if spec.start_interval is not None else self.start_interval
            return min(spec.interval, fast)
        return spec.interval * random.uniform(1 - JITTER, 1 + JITTER)

    async def _poll_forever(self, name: str) -> None:
        st = self.states[name]
        while True:
            obs, latency = await poll_once(st.check)
            try:
                self.record(name, obs, latency)
            except Exception as exc:  # a bug in one check must not stop the others
                self.log.warn("check bookkeeping failed", check=name, error=repr(exc))
            await asyncio.sleep(self.next_delay(st))


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
