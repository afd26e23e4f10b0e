"""One check's state: its last observation folded into pass, fail or pending. Pure, no I/O.

A `CheckState` turns a stream of judged observations into an effective verdict with
`fail-after`/`pass-after` hysteresis, hard evidence and staleness. Times are passed in (monotonic
`now`, Unix `wall`), so the pod's tests drive them directly. The pod owns one per check.
"""

from typing import Any, Mapping, Optional, Tuple

from .checks.base import Check, Observation
from .hygiene import REASON_MAX_CHARS
from .values import format_duration, printable

PENDING_REASON = "no result yet"


class CheckState:
    """Everything known about one check: last observation, effective verdict, streaks, times."""

    __slots__ = ("check", "ok", "reason", "obs", "obs_at", "obs_wall", "latency", "streak",
                 "streak_ok", "since", "since_wall", "stale", "generation", "transitions",
                 "last_success_wall", "polls", "passed_at", "reset_at", "doubtful")

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
        self.passed_at: Optional[float] = None  # first pass from the server in this incarnation
        self.reset_at = now  # results of polls that began before this belong to the past
        # A pass not confirmed since the result went stale: a fresh failure after staleness
        # counts toward fail-after (the evidence), yet the pass no longer stands for `ready`.
        self.doubtful = False

    @property
    def passing(self) -> bool:
        """The verdict ready and started use: pending, stale and doubtful count as failed."""
        return bool(self.ok) and not self.stale and not self.doubtful

    @property
    def unsure(self) -> bool:
        """Stale, or doubtful since it was: only fresh evidence can say more (live waits)."""
        return self.stale or self.doubtful

    @property
    def pending(self) -> bool:
        """No verdict yet (and not stale): nothing is known about this check."""
        return self.ok is None and not self.stale

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
            self.doubtful = False
            if self.passed_at is None and not obs.refused:
                # a pass that could not reach the server ("progress unknown: connection
                # refused") is no evidence this incarnation served: its refusals stay loading
                self.passed_at = now
        elif was_stale and self.ok:
            self.doubtful = True  # a stale pass plus a fresh failure never turns back to pass
        if self.streak and ok == self.streak_ok:
            self.streak += 1
        else:
            self.streak, self.streak_ok = 1, ok
        if ok:
            flip = self.ok is not True and self.streak >= spec.pass_after
        else:
            flip = self.ok is not False and (
                self.ok is None or obs.hard or self.streak >= spec.fail_after)
        if flip:
            self.ok = ok
            self.doubtful = False
        if self.ok == ok or self.doubtful:
            self.reason = printable(reason, REASON_MAX_CHARS)
        return self._note_change(before, now, wall)

    def expire(self, now: float, wall: float) -> bool:
        """Mark the result stale; returns True when the verdict changed."""
        if self.stale:
            return False
        before = self.state_word()
        self.stale = True
        return self._note_change(before, now, wall)

    def stale_at(self) -> Optional[float]:
        """When the current result goes stale, or None (no result, or stale already)."""
        if self.obs is None or self.stale:
            return None
        return self.obs_at + self.check.spec.stale_after

    def reset(self, now: float, wall: float, reason: str = PENDING_REASON) -> bool:
        """Forget every result (a new backend incarnation): back to pending."""
        before = self.state_word()
        self.ok, self.reason, self.obs, self.stale, self.doubtful = None, reason, None, False, False
        self.streak, self.passed_at, self.reset_at = 0, None, now
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
        if self.pending:
            return "pending"
        return "pass" if self.passing else "fail"

    def judged_with(self, overrides: Mapping[str, Any]) -> Tuple[bool, str]:
        """Re-judge the cached observation under per-request overrides (no backend contact)."""
        if self.obs is None or self.stale or not overrides:
            return self.passing, self.shown_reason
        config = dict(self.check.config)
        config.update(overrides)
        return self.check.judge(self.obs, config, bool(self.ok))
