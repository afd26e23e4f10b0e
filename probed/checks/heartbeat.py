"""Check kind `heartbeat`: a worker pool is healthy while enough workers beat (X of Y within T).

Workers beat by touching a file (its mtime is the beat) or by `POST /heartbeat/NAME` on the
admin listener (a `HeartbeatRegistry`). `observe` collects ages (files are stat'ed on the
daemon's scan threads, one scan at a time, so a slow volume never blocks the loop, and an entry
that cannot be read is skipped and named, not fatal to the pool); `judge` applies window and
thresholds, so `/livez?workers.min-fresh=3` re-judges cached ages. Must never: let a client grow
the registry without bound, accept a beat name that could leave its directory, or read a file.
"""

import asyncio
import fnmatch
import glob
import itertools
import os
import re
import stat
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..beatregistry import HEARTBEAT_MAX_WORKERS, WorkerAges
from ..blocking import BlockingBusy
from ..values import ConfigError, format_duration, parse_count, parse_duration, parse_positive_count
from .base import Check, CheckResources, CheckSpec, Observation, Param

HEARTBEAT_DEFAULT_WINDOW = 60.0
HEARTBEAT_REASON_NAMES = 12  # workers named in a reason (a log line); JSON lists them all
HEARTBEAT_CLOCK_SLACK = 1.0  # an mtime up to this far in the future still counts as "now"
_HEARTBEAT_GLOB_CHARS = re.compile(r"[*?[]")
BeatScan = Tuple[WorkerAges, Tuple[Tuple[str, str], ...]]  # ages, and (name, why) unreadable


def parse_window(text: str) -> float:
    """A heartbeat window: a duration above 0."""
    value = parse_duration(text)
    if not value > 0:
        raise ValueError("expected a duration above 0, e.g. 30s")
    return value


def _heartbeat_fixed_prefix(pattern: str) -> str:
    """A glob's directories before its first wildcard: names are shown relative to them."""
    fixed = itertools.takewhile(lambda part: not _HEARTBEAT_GLOB_CHARS.search(part),
                                pattern.split(os.sep)[:-1])
    return os.sep.join(fixed) or ("." if not pattern.startswith(os.sep) else os.sep)


def _heartbeat_candidates(path: str) -> List[Tuple[str, str]]:
    """(name, file path) of every beat file `path` names, at most HEARTBEAT_MAX_WORKERS + 1."""
    limit = HEARTBEAT_MAX_WORKERS + 1
    if _HEARTBEAT_GLOB_CHARS.search(path):
        prefix = _heartbeat_fixed_prefix(path)
        return [(os.path.relpath(m, prefix), m) for m in itertools.islice(glob.iglob(path), limit)]
    if os.path.isdir(path):
        with os.scandir(path) as entries:  # dotfiles: temp files of atomic writes, editors
            visible = (e for e in entries if not e.name.startswith("."))
            return [(e.name, e.path) for e in itertools.islice(visible, limit)]
    if not os.path.exists(path):
        raise FileNotFoundError("%s: no such file or directory" % path)
    return [(os.path.basename(path), path)]  # a pool of one


def scan_beat_files(path: str) -> BeatScan:
    """Each regular file `path` matches with its age (now - mtime), and the entries that cannot
    be stat'ed (a symlink loop, no permission) with why: skipped, so one bad entry never fails
    the pool. OSError when `path` itself cannot be listed. Blocking: run it on a thread."""
    found = _heartbeat_candidates(path)
    if len(found) > HEARTBEAT_MAX_WORKERS:
        raise OSError("%s matches more than %d files; narrow the path" % (
            path, HEARTBEAT_MAX_WORKERS))
    mtimes: List[Tuple[str, float]] = []
    unreadable: List[Tuple[str, str]] = []
    for name, file_path in found:
        try:
            st = os.stat(file_path)
        except FileNotFoundError:
            continue  # removed between listing and stat: a worker that left
        except OSError as exc:
            unreadable.append((name, exc.strerror or str(exc)))
            continue
        if stat.S_ISREG(st.st_mode):  # regular files only (symlinks followed)
            mtimes.append((name, st.st_mtime))
    now = time.time()  # after the stats, so a beat during the scan is never in the future
    return tuple(sorted((name, now - mtime) for name, mtime in mtimes)), tuple(sorted(unreadable))


