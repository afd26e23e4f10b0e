"""What the pod's state machine says happened: events out of `Pod`, and their log lines. Pure.

The scheduler routes every event to the sinks that care (the log, gated ports, gRPC watchers,
self-metrics); `log_line` says how each reads in the log: one line per state change, at `warn`
when a group turns to fail (so `level>=warn` finds what took a pod out or killed it).
"""

from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

from .checks.base import Incarnation
from .values import format_duration, format_timestamp


class CheckChanged(NamedTuple):
    """A check went between pending, pass and fail."""
    check: str
    kind: str
    before: str
    after: str
    reason: str
    streak: int
    lasted: float  # seconds in the state it left


class GroupChanged(NamedTuple):
    """A group's verdict flipped."""
    group: str
    ok: bool
    reason: str


class Started(NamedTuple):
    """`started` latched for this backend incarnation."""
    after: float  # seconds since probed started, or since the backend restarted


class Restarted(NamedTuple):
    """A new backend incarnation: every check starts over."""
    why: str
    old: Incarnation
    new: Incarnation  # None until a check sees the new process (then IncarnationSeen)


class IncarnationSeen(NamedTuple):
    """After a restart seen without a start time, the new process's identity is known."""
    value: Incarnation


class Unlatched(NamedTuple):
    """`started` fails again: the kubelet runs the startup probe of the new process."""
    why: str


class DrainChanged(NamedTuple):
    """A drain source was set or cleared; `active` is what fails ready now."""
    source: str
    on: bool
    active: Tuple[str, ...]


Event = Union[CheckChanged, GroupChanged, Started, Restarted, IncarnationSeen, Unlatched,
              DrainChanged]


def describe_incarnation(value: Incarnation) -> str:
    """An incarnation for logs and JSON: a start time as RFC 3339, an identity as is."""
    if value is None:
        return "unknown"
    if isinstance(value, str):
        return value
    return format_timestamp(value, millis=True)


def log_line(event: Event) -> Optional[Tuple[str, str, Dict[str, Any]]]:
    """(level, message, fields) of the one log line an event deserves, or None."""
    if isinstance(event, CheckChanged):
        return "info", "check changed", {
            "check": event.check, "kind": event.kind, "from": event.before, "to": event.after,
            "reason": event.reason, "consecutive": event.streak,
            "after": format_duration(round(event.lasted, 3))}
    if isinstance(event, GroupChanged):
        fields: Dict[str, Any] = {"group": event.group, "to": "pass" if event.ok else "fail",
                                  "reason": event.reason}
        return ("info" if event.ok else "warn"), "group changed", fields
    if isinstance(event, Started):
        return "info", "started", {"after": format_duration(round(event.after, 3))}
    if isinstance(event, Restarted):
        return "warn", "backend restarted", {
            "reason": event.why, "old_start": describe_incarnation(event.old),
            "new_start": describe_incarnation(event.new)}
    if isinstance(event, IncarnationSeen):
        return "info", "backend process seen", {"start": describe_incarnation(event.value)}
    if isinstance(event, Unlatched):
        return "info", "started unlatched", {"reason": event.why}
    return "info", "drain %s" % ("set" if event.on else "cleared"), {
        "source": event.source, "active": ",".join(event.active) or "none"}


def group_changes(events: List[Event]) -> List[GroupChanged]:
    """The group flips among `events`, in order (what gated ports and watchers follow)."""
    return [e for e in events if isinstance(e, GroupChanged)]
