"""Check states and group verdicts: the pure bookkeeping under the engine (no I/O, no asyncio).

A `CheckState` folds a stream of judged observations into an effective pass/fail with
`fail-after`/`pass-after` hysteresis, hard evidence and staleness. `evaluate_group` turns the
states of one group into a verdict, optionally excluding checks or re-judging cached
observations with per-request overrides. Times are passed in, so tests drive them directly.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .checks.base import Check, Observation
from .values import format_duration

PENDING_REASON = "no result yet"


class CheckState:
    """Everything known about one check: last observation, effective verdict, streaks, times."""

    __slots__ = ("check", "ok", "reason", "obs", "obs_at", "obs_wall", "latency", "streak",
                 "streak_ok", "since", "since_wall", "stale", "generation", "transitions",
                 "last_success_wall", "polls", "passed_once")

    def __init__(self, check: Check, now: float, wall: float) -> None:
        self.check = check
        self.ok: Optional[bool] = None  # None: pending, no verdict yet
        self.reason = PENDING_REASON
        self.obs: Optional[Observation] = None
        self.obs_at = 0.0
        self.obs_wall = 0.0
        self.latency = 0.0
        self.streak = 0
        self.streak_ok = False
        self.since = now
        self.since_wall = wall
        self.stale = False
        self.generation = 0
        self.transitions = 0
        self.last_success_wall = 0.0
        self.polls = 0
        self.passed_once = False  # passed since the last reset (this backend incarnation)

    @property
    def passing(self) -> bool:
        """The verdict groups use: pending and stale both count as failed."""
        return bool(self.ok) and not self.stale

    @property
    def shown_reason(self) -> str:
        """The reason as users see it, staleness first."""
        if self.stale:
            return "stale: no result within %s (last: %s)" % (
                format_duration(self.check.spec.stale_after), self.reason or "ok")
        return self.reason

    def record(self, obs: Observation, latency: float, now: float, wall: float) -> bool:
        """Fold one observation in; returns True when the state (pass/fail/pending) changed."""
        spec = self.check.spec
        before = self.state_word()
        ok, reason = self.check.judge(obs, self.check.config, bool(self.ok))
        self.obs, self.obs_at, self.obs_wall, self.latency = obs, now, wall, latency
        self.polls += 1
        self.generation += 1
        was_stale, self.stale = self.stale, False
        if ok:
            self.last_success_wall = wall
            self.passed_once = True
        if self.streak and ok == self.streak_ok:
            self.streak += 1
        else:
            self.streak, self.streak_ok = 1, ok
        if ok:
            flip = self.ok is not True and self.streak >= spec.pass_after
        else:
            # A stale check already counts as failed: a fresh failure confirms, not restarts it.
            flip = self.ok is not False and (
                self.ok is None or obs.hard or was_stale or self.streak >= spec.fail_after)
        if flip:
            self.ok = ok
        if self.ok == ok:
            self.reason = reason
        return self._note_change(before, now, wall)

    def expire(self, generation: int, now: float, wall: float) -> bool:
        """Mark the result stale if no newer one arrived; returns True when the verdict changed."""
        if generation != self.generation or self.stale:
            return False
        before = self.state_word()
        self.stale = True
        return self._note_change(before, now, wall)

    def reset(self, now: float, wall: float, reason: str = PENDING_REASON) -> bool:
        """Forget every result (a new backend incarnation): back to pending."""
        before = self.state_word()
        self.ok, self.reason, self.obs, self.stale = None, reason, None, False
        self.streak, self.passed_once = 0, False
        self.generation += 1
        return self._note_change(before, now, wall)

    def _note_change(self, word_before: str, now: float, wall: float) -> bool:
        if self.state_word() == word_before:
            return False
        self.since, self.since_wall = now, wall
        self.transitions += 1
        return True

    def state_word(self) -> str:
        """pass, fail or pending, as JSON and metrics name it."""
        if self.ok is None and not self.stale:
            return "pending"
        return "pass" if self.passing else "fail"

    def judged_with(self, overrides: Mapping[str, Any]) -> Tuple[bool, str]:
        """Re-judge the cached observation under per-request overrides (no backend contact)."""
        if self.obs is None or self.stale or not overrides:
            return self.passing, self.shown_reason
        config = dict(self.check.config)
        config.update(overrides)
        return self.check.judge(self.obs, config, bool(self.ok))


class GroupVerdict:
    """One group's answer: pass/fail, a short reason, and (name, passes, reason) per check."""

    __slots__ = ("group", "ok", "reason", "checks")

    def __init__(self, group: str, ok: bool, reason: str,
                 checks: List[Tuple[CheckState, bool, str]]) -> None:
        self.group = group
        self.ok = ok
        self.reason = reason
        self.checks = checks


def evaluate_checks(states: Sequence[CheckState], exclude: Sequence[str] = (),
                    overrides: Optional[Dict[str, Dict[str, Any]]] = None,
                    pending_passes: bool = False) -> List[Tuple[CheckState, bool, str]]:
    """The (state, passes, reason) of each state not excluded, overrides applied.

    `pending_passes`: a check with no result yet counts as passing (for `live`, which fails
    only on evidence).
    """
    rows = []
    for st in states:
        if st.check.name in exclude:
            continue
        own = overrides.get(st.check.name) if overrides else None
        ok, reason = st.judged_with(own) if own else (st.passing, st.shown_reason)
        if pending_passes and st.ok is None and not st.stale:
            ok = True
        rows.append((st, ok, reason))
    return rows


def first_failure(rows: Sequence[Tuple[CheckState, bool, str]]) -> str:
    """`name: reason` of the first failing row, or ''."""
    for st, ok, reason in rows:
        if not ok:
            return "%s: %s" % (st.check.name, reason)
    return ""
