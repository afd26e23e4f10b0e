"""The pod's lifecycle truth as a pure state machine. No sockets, no asyncio, no clocks.

`Pod` holds every check's state, the `started` latch, the backend incarnation, the start-up phase
and the set of active drains. Inputs carry the time they happened (`now`: monotonic seconds,
`wall`: Unix seconds): `observe` (a poll's result), `tick` (time passed: staleness, the start-up
grace), `drain` and `undrain`. Each returns the events it caused (podevents.py); `verdicts` holds
the three group verdicts the probe replies read. The rules are the two tables below; every
incident question ("why was /livez 200 while...") ends in this module.
"""

from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .checks.base import Check, Incarnation, Observation
from .checkstate import CheckState
from .groups import GROUPS
from .podevents import (CheckChanged, DrainChanged, Event, GroupChanged, IncarnationSeen,
                        Restarted, Started, Unlatched, describe_incarnation)
from .values import format_duration

class GroupRule(NamedTuple):
    """How one group turns its checks' states into a verdict."""
    pending_passes: bool  # a check with no result yet counts as passing
    stale_keeps_last: bool  # a stale result (and a doubtful one after it) keeps its last
    # verdict until fresh evidence decides (else it fails)
    before_start: str  # "phase": fail naming the start-up phase; "grace": pass until
    # --startup-timeout runs out; "wait": fail "not started"
    latches: bool  # once passed, holds for the backend incarnation
    drains: bool  # an active drain fails it
    includes: Tuple[str, ...]  # after start, these groups' checks count too, by their own rule


# live fails only on evidence: pending is no evidence, and a late poller is probed's own fault
# (probed's own /probed/livez reports it), so a stale result keeps its last verdict there.
# ready needs live: a server that is being restarted (a stall, a failed inference, a dead
# engine) can serve nothing, so traffic leaves it before the kubelet's restart does.
GROUP_RULES: Dict[str, GroupRule] = {
    "started": GroupRule(pending_passes=False, stale_keeps_last=False, before_start="phase",
                         latches=True, drains=False, includes=()),
    "live": GroupRule(pending_passes=True, stale_keeps_last=True, before_start="grace",
                      latches=False, drains=False, includes=()),
    "ready": GroupRule(pending_passes=False, stale_keeps_last=False, before_start="wait",
                       latches=False, drains=True, includes=("live",)),
}


class DrainRule(NamedTuple):
    """One source of a drain: what ready says, whether POST /undrain may clear it, and whether
    a new backend incarnation ends it."""
    reason: str
    undoable: bool
    ends_on_restart: bool


# A preStop wait drains because the kubelet stops the server container; the new process that a
# restart brings must be able to turn ready, so that drain ends with the incarnation. An
# operator's drain stays until they undo it. SIGTERM means probed itself is going away.
DRAIN_RULES: Dict[str, DrainRule] = {
    "shutdown": DrainRule("shutting down", undoable=False, ends_on_restart=False),
    "prestop": DrainRule("draining", undoable=True, ends_on_restart=True),
    "admin": DrainRule("draining (admin)", undoable=True, ends_on_restart=False),
}

PHASES = ("loading", "starting", "warming", "started")
# These groups watch this pod's own backend, so their refusal after a pass means it restarted;
# a ready-only check (a relay to another pod) refused says nothing of the sort.
BACKEND_GROUPS = frozenset(("started", "live"))
FAST_UNTIL_READY = frozenset(("started", "ready"))  # polled at --start-interval until the pod
# has been ready once since the last (re)start, so it turns ready soon after the model loads
STARTED_ONLY = frozenset(("started",))
JITTER = 0.1  # +-10% of the interval, so checks and pods do not poll a backend in step
STUCK_FACTOR = 2.0  # no result for this many stale-afters: the poller itself is stuck
RESTART_REASON = "no result since the backend restarted"

Row = Tuple[CheckState, bool, str]  # (state, passes in this verdict, reason)
Overrides = Mapping[str, Mapping[str, object]]


class GroupVerdict:
    """One group's answer: pass/fail, a short reason, and (state, passes, reason) per check."""

    __slots__ = ("group", "ok", "reason", "checks")

    def __init__(self, group: str, ok: bool, reason: str, checks: List[Row]) -> None:
        self.group = group
        self.ok = ok
        self.reason = reason
        self.checks = checks


