"""The pod's lifecycle rules as tables: inputs in, events and verdicts out. No sockets, no loop.

Every test drives a `Pod` with explicit times. `Run` keeps a clock and turns each call's events
into short words ("ready fail", "restarted: a refused connections after passing") so a table
row reads like the incident it describes.
"""

from typing import Any, List, Optional, Sequence, Tuple

import pytest
from fakes import FakeCheck

from probed.checks.base import Check, Observation
from probed.pod import GROUP_RULES, STUCK_FACTOR, Pod
from probed.podevents import (CheckChanged, DrainChanged, Event, GroupChanged, IncarnationSeen,
                              Restarted, Started, Unlatched, log_line)

OK = Observation(True, "fine")
BAD = Observation(False, "broken")
REFUSED = Observation(False, "connection refused", refused=True)
LOADING = Observation(False, "HTTP 503: Loading model", loading=True)


def words(events: Sequence[Event]) -> List[str]:
    """Events as short words, in order."""
    out = []
    for e in events:
        if isinstance(e, CheckChanged):
            out.append("%s %s->%s" % (e.check, e.before, e.after))
        elif isinstance(e, GroupChanged):
            out.append("%s %s" % (e.group, "pass" if e.ok else "fail"))
        elif isinstance(e, Started):
            out.append("started")
        elif isinstance(e, Restarted):
            out.append("restarted: " + e.why)
        elif isinstance(e, IncarnationSeen):
            out.append("incarnation %s" % e.value)
        elif isinstance(e, Unlatched):
            out.append("unlatched")
        elif isinstance(e, DrainChanged):
            out.append("drain %s %s" % (e.source, "on" if e.on else "off"))
    return out


class Run:
    """A pod and its clock; `at` moves time, the other methods feed inputs and return words."""

    def __init__(self, *checks: Check, **kw: Any) -> None:
        self.now = 1000.0
        self.pod = Pod(list(checks), self.now, self.now, **kw)

    def at(self, seconds: float) -> "Run":
        self.now += seconds
        return self

    def observe(self, name: str, obs: Observation, began: Optional[float] = None) -> List[str]:
        polled_at = self.now if began is None else began
        return words(self.pod.observe(name, obs, 0.001, polled_at, self.now, self.now))

    def tick(self) -> List[str]:
        return words(self.pod.tick(self.now, self.now))

    def drain(self, source: str) -> List[str]:
        return words(self.pod.drain(source, self.now, self.now))

    def undrain(self, source: str) -> List[str]:
        return words(self.pod.undrain(source, self.now, self.now))

    def codes(self) -> Tuple[int, int, int]:
        """(livez, readyz, startupz) as the kubelet would see them."""
        v = self.pod.verdicts
        return tuple(200 if v[g].ok else 503 for g in ("live", "ready", "started"))  # type: ignore

    def reason(self, group: str) -> str:
        return self.pod.verdicts[group].reason


# --- the group rules, one row per (group, check state, started?) --------------------------------

STATES = {
    "pending": [],
    "passing": [OK],
    "failing": [OK, BAD],
    "stale pass": [OK, "stale"],
    "stale fail": [OK, BAD, "stale"],
}


@pytest.mark.parametrize("group,state,ok", [
    # before start: live has its grace, ready waits, started names the phase
    ("live", "pending", True), ("live", "failing", True),
    ("ready", "pending", False), ("started", "pending", False),
])
def test_rules_before_start(group: str, state: str, ok: bool) -> None:
    run = Run(FakeCheck("boot", probes="started"), FakeCheck("x", probes=group))
    for obs in STATES[state]:
        assert obs != "stale"
        run.observe("x", obs)  # type: ignore[arg-type]
    assert not run.pod.started
    assert run.pod.verdicts[group].ok is ok


