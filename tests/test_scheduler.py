"""The scheduler: deadlines, what an overrun means, first polls spread, events routed to sinks,
forget() on a restart, and the pod's timer. Real asyncio, short intervals, every wait bounded."""

import asyncio
import io
import time
from typing import Any, Dict, List, Sequence, Tuple

from fakes import FakeCheck

from probed.checks.base import Observation
from probed.config import build_checks
from probed.eventlog import EventLog
from probed.pod import Pod
from probed.podevents import Event, GroupChanged, Restarted
from probed.scheduler import FIRST_POLL_SPREAD, Scheduler, log_events, poll_once

OK = Observation(True, "fine")


class ScriptedCheck(FakeCheck):
    """Answers from a list (the last answer repeats); remembers when it was polled."""

    def __init__(self, name: str, answers: Sequence[Observation], **kw: Any) -> None:
        super().__init__(name, **kw)
        self.answers = list(answers)
        self.polled: List[float] = []
        self.forgotten = 0

    async def observe(self) -> Observation:
        self.polled.append(time.monotonic())
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def forget(self) -> None:
        self.forgotten += 1


class HangingCheck(FakeCheck):
    async def observe(self) -> Observation:
        await asyncio.sleep(3600)
        return OK


class RaisingCheck(FakeCheck):
    async def observe(self) -> Observation:
        raise RuntimeError("boom")


def test_poll_once_enforces_the_deadline_and_catches_errors() -> None:
    hanging = HangingCheck("h")
    hanging.spec.timeout = 0.05
    obs, latency = asyncio.run(poll_once(hanging))
    assert not obs.ok and obs.reason == "timed out after 50ms" and latency < 5
    obs, _ = asyncio.run(poll_once(RaisingCheck("r")))
    assert not obs.ok and obs.reason == "RuntimeError: boom"


def test_an_overrun_progress_poll_is_no_evidence_of_a_stall() -> None:
    # issue 16 #8: the loop ran late, the scheduler's deadline beat the check's own timeout,
    # and the progress check (live) said "timed out" instead of "progress unknown"
    progress = build_checks([{"kind": "progress", "url": "http://127.0.0.1:1/metrics",
                              "timeout": "50ms"}], ["test"])[0]

    async def hang() -> Observation:
        await asyncio.sleep(3600)
        return OK

    progress.observe = hang  # type: ignore[method-assign]
    obs, _ = asyncio.run(poll_once(progress))
    assert obs.ok and obs.reason == "progress unknown: no reading within 50ms"


def test_poll_once_scrubs_secrets_and_control_characters_from_what_a_backend_said() -> None:
    check = build_checks([{"kind": "http", "url": "http://127.0.0.1:1/", "header":
                           "X-Api-Key: sekrit-value"}], ["test"])[0]

    async def echo() -> Observation:
        return Observation(False, "HTTP 401: bad key sekrit-value\r\n\x1b[2J", detail={
            "body": "sekrit-value", "ids": list(range(100))})

    check.observe = echo  # type: ignore[method-assign]
    obs, _ = asyncio.run(poll_once(check))
    assert obs.reason == "HTTP 401: bad key <redacted>\\x0d\\x0a\\x1b[2J"
    assert obs.detail is not None and obs.detail["body"] == "<redacted>"
    assert obs.detail["ids"][-1] == "... 80 more" and len(obs.detail["ids"]) == 21


def run_scheduler(checks: Sequence[FakeCheck], seconds: float,
                  **pod_kw: Any) -> Tuple[Pod, List[Event], str]:
    """Run a scheduler over `checks` for `seconds`; the pod, every event, and the log."""
    out = io.StringIO()
    log = EventLog("text", out)
    pod = Pod(checks, time.monotonic(), time.time(), **pod_kw)
    events: List[Event] = []
    polls: Dict[str, int] = {}

    def on_poll(name: str, latency: float) -> None:
        polls[name] = polls.get(name, 0) + 1

    async def main() -> None:
        scheduler = Scheduler(pod, checks, log, [log_events(log), events.extend], on_poll)
        scheduler.start()
        await asyncio.sleep(seconds)
        await scheduler.stop()

    asyncio.run(main())
    assert set(polls) == {c.name for c in checks}, "every poll is reported to on_poll"
    return pod, events, out.getvalue()


def test_events_reach_every_sink_and_the_log_says_each_once() -> None:
    check = ScriptedCheck("a", [OK], interval=0.05, stale_after=1.0)
    pod, events, log = run_scheduler([check], 0.3)
    assert pod.started
    flips = [e for e in events if isinstance(e, GroupChanged)]
    assert [(e.group, e.ok) for e in flips] == [("ready", True), ("started", True)]
    assert log.count("msg=started") == 1 and log.count('msg="group changed"') == 2


def test_first_polls_are_spread_not_all_at_once() -> None:
    # issue 17 #14: 40 checks polled in lockstep against a small listen backlog
    checks = [ScriptedCheck("c%d" % i, [OK], interval=5.0) for i in range(10)]
    run_scheduler(checks, FIRST_POLL_SPREAD + 0.2)
    firsts = sorted(c.polled[0] for c in checks)
    assert firsts[-1] - firsts[0] >= FIRST_POLL_SPREAD * 0.8
    assert len({round(t, 3) for t in firsts}) == len(firsts)


def test_a_restart_calls_forget_and_wakes_the_pollers() -> None:
    refused = Observation(False, "connection refused", refused=True)
    health = ScriptedCheck("health", [OK, OK, refused, OK], interval=0.05, stale_after=5.0)
    slow = ScriptedCheck("slow", [OK], interval=30.0, probes="live", stale_after=100.0)
    pod, events, log = run_scheduler([slow, health], 0.8)  # slow polls first, then sleeps
    assert any(isinstance(e, Restarted) for e in events)
    assert health.forgotten >= 1 and slow.forgotten >= 1
    assert len(slow.polled) >= 2, "a restart wakes pollers out of their long sleeps"
    assert "level=warn msg=\"backend restarted\"" in log


def test_the_pod_timer_marks_stale_results() -> None:
    once = ScriptedCheck("a", [OK], interval=30.0, stale_after=0.2, start_interval=30.0)
    pod, events, _ = run_scheduler([once], 0.5)
    assert pod.states["a"].stale and not pod.verdicts["ready"].ok
    assert ("ready", False) in [(e.group, e.ok) for e in events if isinstance(e, GroupChanged)]
