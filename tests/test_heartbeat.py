"""Check kind `heartbeat`: file beats (controlled mtimes), push beats, X-of-Y edges, overrides.

File beats are real files in a temporary directory whose mtimes the tests set with os.utime, so
"silent for 200 s" needs no waiting. Push beats go through a `HeartbeatRegistry` on a settable
clock. Overrides go through the real Router against a Pod holding the cached observation,
exactly as `/livez?workers.min-fresh=3&workers.window=30s` reaches them. The README's worker
example is run as written, against an empty queue, to prove an idle worker stays fresh.
"""

import asyncio
import contextlib
import errno
import io
import json
import os
import queue
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from fakes import Clock, PodDriver

from probed.checks.base import Check, Observation
from probed.beatregistry import (HEARTBEAT_MAX_WORKERS, HeartbeatRegistry, HeartbeatRegistryFull,
                                 parse_beat_name)
from probed.checks.base import CheckResources
from probed.checks.heartbeat import HEARTBEAT_REASON_NAMES, HeartbeatCheck, scan_beat_files
from probed.checkspecs import build_checks
from probed.scheduler import poll_once
from probed.eventlog import EventLog
from probed.httpproto import http_date, parse_request
from probed.router import Router
from probed.values import ConfigError

REPO = Path(__file__).resolve().parents[1]


def make_check(registry: Optional[HeartbeatRegistry] = None, **keys: Any) -> HeartbeatCheck:
    """A heartbeat check from raw key=value strings, as `--check` builds it."""
    raw: Dict[str, Any] = {"kind": "heartbeat", "name": "workers"}
    raw.update({k.replace("_", "-"): v for k, v in keys.items()})
    check = build_checks([raw], ["test"], CheckResources(beats=registry))[0]
    assert isinstance(check, HeartbeatCheck)
    return check


def observe(check: Check) -> Observation:
    """One poll the way the engine runs it (under the check's deadline)."""
    async def run() -> Observation:
        obs, _ = await asyncio.wait_for(poll_once(check), 10)
        return obs

    return asyncio.run(run())


def verdict(check: Check, obs: Observation, **overrides: str) -> Tuple[bool, str]:
    """judge() under the check's config plus parsed overrides (as ?workers.KEY=VALUE does)."""
    config = dict(check.config)
    for key, text in overrides.items():
        config[key.replace("_", "-")] = check.parse_override(key.replace("_", "-"), text)
    return check.judge(obs, config, False)


def beat_files(directory: Path, ages: Dict[str, float]) -> None:
    """Create one beat file per worker with its mtime `age` seconds ago."""
    now = time.time()
    for name, age in ages.items():
        path = directory / name
        path.touch()
        os.utime(str(path), (now - age, now - age))


# --- file beats with controlled mtimes -----------------------------------------------------------

def test_directory_of_beat_files_counts_fresh_and_names_the_silent(tmp_path: Path) -> None:
    beat_files(tmp_path, {"w0": 5, "w1": 10, "w2": 100, "w3": 200})
    check = make_check(path=str(tmp_path), expect="4", window="60s", min_fresh="2")
    obs = observe(check)
    assert obs.value == 2.0
    assert verdict(check, obs) == (True, "2 of 4 workers beat within 1m (need 2)")
    ok, reason = verdict(check, obs, min_fresh="3")
    assert not ok
    assert reason.startswith("2 of 4 workers beat within 1m (need 3): silent: w3 ")
    # silent ones first, oldest first, each with its age; then the fresh ones
    assert re.search(r"silent: w3 3m2[01]s, w2 1m4[01]s; fresh: w0 5(\.\d)?s, "
                     r"w1 1[01]s$", reason), reason


def test_json_detail_lists_every_worker_with_its_age(tmp_path: Path) -> None:
    beat_files(tmp_path, {"a": 3, "b": 300})
    obs = observe(make_check(path=str(tmp_path)))
    workers = obs.detail["workers"]
    assert [w["name"] for w in workers] == ["a", "b"]
    assert 2.5 < workers[0]["age_seconds"] < 10
    assert 299 < workers[1]["age_seconds"] < 310
    assert obs.detail["source"] == "files"


