"""Heartbeats pushed by workers (`POST /heartbeat/NAME` on the admin listener, `probed beat`).

One registry per daemon: the admin listener writes it, heartbeat checks without `path=` read it;
the daemon makes it and hands it to both. Pure bookkeeping on a monotonic clock, no I/O. Must
never: let a client grow it without bound, or accept a name that could leave a directory.
"""

import re
import time
from typing import Callable, Dict, Tuple

from .values import format_duration

HEARTBEAT_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
HEARTBEAT_MAX_WORKERS = 1024  # names the push registry holds; files one check may match
HEARTBEAT_FORGET_AFTER = 3600.0  # a full registry drops a name silent this long for a new one

WorkerAges = Tuple[Tuple[str, float], ...]  # (name, seconds since its last beat), by name


def parse_beat_name(text: str) -> str:
    """A worker name: 1-128 of letters, digits, '.', '_', '-', starting with a letter or digit."""
    if not HEARTBEAT_NAME_PATTERN.match(text):
        raise ValueError("expected 1-128 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return text


class HeartbeatRegistryFull(Exception):
    """A new name arrived while the registry holds HEARTBEAT_MAX_WORKERS recently seen names."""


class HeartbeatRegistry:
    """Beats pushed to the admin listener, by worker name, on a monotonic clock.

    At most `max_names` names: when full, a new name replaces the one silent longest if that is
    silent over `forget_after` (a worker renamed by a rollout), else it is refused.
    """

    def __init__(self, max_names: int = HEARTBEAT_MAX_WORKERS,
                 forget_after: float = HEARTBEAT_FORGET_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_names = max_names
        self.forget_after = forget_after
        self.clock = clock
        self.beats: Dict[str, float] = {}

    def beat(self, name: str) -> None:
        """Record a beat of `name` now; ValueError for a bad name, HeartbeatRegistryFull."""
        parse_beat_name(name)
        now = self.clock()
        if name not in self.beats and len(self.beats) >= self.max_names:
            oldest = min(self.beats, key=self.beats.__getitem__)
            if now - self.beats[oldest] <= self.forget_after:
                raise HeartbeatRegistryFull(
                    "heartbeat registry full: %d names beat within the last %s" % (
                        len(self.beats), format_duration(self.forget_after)))
            del self.beats[oldest]
        self.beats[name] = now

    def remove(self, name: str) -> bool:
        """Forget `name` (a worker that left on purpose); False when it was not known."""
        return self.beats.pop(name, None) is not None

    def ages(self) -> WorkerAges:
        """Every name with the seconds since its last beat, sorted by name."""
        now = self.clock()
        return tuple((name, now - at) for name, at in sorted(self.beats.items()))