@pytest.mark.parametrize("group,state,ok", [
    ("live", "pending", True), ("live", "passing", True), ("live", "failing", False),
    ("live", "stale pass", True), ("live", "stale fail", False),  # stale keeps the last word
    ("ready", "pending", False), ("ready", "passing", True), ("ready", "failing", False),
    ("ready", "stale pass", False), ("ready", "stale fail", False),  # a stuck poller never
    # leaves a pass standing for ready
    ("started", "failing", True), ("started", "stale fail", True),  # latched
])
def test_rules_after_start(group: str, state: str, ok: bool) -> None:
    run = Run(FakeCheck("boot", probes="started"), FakeCheck("x", probes=group, stale_after=30))
    run.observe("boot", OK)
    for obs in STATES[state]:
        if obs == "stale":
            run.at(31).tick()
        else:
            run.observe("x", obs)  # type: ignore[arg-type]
    assert run.pod.started  # boot alone, or boot and x's first pass for `started`
    assert run.pod.verdicts[group].ok is ok


def test_the_rule_table_says_what_the_tests_above_check() -> None:
    assert GROUP_RULES["live"].pending_passes and GROUP_RULES["live"].stale_keeps_last
    assert GROUP_RULES["ready"].includes == ("live",) and GROUP_RULES["ready"].drains
    assert GROUP_RULES["started"].latches and GROUP_RULES["started"].before_start == "phase"


# --- the rules issue 15's mutants broke: each fails here, fast ------------------------------------

def test_a_stale_check_plus_one_fresh_failure_stays_failed() -> None:
    run = Run(FakeCheck("a", fail_after=3, stale_after=30))
    run.observe("a", OK)
    assert run.at(31).tick() == ["a pass->fail", "ready fail"]
    # The pass does not come back for ready (issue 15's mutant); for live the failure is one
    # piece of fresh evidence, counted toward fail-after=3 (issue 16 #9: probed's own lateness
    # then one slow answer is no reason to restart the server).
    assert run.at(1).observe("a", BAD) == []
    assert not run.pod.states["a"].passing and run.codes() == (200, 503, 200)
    assert run.reason("ready") == "a: broken"
    run.observe("a", BAD)
    assert run.observe("a", BAD) == ["live fail"]  # the third: evidence enough
    assert run.codes() == (503, 503, 200)


def test_a_fresh_pass_after_staleness_confirms_the_pass() -> None:
    run = Run(FakeCheck("a", fail_after=3, stale_after=30))
    run.observe("a", OK)
    run.at(31).tick()
    run.at(1).observe("a", BAD)
    assert run.at(1).observe("a", OK) == ["a fail->pass", "ready pass"]
    assert run.codes() == (200, 200, 200)


def test_a_refusal_is_no_restart_when_the_check_never_passed_this_incarnation() -> None:
    run = Run(FakeCheck("boot", probes="started"), FakeCheck("h", probes="live,started"))
    run.observe("boot", OK)
    run.observe("h", OK)
    assert run.pod.started
    assert run.observe("h", REFUSED)[0] == "restarted: h refused connections after passing"
    # h has not passed in this new incarnation: its refusals are loading, not restarts
    assert not any(w.startswith("restarted") for w in run.at(1).observe("h", REFUSED))
    assert run.pod.phase == "loading"


def test_started_only_checks_sleep_after_start_and_wake_on_a_restart() -> None:
    run = Run(FakeCheck("boot", probes="started"), FakeCheck("h", probes="live,started"))
    assert run.pod.poll_delay("boot", 0.0) == 0.5
    run.observe("boot", OK)
    run.observe("h", OK)
    assert run.pod.dormant("boot") and run.pod.poll_delay("boot", 0.0) is None
    assert not run.pod.dormant("h")
    run.observe("h", REFUSED)
    assert not run.pod.dormant("boot") and run.pod.poll_delay("boot", 0.0) == 0.5


# --- start-up -------------------------------------------------------------------------------------

def test_first_pass_latches_started_and_failures_later_do_not_unlatch() -> None:
    run = Run(FakeCheck("a"))
    assert run.codes() == (200, 503, 503) and run.reason("ready") == "not started: a: no result yet"
    assert run.observe("a", OK) == ["a pending->pass", "started", "ready pass", "started pass"]
    assert run.observe("a", BAD) == ["a pass->fail", "live fail", "ready fail"]
    assert run.codes() == (503, 503, 200)