def test_touching_a_file_is_a_beat(tmp_path: Path) -> None:
    beat_files(tmp_path, {"w0": 500})
    check = make_check(path=str(tmp_path), window="30s")
    assert not verdict(check, observe(check))[0]
    (tmp_path / "w0").touch()  # what `touch /beats/w0` does in a shell worker
    assert verdict(check, observe(check)) == (True, "1 of 1 workers beat within 30s (none silent)")


def test_glob_names_are_relative_to_its_fixed_part(tmp_path: Path) -> None:
    for pod in ("pod-a", "pod-b"):
        (tmp_path / pod).mkdir()
    beat_files(tmp_path / "pod-a", {"alive": 1})
    beat_files(tmp_path / "pod-b", {"alive": 120, "other": 1})
    check = make_check(path=str(tmp_path / "*" / "alive"), window="60s")
    obs = observe(check)
    assert [w[0] for w in obs.raw] == ["pod-a/alive", "pod-b/alive"]
    ok, reason = verdict(check, obs)
    assert not ok and "silent: pod-b/alive 2m" in reason


def test_dotfiles_directories_and_match_are_left_out(tmp_path: Path) -> None:
    beat_files(tmp_path, {"enc-0": 1, "enc-1": 1, "dec-0": 1, ".enc-2.tmp": 900})
    (tmp_path / "enc-subdir").mkdir()
    obs = observe(make_check(path=str(tmp_path), match="enc-*"))
    assert [w[0] for w in obs.raw] == ["enc-0", "enc-1"]


def test_a_single_file_is_a_pool_of_one(tmp_path: Path) -> None:
    beat_files(tmp_path, {"alive": 2})
    check = make_check(path=str(tmp_path / "alive"))
    assert verdict(check, observe(check)) == (True, "1 of 1 workers beat within 1m (none silent)")


def test_a_missing_path_fails_and_says_so(tmp_path: Path) -> None:
    check = make_check(path=str(tmp_path / "not-mounted"))
    obs = observe(check)
    ok, reason = verdict(check, obs)
    assert not ok and reason == "%s: no such file or directory" % (tmp_path / "not-mounted")


def test_too_many_files_is_an_error_not_a_memory_hog(tmp_path: Path) -> None:
    for i in range(HEARTBEAT_MAX_WORKERS + 1):
        (tmp_path / ("w%05d" % i)).touch()
    with pytest.raises(OSError, match="more than %d files" % HEARTBEAT_MAX_WORKERS):
        scan_beat_files(str(tmp_path))


def test_an_unreadable_entry_is_skipped_and_named_not_fatal_to_the_pool(tmp_path: Path) -> None:
    beat_files(tmp_path, {"w0": 1, "w1": 2})
    os.symlink("w2", str(tmp_path / "w2"))  # a symlink loop: stat() fails with ELOOP
    os.symlink("w3b", str(tmp_path / "w3a"))
    os.symlink("w3a", str(tmp_path / "w3b"))
    check = make_check(path=str(tmp_path))
    obs = observe(check)
    assert [w[0] for w in obs.raw] == ["w0", "w1"]  # the verdict comes from the readable ones
    loop = os.strerror(errno.ELOOP)  # "Too many levels of symbolic links"
    assert obs.detail["unreadable"] == [{"name": n, "error": loop} for n in ("w2", "w3a", "w3b")]
    assert verdict(check, obs) == (True, "2 of 2 workers beat within 1m (none silent); unreadable, skipped: "
                                         "w2 (%s), w3a (%s), w3b (%s)" % (loop, loop, loop))
    # With `expect`, a worker that cannot be read counts as missing.
    ok, reason = verdict(check, obs, expect="3")
    assert not ok and reason.startswith("2 of 3 workers beat within 1m (1 silent, at most 0 ")
    assert reason.endswith("; unreadable, skipped: w2 (%s), w3a (%s), w3b (%s)"
                           % (loop, loop, loop)), reason


def test_unreadable_entries_are_listed_up_to_the_reason_cap(tmp_path: Path) -> None:
    beat_files(tmp_path, {"w0": 1})
    for i in range(HEARTBEAT_REASON_NAMES + 3):
        os.symlink("x%02d" % i, str(tmp_path / ("x%02d" % i)))
    check = make_check(path=str(tmp_path))
    _, reason = verdict(check, observe(check))
    assert reason.endswith(", +3 more") and reason.count("(Too many levels") == (
        HEARTBEAT_REASON_NAMES), reason