def heartbeat_unreadable_note(unreadable: Sequence[Mapping[str, str]]) -> str:
    """`; unreadable, skipped: w3 (Too many levels of symbolic links)`, naming at most
    HEARTBEAT_REASON_NAMES entries; empty when all could be read."""
    if not unreadable:
        return ""
    shown = ["%s (%s)" % (u["name"], u["error"]) for u in unreadable[:HEARTBEAT_REASON_NAMES]]
    more = len(unreadable) - len(shown)
    return "; unreadable, skipped: " + ", ".join(shown + (["+%d more" % more] if more else []))


def heartbeat_fresh(age: float, window: float) -> bool:
    """A beat counts when it is within the window (and not from the future beyond slack)."""
    return -HEARTBEAT_CLOCK_SLACK <= age <= window


def _heartbeat_age_text(age: float) -> str:
    if age < -HEARTBEAT_CLOCK_SLACK:
        return "%s in the future" % format_duration(round(-age))
    age = max(age, 0.0)
    return format_duration(round(age) if age >= 10 else round(age, 1))


def heartbeat_roster(silent: Sequence[Tuple[str, float]], fresh: Sequence[Tuple[str, float]],
                     missing: int) -> str:
    """`silent: w3 95s; missing: 1; fresh: w1 2s`, naming at most HEARTBEAT_REASON_NAMES."""
    budget = HEARTBEAT_REASON_NAMES

    def names(rows: Sequence[Tuple[str, float]]) -> str:
        nonlocal budget
        shown = ["%s %s" % (n, _heartbeat_age_text(a)) for n, a in rows[:budget]]
        budget -= len(shown)
        more = len(rows) - len(shown)
        return ", ".join(shown + (["+%d more" % more] if more else []))

    parts = ["silent: " + names(sorted(silent, key=lambda r: -r[1]))] if silent else []
    if missing:
        parts.append("missing: %d never beat" % missing)
    if fresh:
        parts.append("fresh: " + names(sorted(fresh, key=lambda r: r[1])))
    return "; ".join(parts) or "no worker has beaten yet"


