"""Backend lifecycle facts derived from check states: restarts and start-up phases. Pure.

A restart is seen three ways: a new process start time (`incarnation`), a counter that went
backwards, or a `started` check refused after it had passed. The start-up phase says where a
loading backend is: `loading` (port refused), `starting` (answering, not healthy yet),
`warming` (healthy, first inference not passed), `started`.
"""

from typing import Any, Optional, Sequence, Tuple

from .checks.base import Observation
from .values import format_timestamp
from .verdicts import CheckState

PHASES = ("loading", "starting", "warming", "started")
# Checks in these groups watch this pod's own backend, so their refusal after a pass means it
# restarted; a ready-only check (a relay to another pod) refused says nothing of the sort.
BACKEND_GROUPS = frozenset(("started", "live"))


def restart_signal(st: CheckState, obs: Observation, started: bool,
                   incarnation: Any, trusts_start_time: bool) -> Tuple[str, Any]:
    """(why the backend restarted or '', the incarnation to remember) for one observation.

    Call before the observation is folded into `st`. A refusal means a restart once the check
    has passed in this incarnation, even when a 503 came in between (vLLM: 503, then exit).
    """
    if obs.incarnation is not None:
        if incarnation is not None and obs.incarnation != incarnation:
            return ("process %s changed from %s to %s" % (
                "start time" if isinstance(obs.incarnation, float) else "identity",
                describe_incarnation(incarnation), describe_incarnation(obs.incarnation)),
                obs.incarnation)
        return "", obs.incarnation
    if obs.restart and not trusts_start_time:
        return obs.restart, None  # the start time is the better witness when there is one
    if obs.refused and started and st.passed_once and st.check.spec.probes & BACKEND_GROUPS:
        return "%s refused connections after passing" % st.check.name, None
    return "", incarnation


def startup_phase(states: Sequence[CheckState], started: bool) -> str:
    """Where a backend that has not started is: loading, starting or warming."""
    if started:
        return "started"
    if any(st.obs is not None and st.obs.refused and not st.passing for st in states):
        return "loading"
    waiting = [st for st in states if not st.passing]
    if waiting and all(st.check.kind == "inference" for st in waiting):
        return "warming"
    return "starting"


def describe_incarnation(value: Any) -> str:
    """An incarnation for logs and JSON: a start time as a timestamp, an identity as is."""
    if isinstance(value, float):
        return format_timestamp(value, millis=True)
    return value if isinstance(value, str) else "unknown"