def first_failure(rows: Sequence[Row]) -> str:
    """`name: reason` of the first failing row, or ''."""
    for st, ok, reason in rows:
        if not ok:
            return "%s: %s" % (st.check.name, reason)
    return ""


def startup_phase(states: Sequence[CheckState], started: bool) -> str:
    """Where a backend that has not started is: loading, starting or warming."""
    if started:
        return "started"
    if any(st.obs is not None and st.obs.refused and not st.passing for st in states):
        return "loading"
    waiting = [st for st in states if not st.passing]
    if waiting and all(st.check.kind == "inference" for st in waiting):
        return "warming"
    return "starting"


class Pod:
    """Check states, the `started` latch, incarnation, phase, drains, and the group verdicts."""

    def __init__(self, checks: Sequence[Check], now: float, wall: float,
                 startup_timeout: Optional[float] = None, start_interval: float = 0.5) -> None:
        self.states: Dict[str, CheckState] = {c.name: CheckState(c, now, wall) for c in checks}
        self.members: Dict[str, List[CheckState]] = {
            g: [s for s in self.states.values() if g in s.check.spec.probes] for g in GROUPS}
        self.startup_timeout = startup_timeout
        self.start_interval = start_interval
        self.started = False
        self.started_at: Optional[float] = None
        self.starting_since = now
        self.ready_seen = False  # ready has passed since the (re)start: polling slows down
        self.incarnation: Incarnation = None
        self.start_time_seen = False  # some check reports the process start time
        self.awaiting_incarnation = False  # restarted, the new process not seen yet
        self.phase, self.phase_since, self.phase_since_wall = "starting", now, wall
        self.drains: Dict[str, float] = {}  # active drain source -> since (monotonic)
        self.version = 0  # bumped on every verdict change; reply caches key on it
        self.verdicts: Dict[str, GroupVerdict] = {}
        self._refresh(now, wall, [])

    # --- inputs --------------------------------------------------------------------------------

    def observe(self, name: str, obs: Observation, latency: float, polled_at: float,
                now: float, wall: float) -> List[Event]:
        """Fold in the result of a poll of `name` that began at `polled_at`."""
        st = self.states[name]
        if polled_at < st.reset_at:
            return []  # began before the backend restarted: it speaks of the old process
        events: List[Event] = []
        self._note_incarnation(st, obs, polled_at, now, wall, events)
        before, since = st.state_word(), st.since
        if st.record(obs, latency, now, wall):
            events.append(self._changed(st, before, now - since))
        self._refresh(now, wall, events)
        return events

    def tick(self, now: float, wall: float) -> List[Event]:
        """Time passed: results older than their stale-after go stale; the grace may end."""
        events: List[Event] = []
        for st in self.states.values():
            due = st.stale_at()
            if due is not None and due <= now and not self.dormant(st.check.name):
                before, since = st.state_word(), st.since
                if st.expire(now, wall):
                    events.append(self._changed(st, before, now - since))
        self._refresh(now, wall, events)
        return events

    def drain(self, source: str, now: float, wall: float) -> List[Event]:
        """Fail ready because of `source` (a key of DRAIN_RULES) until it is cleared."""
        if source in self.drains:
            return []
        self.drains[source] = now
        events: List[Event] = [DrainChanged(source, True, self.active_drains())]
        self._refresh(now, wall, events)
        return events

    def undrain(self, source: str, now: float, wall: float) -> List[Event]:
        """Clear one drain source (nothing happens when it is not active)."""
        if self.drains.pop(source, None) is None:
            return []
        events: List[Event] = [DrainChanged(source, False, self.active_drains())]
        self._refresh(now, wall, events)
        return events

    # --- queries -------------------------------------------------------------------------------

    def active_drains(self) -> Tuple[str, ...]:
        """Active drain sources, in DRAIN_RULES order."""
        return tuple(s for s in DRAIN_RULES if s in self.drains)

    def drain_reason(self) -> str:
        """Why ready fails because of drains ('' when none is active)."""
        return " + ".join(DRAIN_RULES[s].reason for s in self.active_drains())

    def member_names(self, group: str) -> List[str]:
        """Names of the checks a group's verdict reads once started (includes counted)."""
        names = [st.check.name for st in self.members[group]]
        for other in GROUP_RULES[group].includes:
            names += [st.check.name for st in self.members[other] if st.check.name not in names]
        return names

    def dormant(self, name: str) -> bool:
        """A check only `started` reads has nothing to tell once started has latched."""
        return self.started and self.states[name].check.spec.probes == STARTED_ONLY

    def poll_delay(self, name: str, jitter: float) -> Optional[float]:
        """Seconds until the next poll of `name` (None: dormant, poll when woken). `jitter` in
        [-1, 1] spreads polls; started and ready checks poll at the start interval until the
        pod has been ready once since its last (re)start."""
        if self.dormant(name):
            return None
        spec = self.states[name].check.spec
        base = spec.interval
        if not self.ready_seen and spec.probes & FAST_UNTIL_READY:
            base = min(base, spec.start_interval if spec.start_interval is not None
                       else self.start_interval)
        return base * (1.0 + JITTER * jitter)

    def next_deadline(self) -> Optional[float]:
        """When `tick` next has something to do (a result going stale, the grace ending)."""
        times = [st.stale_at() for st in self.states.values() if not self.dormant(st.check.name)]
        if not self.started and self.startup_timeout is not None:
            times.append(self.starting_since + self.startup_timeout)
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def self_check(self, now: float) -> Tuple[bool, str]:
        """probed's own liveness: every poller delivers (else restart probed, not the server)."""
        for st in self.states.values():
            if self.dormant(st.check.name) or not st.check.scheduled:
                continue
            last = st.obs_at if st.obs is not None else st.reset_at
            limit = STUCK_FACTOR * st.check.spec.stale_after
            if now - last > limit:
                return False, "poller of %s stuck: no result for %s (limit %s)" % (
                    st.check.name, format_duration(round(now - last)), format_duration(limit))
        return True, "ok"

    def verdict(self, group: str, now: float, exclude: Sequence[str] = (),
                overrides: Optional[Overrides] = None) -> GroupVerdict:
        """A group's verdict now, optionally excluding checks or re-judging with overrides."""
        rule = GROUP_RULES[group]
        rows = self._rows(group, exclude, overrides)
        if not self.started:
            if rule.before_start == "phase":
                rows = self._with_phase(rows, now)
                failure = first_failure(rows)
                return GroupVerdict(group, not failure, failure or "ok", rows)
            waiting = first_failure(self._rows("started", exclude, overrides)) or "starting"
            if rule.before_start == "grace":
                return self._grace(rows, waiting, now)
            return GroupVerdict(group, False, "not started: " + waiting, rows)
        if rule.latches:
            return GroupVerdict(group, True, "started", rows)
        seen = {st.check.name for st, _, _ in rows}
        for other in rule.includes:
            rows += [r for r in self._rows(other, exclude, overrides)
                     if r[0].check.name not in seen]
        if rule.drains and self.drains:
            return GroupVerdict(group, False, self.drain_reason(), rows)
        failure = first_failure(rows)
        return GroupVerdict(group, not failure, failure or "ok", rows)

    # --- internals -----------------------------------------------------------------------------

    def _rows(self, group: str, exclude: Sequence[str],
              overrides: Optional[Overrides]) -> List[Row]:
        rule = GROUP_RULES[group]
        rows: List[Row] = []
        for st in self.members[group]:
            if st.check.name in exclude:
                continue
            own = overrides.get(st.check.name) if overrides else None
            ok, reason = st.judged_with(own) if own else (st.passing, st.shown_reason)
            if st.pending and rule.pending_passes:
                ok = True
            elif st.unsure and rule.stale_keeps_last:
                ok = bool(st.ok)
            rows.append((st, ok, reason))
        return rows

    def _with_phase(self, rows: List[Row], now: float) -> List[Row]:
        # "loading for 312s (connection refused)": how long the backend has been in its phase.
        since = int(now - self.phase_since)
        return [(st, ok, reason if ok else "%s for %ds (%s)" % (self.phase, since, reason))
                for st, ok, reason in rows]

    def _grace(self, rows: List[Row], waiting: str, now: float) -> GroupVerdict:
        # Loading must not be killed: live passes until --startup-timeout runs out.
        elapsed = now - self.starting_since
        if self.startup_timeout is not None and elapsed >= self.startup_timeout:
            return GroupVerdict("live", False, "not started within %s: %s" % (
                format_duration(self.startup_timeout), waiting), rows)
        return GroupVerdict("live", True, "starting for %ds" % elapsed, rows)

    def _changed(self, st: CheckState, before: str, lasted: float) -> CheckChanged:
        return CheckChanged(st.check.name, st.check.kind, before, st.state_word(),
                            st.shown_reason, st.streak, lasted)

    def _note_incarnation(self, st: CheckState, obs: Observation, polled_at: float,
                          now: float, wall: float, events: List[Event]) -> None:
        """Restart detection, before the observation is folded in (see the Observation fields).
        A refusal counts only from a poll that began after the check had passed on an answer
        of this incarnation: a refusal from the loading phase that arrives late, or one after
        a pass that never reached the server (progress unknown), is no restart."""
        if obs.incarnation is not None:
            self.start_time_seen = True
            old = self.incarnation
            if old is None:
                self.incarnation = obs.incarnation
                if self.awaiting_incarnation:
                    self.awaiting_incarnation = False
                    events.append(IncarnationSeen(obs.incarnation))
            elif obs.incarnation != old:
                what = "identity" if isinstance(obs.incarnation, str) else "start time"
                self._restart("process %s changed from %s to %s" % (
                    what, describe_incarnation(old), describe_incarnation(obs.incarnation)),
                    obs.incarnation, now, wall, events)
            return
        why = ""
        if obs.restart and not self.start_time_seen:  # the start time is the better witness
            why = obs.restart
        elif self.started and st.check.spec.probes & BACKEND_GROUPS:
            if obs.refused and st.passed_at is not None and polled_at >= st.passed_at:
                why = "%s refused connections after passing" % st.check.name
            elif obs.loading:
                why = "%s says the server is loading after it had served" % st.check.name
        if why:
            self._restart(why, None, now, wall, events)

    def _restart(self, why: str, new: Incarnation, now: float, wall: float,
                 events: List[Event]) -> None:
        """A new backend incarnation: forget every result, unlatch, end restart-bound drains."""
        events.append(Restarted(why, self.incarnation, new))
        self.incarnation, self.awaiting_incarnation = new, new is None
        for st in self.states.values():
            st.reset(now, wall, RESTART_REASON)
        self.ready_seen = False
        self.starting_since = now
        for source in self.active_drains():
            if DRAIN_RULES[source].ends_on_restart:
                del self.drains[source]
                events.append(DrainChanged(source, False, self.active_drains()))
        if self.started:
            self.started, self.started_at = False, None
            events.append(Unlatched(why))

    def _refresh(self, now: float, wall: float, events: List[Event]) -> None:
        """Latch `started`, follow the phase, recompute the verdicts, note group flips."""
        phase = startup_phase(self.members["started"], self.started)
        if not self.started and self.verdict("started", now).ok:
            self.started, self.started_at = True, now
            events.append(Started(now - self.starting_since))
            phase = "started"
            self._forget_loading_results(now, wall)
        if phase != self.phase:
            self.phase, self.phase_since, self.phase_since_wall = phase, now, wall
        previous = self.verdicts
        self.verdicts = {g: self.verdict(g, now) for g in GROUPS}
        self.ready_seen = self.ready_seen or self.verdicts["ready"].ok
        if any(g not in previous or (previous[g].ok, previous[g].reason) != (v.ok, v.reason)
               for g, v in self.verdicts.items()):
            self.version += 1  # cached replies carry the reason, so they go stale too
        for group, verdict in self.verdicts.items():
            old = previous.get(group)
            if old is not None and old.ok != verdict.ok:
                events.append(GroupChanged(group, verdict.ok, verdict.reason))

    def _forget_loading_results(self, now: float, wall: float) -> None:
        # What a live-only check saw while the model loaded (refusals, empty metrics) is no
        # evidence against the started server: it starts over, and pending counts as alive.
        for st in self.members["live"]:
            if "started" not in st.check.spec.probes and not st.passing:
                st.reset(now, wall)
