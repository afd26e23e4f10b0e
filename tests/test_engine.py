"""Check states and group verdicts: hysteresis, hard evidence, staleness, the started latch,
start-up grace, draining, and the polling loop's hard deadline. Driven with a fake clock."""

import asyncio
import io
from typing import Any, List, Tuple

from fakes import Clock, FakeCheck

from probed.checks.base import Check, Observation
from probed.engine import Engine, poll_once
from probed.eventlog import EventLog


def make_engine(*checks: Check, **kw: Any) -> Tuple[Engine, Clock, io.StringIO]:
    clock = Clock()
    out = io.StringIO()
    engine = Engine(list(checks), EventLog("text", out), clock=clock, wall=clock, **kw)
    return engine, clock, out


OK = Observation(True, "fine")
BAD = Observation(False, "broken")


def test_checks_start_pending_and_nothing_passes_but_live_grace():
    engine, _, _ = make_engine(FakeCheck("a"))
    assert engine.states["a"].state_word() == "pending"
    assert not engine.verdicts["started"].ok and not engine.verdicts["ready"].ok
    assert engine.verdicts["live"].ok  # loading must not be killed
    assert "not started" in engine.verdicts["ready"].reason


def test_first_pass_latches_started_and_later_failures_do_not_unlatch():
    engine, _, log = make_engine(FakeCheck("a"))
    engine.record("a", OK, 0.01)
    assert engine.started and all(v.ok for v in engine.verdicts.values())
    engine.record("a", BAD, 0.01)
    assert engine.verdicts["started"].ok
    assert not engine.verdicts["live"].ok and not engine.verdicts["ready"].ok
    assert engine.verdicts["ready"].reason == "a: broken"
    assert "msg=started" in log.getvalue()


def test_fail_after_and_pass_after_hysteresis():
    engine, _, _ = make_engine(FakeCheck("a", fail_after=3, pass_after=2))
    engine.record("a", OK, 0)
    engine.record("a", OK, 0)
    assert engine.states["a"].passing
    engine.record("a", BAD, 0)
    engine.record("a", BAD, 0)
    assert engine.states["a"].passing, "two failures must not flip fail-after=3"
    engine.record("a", OK, 0)  # the streak is broken
    engine.record("a", BAD, 0)
    engine.record("a", BAD, 0)
    assert engine.states["a"].passing
    engine.record("a", BAD, 0)
    assert not engine.states["a"].passing
    assert engine.states["a"].reason == "broken"
    engine.record("a", OK, 0)
    assert not engine.states["a"].passing, "one pass must not flip pass-after=2"
    engine.record("a", OK, 0)
    assert engine.states["a"].passing


def test_pending_needs_pass_after_passes():
    engine, _, _ = make_engine(FakeCheck("a", pass_after=3))
    engine.record("a", OK, 0)
    engine.record("a", OK, 0)
    assert not engine.started
    engine.record("a", OK, 0)
    assert engine.started


def test_hard_evidence_skips_fail_after():
    engine, _, _ = make_engine(FakeCheck("a", fail_after=3))
    engine.record("a", OK, 0)
    engine.record("a", Observation(False, "engine dead", hard=True), 0)
    assert not engine.states["a"].passing
    assert engine.verdicts["live"].reason == "a: engine dead"


def test_stale_result_fails_and_a_fresh_one_recovers():
    engine, clock, log = make_engine(FakeCheck("a", stale_after=31.0))
    engine.record("a", OK, 0)
    generation = engine.states["a"].generation
    clock.now += 31
    engine.expire("a", generation)
    st = engine.states["a"]
    assert not st.passing and st.shown_reason.startswith("stale")
    assert not engine.verdicts["ready"].ok and "stale" in engine.verdicts["ready"].reason
    assert "to=fail" in log.getvalue()
    engine.record("a", OK, 0)
    assert engine.verdicts["ready"].ok


def test_expiry_of_an_old_generation_is_ignored():
    engine, _, _ = make_engine(FakeCheck("a"))
    engine.record("a", OK, 0)
    old = engine.states["a"].generation
    engine.record("a", OK, 0)
    engine.expire("a", old)
    assert engine.states["a"].passing


def test_startup_timeout_fails_live_only_when_never_started():
    engine, clock, _ = make_engine(FakeCheck("a"), startup_timeout=60.0)
    clock.now += 59
    engine._refresh()
    assert engine.verdicts["live"].ok
    clock.now += 2
    engine._refresh()
    assert not engine.verdicts["live"].ok
    assert engine.verdicts["live"].reason.startswith("not started within 1m")
    engine.record("a", OK, 0)
    assert engine.verdicts["live"].ok