def test_phases_while_loading_and_the_phase_seconds_in_the_reason() -> None:
    run = Run(FakeCheck("h", probes="started"), FakeCheck("inf", probes="started"))
    run.observe("h", REFUSED)
    assert run.pod.phase == "loading"
    run.at(40).observe("h", REFUSED)
    assert run.pod.verdict("started", run.now).reason == \
        "h: loading for 40s (connection refused)"
    run.observe("h", LOADING)
    assert run.pod.phase == "starting"
    run.observe("h", OK)
    assert run.pod.phase == "starting" and not run.pod.started
    run.observe("inf", OK)
    assert run.pod.phase == "started"


def test_startup_timeout_fails_live_only_while_never_started() -> None:
    run = Run(FakeCheck("a"), startup_timeout=60.0)
    assert run.pod.next_deadline() == 1060.0
    assert run.at(59).tick() == []
    assert run.at(2).tick() == ["live fail"]
    assert run.reason("live").startswith("not started within 1m")
    assert "live pass" in run.observe("a", OK)


def test_pass_after_counts_from_pending_and_hysteresis_both_ways() -> None:
    run = Run(FakeCheck("a", fail_after=3, pass_after=2))
    run.observe("a", OK)
    assert not run.pod.started
    run.observe("a", OK)
    assert run.pod.started
    run.observe("a", BAD)
    run.observe("a", BAD)
    assert run.pod.states["a"].passing, "two failures must not flip fail-after=3"
    run.observe("a", BAD)
    assert not run.pod.states["a"].passing
    run.observe("a", OK)
    assert not run.pod.states["a"].passing, "one pass must not flip pass-after=2"


def test_hard_evidence_skips_fail_after() -> None:
    run = Run(FakeCheck("a", fail_after=3))
    run.observe("a", OK)
    run.observe("a", Observation(False, "engine dead", hard=True))
    assert run.codes() == (503, 503, 200) and run.reason("live") == "a: engine dead"


# --- restarts (issue 16's mismatches on the real servers) -----------------------------------------

def two_check_pod() -> Run:
    run = Run(FakeCheck("health", probes="live,ready,started"),
              FakeCheck("process", probes=""))
    run.observe("process", Observation(True, "", incarnation=1.7e9))
    run.observe("health", OK)
    assert run.pod.started
    return run


def test_a_new_start_time_is_a_restart_even_without_a_refusal() -> None:
    run = two_check_pod()
    said = run.at(5).observe("process", Observation(True, "", incarnation=1.7e9 + 60))
    assert said[:2] == ["restarted: process start time changed from 2023-11-14T22:13:20.000Z "
                        "to 2023-11-14T22:14:20.000Z", "unlatched"]
    assert run.codes() == (200, 503, 503)  # the startup probe runs again; live has its grace


def test_a_refusal_restart_learns_the_new_start_time_without_a_second_restart() -> None:
    # issue 16 #11: "backend restarted new_start=unknown" and nothing after it
    run = two_check_pod()
    said = run.at(1).observe("health", REFUSED)
    assert said[0] == "restarted: health refused connections after passing"
    event = run.pod.observe("process", Observation(True, "", incarnation=1.7e9 + 90), 0,
                            run.now, run.now, run.now)
    assert words(event) == ["incarnation 1700000090.0", "process pending->pass"]
    assert "restarted" not in " ".join(words(event))


def test_a_refusal_from_a_poll_that_began_before_the_check_passed_is_no_restart() -> None:
    # issue 16 #10: a refused result from the loading phase, delivered after the first start
    run = Run(FakeCheck("health", probes="live,ready,started"))
    began = run.now
    run.at(2).observe("health", OK)
    assert run.pod.started
    assert not any(w.startswith("restarted") for w in run.at(1).observe("health", REFUSED,
                                                                        began=began))