class HeartbeatCheck(Check):
    """Passes when at least `min-fresh` workers, or all but `max-silent`, beat within `window`."""

    kind = "heartbeat"
    params = {
        "path": Param(str, help="beat files: a directory, a glob or one file (mtime = beat); "
                                "without it workers POST /heartbeat/NAME to the admin listener"),
        "match": Param(str, help="only worker names matching this glob, e.g. enc-*"),
        "expect": Param(parse_positive_count, overridable=True,
                        help="workers that should exist (Y); missing ones count as silent"),
        "min-fresh": Param(parse_count, overridable=True,
                           help="pass when at least X workers beat within the window"),
        "max-silent": Param(parse_count, overridable=True,
                            help="pass when at most this many workers are silent"),
        "window": Param(parse_window, default=HEARTBEAT_DEFAULT_WINDOW, overridable=True,
                        help="a beat older than this is silent (T)"),
    }
    default_probes = frozenset(("live", "ready", "started"))
    default_interval = 2.0

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        self.path: Optional[str] = self.config.get("path") or None
        expect, min_fresh = self.config.get("expect"), self.config.get("min-fresh")
        if expect is not None and min_fresh is not None and min_fresh > expect:
            raise ConfigError("%s (heartbeat): min-fresh=%d with expect=%d can never pass "
                              "(expected min-fresh <= expect)" % (spec.origin, min_fresh, expect))
        self._scan: Optional["asyncio.Future[BeatScan]"] = None

    @property
    def pushed(self) -> bool:
        """True when workers push beats to the admin listener instead of touching files."""
        return self.path is None

    def target(self) -> str:
        where = self.path if self.path else "POST /heartbeat/NAME"
        return where + (" match=%s" % self.config["match"] if self.config.get("match") else "")

    async def observe(self) -> Observation:
        unreadable: Tuple[Tuple[str, str], ...] = ()
        if self.path is None:
            workers = self.resources.beats.ages()
        else:
            if self._scan is not None and not self._scan.done():
                return Observation(False, "%s: the previous scan is still running (slow "
                                          "volume?)" % self.path)
            if self._scan is not None and not self._scan.cancelled():
                self._scan.exception()  # a scan a deadline abandoned: its error is old news
            self._scan = asyncio.ensure_future(self.resources.scans.run(scan_beat_files,
                                                                        self.path))
            try:  # shielded: a deadline must not forget a scan its thread is still running
                workers, unreadable = await asyncio.shield(self._scan)
            except BlockingBusy as exc:
                return Observation(False, "%s: not scanned: %s" % (self.path, exc))
            except OSError as exc:
                own = bool(exc.args) and isinstance(exc.args[0], str)  # our message, with path
                return Observation(False, str(exc) if own else "%s: %s" % (
                    self.path, exc.strerror or exc))
        pattern = self.config.get("match")
        if pattern:
            workers = tuple(w for w in workers if fnmatch.fnmatchcase(w[0], pattern))
        window = self.config["window"]
        detail: Dict[str, Any] = {
            "source": "push" if self.path is None else "files",
            "workers": [{"name": n, "age_seconds": round(a, 3)} for n, a in workers]}
        if unreadable:
            detail["unreadable"] = [{"name": n, "error": e} for n, e in unreadable]
        fresh = sum(1 for _, a in workers if heartbeat_fresh(a, window))
        return Observation(True, "", float(fresh), detail=detail, raw=workers)

    def judge(self, obs: Observation, config: Mapping[str, Any], was_ok: bool) -> Tuple[bool, str]:
        workers: Optional[WorkerAges] = obs.raw
        if workers is None:
            return False, obs.reason
        window, expect = config["window"], config.get("expect")
        fresh = [w for w in workers if heartbeat_fresh(w[1], window)]
        silent = [w for w in workers if not heartbeat_fresh(w[1], window)]
        missing = max(0, expect - len(workers)) if expect else 0
        # With `expect`, leftovers of workers that are gone do not count against the pool.
        silent_count = max(0, expect - len(fresh)) if expect else len(silent)
        min_fresh, max_silent = config.get("min-fresh"), config.get("max-silent")
        if min_fresh is None and max_silent is None:
            max_silent = 0  # default: every worker beats
        floor = min_fresh if min_fresh is not None else 1  # a pool nobody beats in never passes
        summary = "%d of %d workers beat within %s" % (
            len(fresh), expect or len(workers), format_duration(window))
        if expect and len(fresh) > expect:  # more workers than expected: not "5 of 4"
            summary = "%d workers beat within %s (%d expected)" % (
                len(fresh), format_duration(window), expect)
        wants = []
        if max_silent is not None and silent_count > max_silent:
            wants.append("%d silent, at most %d allowed" % (silent_count, max_silent))
        if len(fresh) < floor and (min_fresh is not None or not wants):
            wants.append("need %d" % floor)
        note = heartbeat_unreadable_note((obs.detail or {}).get("unreadable", ()))
        if not wants:
            need = (["need %d" % min_fresh] if min_fresh is not None else []) + (
                ["at most %d silent" % max_silent if max_silent else "none silent"]
                if max_silent is not None else [])
            return True, "%s (%s)%s" % (summary, ", ".join(need), note)
        return False, "%s (%s): %s%s" % (summary, ", ".join(wants),
                                         heartbeat_roster(silent, fresh, missing), note)