def test_an_mtime_far_in_the_future_is_not_fresh_forever(tmp_path: Path) -> None:
    beat_files(tmp_path, {"w0": -3600})
    check = make_check(path=str(tmp_path))
    ok, reason = verdict(check, observe(check))
    assert not ok and "silent: w0 60m in the future" in reason


# --- X of Y edges --------------------------------------------------------------------------------

EDGES = [
    # (ages, keys, passes, words in the reason)
    ({"a": 1, "b": 1, "c": 1, "d": 99}, {"expect": "4", "min_fresh": "3"}, True,
     "3 of 4 workers beat within 1m"),  # exactly X fresh
    ({"a": 1, "b": 1, "c": 99, "d": 99}, {"expect": "4", "min_fresh": "3"}, False,
     "(need 3)"),  # X - 1
    ({"a": 1, "b": 1, "c": 1, "d": 99}, {"expect": "4", "max_silent": "1"}, True,
     "3 of 4"),  # exactly the silent allowed
    ({"a": 1, "b": 1, "c": 99, "d": 99}, {"expect": "4", "max_silent": "1"}, False,
     "2 silent, at most 1 allowed"),  # one silent too many
    ({"a": 1, "b": 1, "c": 1}, {"expect": "4", "max_silent": "0"}, False,
     "missing: 1 never beat"),  # a worker that never beat counts as silent
    ({"a": 1, "b": 1, "c": 1}, {"expect": "4", "max_silent": "1"}, True, "3 of 4"),
    ({"a": 1, "b": 1}, {"expect": "4", "min_fresh": "2"}, True, "2 of 4"),
    ({"a": 1, "b": 1, "gone": 5000}, {"expect": "2"}, True,
     "2 of 2"),  # leftovers beyond Y do not count against the pool
    ({"a": 1, "b": 99}, {}, False, "1 silent, at most 0 allowed"),  # default: everyone beats
    ({"a": 1, "b": 2}, {}, True, "2 of 2"),
    ({}, {}, False, "(need 1): no worker has beaten yet"),  # nobody: never a pass
    ({"a": 99}, {"max_silent": "1"}, False, "(need 1)"),  # max-silent alone still needs one
    ({}, {"min_fresh": "0"}, True, "0 of 0"),  # explicit opt-out
    ({"a": 1, "b": 1, "c": 1}, {"expect": "2"}, True,
     "3 workers beat within 1m (2 expected)"),  # more than Y is never "3 of 2"
]


@pytest.mark.parametrize("ages,keys,passes,words", EDGES)
def test_x_of_y_edges(tmp_path: Path, ages: Dict[str, float], keys: Dict[str, str],
                      passes: bool, words: str) -> None:
    beat_files(tmp_path, ages)
    check = make_check(path=str(tmp_path), window="60s", **keys)
    ok, reason = verdict(check, observe(check))
    assert ok is passes, reason
    assert words in reason


def test_window_edge_is_inclusive(tmp_path: Path) -> None:
    check = make_check(path=str(tmp_path), window="60s")
    obs = Observation(True, raw=(("a", 60.0), ("b", 60.001)))
    ok, reason = check.judge(obs, check.config, False)
    assert not ok and "1 of 2" in reason and "silent: b 1m" in reason


# --- push beats ----------------------------------------------------------------------------------

def push_check(registry: HeartbeatRegistry, **keys: Any) -> HeartbeatCheck:
    check = make_check(registry, **keys)
    assert check.pushed
    return check


def test_push_beats_age_on_the_registry_clock() -> None:
    clock = Clock()
    registry = HeartbeatRegistry(clock=clock)
    check = push_check(registry, expect="3", min_fresh="2", window="30s")
    registry.beat("w1")
    registry.beat("w2")
    clock.now += 20
    registry.beat("w3")
    assert verdict(check, observe(check)) == (True, "3 of 3 workers beat within 30s (need 2)")
    clock.now += 15  # w1 and w2 now 35 s old, w3 15 s
    ok, reason = verdict(check, observe(check))
    assert not ok
    assert reason == "1 of 3 workers beat within 30s (need 2): silent: w1 35s, w2 35s; " \
                     "fresh: w3 15s"
    registry.beat("w1")
    assert verdict(check, observe(check))[0]
    assert observe(check).detail["source"] == "push"