def test_draining_fails_ready_but_not_live():
    engine, _, _ = make_engine(FakeCheck("a"))
    engine.record("a", OK, 0)
    engine.set_draining("shutting down")
    assert not engine.verdicts["ready"].ok and engine.verdicts["ready"].reason == "shutting down"
    assert engine.verdicts["live"].ok and engine.verdicts["started"].ok
    engine.set_draining("")
    assert engine.verdicts["ready"].ok


def test_groups_only_count_their_members():
    engine, _, _ = make_engine(FakeCheck("boot", probes="started"),
                               FakeCheck("queue", probes="ready"),
                               FakeCheck("alive", probes="live"))
    engine.record("boot", OK, 0)
    engine.record("alive", OK, 0)
    engine.record("queue", BAD, 0)
    assert engine.verdicts["live"].ok and engine.verdicts["started"].ok
    assert not engine.verdicts["ready"].ok
    engine.record("boot", BAD, 0)  # latched: no effect on started
    assert engine.verdicts["started"].ok and engine.verdicts["live"].ok


def test_exclude_and_overrides_rejudge_the_cached_observation():
    engine, _, _ = make_engine(FakeCheck("q", limit=10.0), FakeCheck("b"))
    engine.record("q", Observation(True, "", value=7.0), 0)
    engine.record("b", OK, 0)
    engine.record("b", BAD, 0)
    assert engine.started and not engine.evaluate("ready").ok
    assert engine.evaluate("ready", exclude=["b"]).ok
    tight = engine.evaluate("ready", exclude=["b"], overrides={"q": {"limit": 5.0}})
    assert not tight.ok and tight.reason == "q: value 7 over 5"
    assert engine.verdicts["ready"].reason == "b: broken", "overrides must not touch the cache"


def test_listeners_hear_group_changes_and_version_bumps():
    engine, _, _ = make_engine(FakeCheck("a", probes="ready"))
    heard: List[Tuple[str, bool]] = []
    engine.listeners.append(lambda g, ok: heard.append((g, ok)))
    v0 = engine.version
    engine.record("a", OK, 0)
    assert ("ready", True) in heard and engine.version > v0
    engine.record("a", BAD, 0)
    assert heard[-1] == ("ready", False)


def test_transition_log_has_one_line_per_change():
    engine, clock, log = make_engine(FakeCheck("a"))
    engine.record("a", BAD, 0)
    engine.record("a", BAD, 0)
    clock.now += 12.5
    engine.record("a", OK, 0)
    lines = [l for l in log.getvalue().splitlines() if 'msg="check changed"' in l]
    assert len(lines) == 2
    assert "from=pending to=fail reason=broken consecutive=1" in lines[0]
    assert "from=fail to=pass reason=fine consecutive=1 after=12.5s" in lines[1]


def test_fast_start_interval_until_ready_once():
    engine, _, _ = make_engine(FakeCheck("a", interval=10.0, probes="started"),
                               FakeCheck("r", probes="ready"), FakeCheck("l", probes="live"),
                               start_interval=0.5)
    assert engine.next_delay(engine.states["a"]) == 0.5
    assert engine.next_delay(engine.states["r"]) == 0.5
    assert 9.0 <= engine.next_delay(engine.states["l"]) <= 11.0, "live checks keep their pace"
    engine.record("a", OK, 0)
    assert engine.started and engine.next_delay(engine.states["r"]) == 0.5
    engine.record("r", OK, 0)
    assert engine.verdicts["ready"].ok
    assert 9.0 <= engine.next_delay(engine.states["a"]) <= 11.0
    assert 9.0 <= engine.next_delay(engine.states["r"]) <= 11.0
    engine.record("r", BAD, 0)
    assert 9.0 <= engine.next_delay(engine.states["r"]) <= 11.0, "only until ready once"


class HangingCheck(FakeCheck):
    async def observe(self) -> Observation:
        await asyncio.sleep(3600)
        return OK


class RaisingCheck(FakeCheck):
    async def observe(self) -> Observation:
        raise RuntimeError("boom")


def test_poll_once_enforces_the_deadline_and_catches_errors():
    hanging = HangingCheck("h")
    hanging.spec.timeout = 0.05
    obs, latency = asyncio.run(poll_once(hanging))
    assert not obs.ok and obs.reason == "timed out after 50ms" and latency < 5
    obs, _ = asyncio.run(poll_once(RaisingCheck("r")))
    assert not obs.ok and obs.reason == "RuntimeError: boom"
