"""Test doubles shared by the unit tests: a check fed by the test, and a settable clock."""

from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from probed.checks.base import Check, CheckSpec, Observation, Param
from probed.pod import Pod
from probed.values import parse_number


class FakeCheck(Check):
    """A check whose observations the test feeds; `limit` shows judge-time thresholds."""

    kind = "fake"
    params = {"limit": Param(parse_number, default=None, overridable=True)}

    def __init__(self, name: str, probes: str = "live,ready,started", fail_after: int = 1,
                 pass_after: int = 1, interval: float = 10.0, stale_after: float = 31.0,
                 limit: Optional[float] = None, start_interval: Optional[float] = None) -> None:
        super().__init__(CheckSpec("fake", name, frozenset(probes.split(",")) - {""}, interval,
                                   1.0, fail_after, pass_after, stale_after, {"limit": limit},
                                   start_interval=start_interval))

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


class PodDriver:
    """A pod fed by the test the way the scheduler feeds it: `record` is one poll's result,
    taken now on the test's clock. `verdicts`, `states` and `version` read through to the pod."""

    def __init__(self, checks: Sequence[Check], clock: Optional["Clock"] = None,
                 on_poll: Optional[Callable[[str, float], None]] = None, **kw: Any) -> None:
        self.clock = clock or Clock()
        self.pod = Pod(list(checks), self.clock(), self.clock(), **kw)
        self.on_poll = on_poll
        self.events: List[Any] = []

    def record(self, name: str, obs: Observation, latency: float = 0.0) -> None:
        now = self.clock()
        self.events += self.pod.observe(name, obs, latency, now, now, now)
        if self.on_poll is not None:
            self.on_poll(name, latency)

    def drain(self, source: str) -> None:
        now = self.clock()
        self.events += self.pod.drain(source, now, now)

    @property
    def verdicts(self) -> Any:
        return self.pod.verdicts

    @property
    def states(self) -> Any:
        return self.pod.states