def test_push_match_splits_one_registry_into_pools() -> None:
    registry = HeartbeatRegistry()
    for name in ("enc-0", "enc-1", "dec-0"):
        registry.beat(name)
    encoders = push_check(registry, match="enc-*", expect="2")
    decoders = push_check(registry, match="dec-*", expect="2")
    assert verdict(encoders, observe(encoders))[0]
    ok, reason = verdict(decoders, observe(decoders))
    assert not ok and "missing: 1 never beat" in reason


@pytest.mark.parametrize("name", ["", ".", "..", "../etc", "a/b", ".hidden", "-x", "a b",
                                  "a%2Fb", "é", "a\x00b", "x" * 129])
def test_bad_names_are_refused(name: str) -> None:
    registry = HeartbeatRegistry()
    with pytest.raises(ValueError, match="expected 1-128 letters"):
        registry.beat(name)
    assert registry.beats == {}


def test_good_names() -> None:
    for name in ("w0", "worker-0.pod_a", "A", "x" * 128, "10.0.0.7"):
        assert parse_beat_name(name) == name


def test_registry_is_bounded_and_forgets_only_long_silent_names() -> None:
    clock = Clock()
    registry = HeartbeatRegistry(max_names=3, forget_after=600, clock=clock)
    for name in ("a", "b", "c"):
        registry.beat(name)
        clock.now += 1
    with pytest.raises(HeartbeatRegistryFull, match="3 names"):
        registry.beat("d")
    registry.beat("a")  # a known name always beats, full or not
    assert len(registry.beats) == 3
    clock.now += 600  # b is now silent 601 s: past forget_after, so "d" may take its place
    registry.beat("d")
    assert sorted(registry.beats) == ["a", "c", "d"]
    assert registry.remove("c") and not registry.remove("c")
    registry.beat("e")
    assert len(registry.beats) == 3


def test_registry_cannot_be_grown_by_a_client_looping_over_names() -> None:
    registry = HeartbeatRegistry()
    refused = 0
    for i in range(HEARTBEAT_MAX_WORKERS + 500):
        try:
            registry.beat("n%d" % i)
        except HeartbeatRegistryFull:
            refused += 1
    assert len(registry.beats) == HEARTBEAT_MAX_WORKERS
    assert refused == 500


# --- overrides through the router ----------------------------------------------------------------

def router_with(check: HeartbeatCheck) -> Tuple[Router, PodDriver]:
    engine = PodDriver([check])
    engine.record(check.name, observe(check), 0.001)
    return Router(engine.pod, clock=engine.clock), engine


def get(router: Router, target: str) -> Tuple[int, bytes]:
    req, _ = parse_request(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target).encode())
    reply = router.respond(req)
    wire = reply.before + http_date(0) + reply.after
    head, _, body = wire.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_overrides_rejudge_the_cached_ages(tmp_path: Path) -> None:
    beat_files(tmp_path, {"w0": 5, "w1": 20, "w2": 45, "w3": 300})
    router, _ = router_with(make_check(path=str(tmp_path), expect="4", min_fresh="3",
                                       window="60s"))
    assert get(router, "/livez")[0] == 200
    for name in ("w0", "w1", "w2", "w3"):
        os.remove(str(tmp_path / name))  # overrides must not look at the files again
    status, body = get(router, "/livez?workers.min-fresh=3&workers.window=30s&verbose")
    assert status == 503
    assert b"[-]workers failed: 2 of 4 workers beat within 30s (need 3): silent: w3" in body
    assert get(router, "/livez?workers.min-fresh=2&workers.window=30s")[0] == 200
    assert get(router, "/livez?workers.max-silent=0")[0] == 503
    assert get(router, "/readyz?workers.expect=3")[0] == 200
    status, body = get(router, "/livez/workers?workers.window=10s")
    assert status == 503 and b"1 of 4" in body