def test_a_pass_that_never_reached_the_server_is_no_evidence_it_served() -> None:
    # CI, llama-server killed: "progress unknown: connection refused" passes while the port is
    # closed; once the new process started, a refusal read from a scrape of the dead time
    # restarted the pod a second time.
    unknown = Observation(True, "progress unknown: connection refused", refused=True)
    run = Run(FakeCheck("health", probes="live,ready,started"),
              FakeCheck("progress", probes="live,ready"))
    run.observe("health", OK)
    run.observe("progress", OK)
    assert run.at(1).observe("progress", unknown)[0] == \
        "restarted: progress refused connections after passing"
    run.at(1).observe("progress", unknown)
    run.observe("health", REFUSED)
    run.at(3).observe("health", OK)
    assert run.pod.started
    assert not any(w.startswith("restarted") for w in run.at(1).observe("progress", unknown))
    assert run.pod.started
    run.observe("progress", OK)  # now it has seen the server: its next refusal is a restart
    assert run.at(1).observe("progress", unknown)[0] == \
        "restarted: progress refused connections after passing"


def test_a_server_that_says_loading_after_it_served_is_a_new_incarnation() -> None:
    # issue 16 #2: llama-server restarted in 0.2 s; no poll saw the port closed
    run = Run(FakeCheck("health", probes="live,ready,started", fail_after=3))
    run.observe("health", OK)
    said = run.at(5).observe("health", LOADING)
    assert said[:2] == ["restarted: health says the server is loading after it had served",
                        "unlatched"]
    assert run.codes() == (200, 503, 503), "a reload must never fail liveness"
    assert run.pod.phase == "starting"


def test_results_of_polls_that_began_before_a_restart_are_dropped() -> None:
    run = two_check_pod()
    began = run.now
    run.at(1).observe("health", REFUSED)
    assert run.at(1).observe("health", OK, began=began) == []  # the old process's last word
    assert not run.pod.started


def test_a_counter_reset_restarts_only_without_a_start_time_witness() -> None:
    reset = Observation(True, "", restart="tokens went back from 10 to 0")
    run = two_check_pod()
    assert not any(w.startswith("restarted") for w in run.observe("health", reset))
    plain = Run(FakeCheck("health", probes="live,ready,started"))
    plain.observe("health", OK)
    assert plain.observe("health", reset)[0] == "restarted: tokens went back from 10 to 0"


def test_a_ready_only_check_refused_says_nothing_about_this_backend() -> None:
    run = Run(FakeCheck("health"), FakeCheck("relay", probes="ready"))
    run.observe("health", OK)
    run.observe("relay", OK)
    assert not any(w.startswith("restarted") for w in run.observe("relay", REFUSED))


# --- ready needs live; live needs evidence --------------------------------------------------------

def test_a_stall_fails_ready_at_once_not_only_live() -> None:
    # issue 16 #7: a hung engine kept /readyz 200 until the kubelet's restart
    run = Run(FakeCheck("health"), FakeCheck("progress", probes="live"))
    run.observe("health", OK)
    run.observe("progress", OK)
    assert run.codes() == (200, 200, 200)
    said = run.observe("progress", Observation(False, "stalled: 4 running, tokens flat for 2m"))
    assert said == ["progress pass->fail", "live fail", "ready fail"]
    assert run.reason("ready") == "progress: stalled: 4 running, tokens flat for 2m"
    assert [st.check.name for st, _, _ in run.pod.verdicts["ready"].checks] == [
        "health", "progress"]


def test_a_late_poller_fails_ready_but_never_live_and_probed_owns_up() -> None:
    # issue 16 #9: probed got no CPU for seconds; vLLM was only busy
    run = Run(FakeCheck("health", stale_after=4.0), FakeCheck("progress", probes="live",
                                                              stale_after=4.0))
    run.observe("health", OK)
    run.observe("progress", OK)
    assert run.at(4.5).tick() == ["health pass->fail", "progress pass->fail", "ready fail"]
    assert run.codes() == (200, 503, 200)
    assert run.pod.self_check(run.now) == (True, "ok")
    run.at(STUCK_FACTOR * 4.0)
    ok, reason = run.pod.self_check(run.now)
    assert (ok, reason) == (False, "poller of health stuck: no result for 12s (limit 8s)")


