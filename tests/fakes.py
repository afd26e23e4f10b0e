"""Test doubles shared by the unit tests: a check fed by the test, and a settable clock."""

from typing import Any, Mapping, Optional, Tuple

from probed.checks.base import Check, CheckSpec, Observation, Param
from probed.values import parse_number


class FakeCheck(Check):
    """A check whose observations the test feeds; `limit` shows judge-time thresholds."""

    kind = "fake"
    params = {"limit": Param(parse_number, default=None, overridable=True)}

    def __init__(self, name: str, probes: str = "live,ready,started", fail_after: int = 1,
                 pass_after: int = 1, interval: float = 10.0, stale_after: float = 31.0,
                 limit: Optional[float] = None) -> None:
        super().__init__(CheckSpec("fake", name, frozenset(probes.split(",")) - {""}, interval,
                                   1.0, fail_after, pass_after, stale_after, {"limit": limit}))

    def judge(self, obs: Observation, config: Mapping[str, Any], was_ok: bool) -> Tuple[bool, str]:
        limit = config.get("limit")
        if limit is not None and obs.value is not None and obs.value > limit:
            return False, "value %g over %g" % (obs.value, limit)
        return obs.ok, obs.reason


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
