"""Check kind `manual`: readiness set from outside through the admin listener (llm-d's SPI).

`POST /v1/become-ready` / `-unready` flip every manual check; the admin router records the new
state at once, the poll only keeps it fresh. `initial` defaults to `unready`, as llm-d's
requester starts: nothing is routed to a pod until its controller says so. Must never do I/O.
"""

from typing import Any, Optional

from ..values import format_timestamp
from .base import Check, CheckResources, CheckSpec, Observation, Param


def parse_initial_state(text: str) -> bool:
    """`ready` or `unready` -> True or False."""
    value = text.strip().lower()
    if value not in ("ready", "unready"):
        raise ValueError("expected ready or unready")
    return value == "ready"


class ManualCheck(Check):
    """Passes while the last admin call (or `initial`) said ready."""

    kind = "manual"
    params = {
        "initial": Param(parse_initial_state, default=False,
                         help="ready or unready until the first admin call (default unready)"),
    }
    default_probes = frozenset(("ready",))
    default_interval = 5.0

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        self.ready: bool = self.config["initial"]
        self.reason = "initial=%s, until POST /v1/become-%s" % (
            "ready" if self.ready else "unready", "unready" if self.ready else "ready")
        self.changed_at: Optional[float] = None  # wall time of the last admin call

    def target(self) -> str:
        return "POST /v1/become-ready, /v1/become-unready"

    def set_ready(self, ready: bool, by: str, wall: float) -> None:
        """Record an admin call: `by` names it in the reason, e.g. `POST /v1/become-ready`."""
        self.ready, self.changed_at = ready, wall
        self.reason = "%s at %s" % (by, format_timestamp(wall))

    def current(self) -> Observation:
        """The state as an observation; not ready is hard evidence (no fail-after)."""
        detail: Any = {"ready": self.ready}
        if self.changed_at is not None:
            detail["changed"] = format_timestamp(self.changed_at)
        return Observation(self.ready, self.reason, 1.0 if self.ready else 0.0,
                           hard=not self.ready, detail=detail)

    async def observe(self) -> Observation:
        return self.current()