# --- drains are a set -----------------------------------------------------------------------------

def started_pod() -> Run:
    run = Run(FakeCheck("health"), FakeCheck("process", probes=""))
    run.observe("process", Observation(True, "", incarnation=1.7e9))
    run.observe("health", OK)
    return run


def test_an_admin_drain_during_a_prestop_wait_is_recorded_and_survives_the_restart() -> None:
    # issue 15 item 2: the admin's POST /drain answered 200 and recorded nothing
    run = started_pod()
    assert run.drain("prestop") == ["drain prestop on", "ready fail"]
    assert run.drain("admin") == ["drain admin on"]
    assert run.reason("ready") == "draining + draining (admin)"
    said = run.observe("process", Observation(True, "", incarnation=1.7e9 + 30))
    assert "drain prestop off" in said and "drain admin off" not in said
    run.observe("health", OK)
    assert run.pod.active_drains() == ("admin",) and run.codes()[1] == 503
    assert run.undrain("admin") == ["drain admin off", "ready pass"]


def test_shutdown_comes_first_in_the_reason_and_drains_do_not_touch_live() -> None:
    run = started_pod()
    run.drain("admin")
    run.drain("shutdown")
    assert run.reason("ready") == "shutting down + draining (admin)"
    assert run.codes() == (200, 503, 200)
    assert run.undrain("prestop") == []  # not active: nothing happens


# --- polling pace ---------------------------------------------------------------------------------

def test_fast_start_interval_until_ready_once_with_jitter() -> None:
    run = Run(FakeCheck("a", interval=10.0, probes="started"), FakeCheck("r", probes="ready"),
              FakeCheck("l", probes="live"), start_interval=0.5)
    assert run.pod.poll_delay("a", 1.0) == pytest.approx(0.55)  # jittered too (issue 17 #14)
    assert run.pod.poll_delay("r", -1.0) == pytest.approx(0.45)
    assert run.pod.poll_delay("l", 0.0) == 10.0, "live checks keep their pace"
    run.observe("a", OK)
    assert run.pod.poll_delay("r", 0.0) == 0.5
    run.observe("r", OK)
    assert run.pod.verdicts["ready"].ok and run.pod.poll_delay("r", 0.0) == 10.0
    run.observe("r", BAD)
    assert run.pod.poll_delay("r", 0.0) == 10.0, "only until ready once"


# --- queries --------------------------------------------------------------------------------------

def test_exclude_and_overrides_rejudge_without_touching_the_cache() -> None:
    run = Run(FakeCheck("q", limit=10.0), FakeCheck("b"))
    run.observe("q", Observation(True, "", value=7.0))
    run.observe("b", OK)
    run.observe("b", BAD)
    assert run.pod.verdict("ready", run.now, exclude=["b"]).ok
    tight = run.pod.verdict("ready", run.now, ["b"], {"q": {"limit": 5.0}})
    assert not tight.ok and tight.reason == "q: value 7 over 5"
    assert run.reason("ready") == "b: broken"


def test_version_bumps_on_every_verdict_or_reason_change() -> None:
    run = Run(FakeCheck("a"))
    v0 = run.pod.version
    run.observe("a", OK)
    v1 = run.pod.version
    assert v1 > v0
    run.observe("a", OK)
    assert run.pod.version == v1
    run.observe("a", Observation(False, "other"))
    assert run.pod.version > v1


def test_a_group_turning_to_fail_is_logged_at_warn() -> None:
    # issue 14: level>=warn must find what took a pod out
    assert log_line(GroupChanged("live", False, "x: y"))[0] == "warn"  # type: ignore[index]
    assert log_line(GroupChanged("live", True, "ok"))[0] == "info"  # type: ignore[index]
    assert log_line(Restarted("why", 1.0, None))[2]["new_start"] == "unknown"  # type: ignore