def test_bad_overrides_are_400(tmp_path: Path) -> None:
    beat_files(tmp_path, {"w0": 1})
    router, _ = router_with(make_check(path=str(tmp_path)))
    status, body = get(router, "/livez?workers.window=0s")
    assert status == 400 and b"duration above 0" in body
    status, body = get(router, "/livez?workers.path=/etc")
    assert status == 400 and b"no overridable key 'path'" in body
    assert get(router, "/livez?workers.min-fresh=-1")[0] == 400


def test_json_reply_carries_the_workers(tmp_path: Path) -> None:
    beat_files(tmp_path, {"w0": 1, "w1": 400})
    router, _ = router_with(make_check(path=str(tmp_path), min_fresh="1"))
    status, body = get(router, "/livez?format=json")
    doc = json.loads(body)
    row = doc["checks"][0]
    assert status == 200 and row["kind"] == "heartbeat" and row["value"] == 1.0
    assert [w["name"] for w in row["detail"]["workers"]] == ["w0", "w1"]
    assert row["detail"]["workers"][1]["age_seconds"] > 399


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="window=0"):
        make_check(window="0")
    with pytest.raises(ConfigError, match="expect=0"):
        make_check(expect="0")
    with pytest.raises(ConfigError, match="min-fresh=many"):
        make_check(min_fresh="many")


def test_defaults() -> None:
    check = make_check()
    assert check.spec.probes == frozenset(("live", "ready", "started"))
    assert check.config["window"] == 60.0
    assert check.spec.interval == 2.0


# --- the worker-side contract: idle workers beating stay fresh -----------------------------------

class WorkerStopped(BaseException):
    """Ends the README's `while True` loop from inside the fake queue."""


class EmptyQueue:
    """A queue that is always empty. Each poll first judges the pool (the worker touched its
    file just before polling), then ages the file by ten minutes: a long idle wait."""

    def __init__(self, beat: Path, check: HeartbeatCheck, polls: int) -> None:
        self.beat, self.check, self.polls = beat, check, polls
        self.verdicts: List[Tuple[bool, str]] = []

    def get(self, timeout: Optional[float] = None) -> Any:
        self.verdicts.append(verdict(self.check, observe(self.check)))
        old = time.time() - 600
        os.utime(str(self.beat), (old, old))
        if len(self.verdicts) >= self.polls:
            raise WorkerStopped()
        raise queue.Empty()


def readme_worker_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Worker pools"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Worker pools section has no python example"
    return match.group(1)


def test_readme_worker_example_is_five_lines_of_stdlib() -> None:
    code = readme_worker_example()
    assert len(code.strip().splitlines()) == 5
    assert re.match(r"import [a-z, ]+\n", code)


def test_idle_worker_beating_on_every_poll_stays_healthy(tmp_path: Path) -> None:
    code = readme_worker_example().replace('"/beats"', repr(str(tmp_path)))
    check = make_check(path=str(tmp_path), expect="1", window="60s")
    jobs = EmptyQueue(tmp_path / "worker-0", check, polls=5)
    handled: List[Any] = []
    with pytest.raises(WorkerStopped):
        exec(compile(code, "README.md", "exec"), {"jobs": jobs, "handle": handled.append})
    assert handled == []  # the queue stayed empty the whole time
    assert jobs.verdicts == [(True, "1 of 1 workers beat within 1m (none silent)")] * 5


def test_worker_beating_only_after_jobs_looks_dead_while_idle(tmp_path: Path) -> None:
    beat = tmp_path / "worker-0"
    check = make_check(path=str(tmp_path), expect="1", window="60s")
    jobs = EmptyQueue(beat, check, polls=3)
    beat.touch()  # its last job, long ago (the queue ages the file on every poll)
    with pytest.raises(WorkerStopped):
        while True:  # the wrong contract: beat only after a job was handled
            with contextlib.suppress(queue.Empty):
                jobs.get(timeout=5)
                beat.touch()
    assert jobs.verdicts[0][0] is True
    assert [ok for ok, _ in jobs.verdicts[1:]] == [False, False]
    assert "silent: worker-0 10m" in jobs.verdicts[-1][1]
