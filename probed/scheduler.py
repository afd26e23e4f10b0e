"""The scheduler: runs every check on its schedule, feeds the results to the `Pod`, routes events.

One asyncio task per check polls under a hard deadline (interval with jitter, the start interval
until the pod has been ready once, dormant when only `started` reads it and it has latched); one
timer tells the pod when time alone changes something (staleness, the end of the start-up
grace). Every event the pod returns goes to the sinks the daemon handed in (the log, gated ports,
gRPC watchers); nothing else reads or writes the pod's state behind its back.
"""

import asyncio
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .checks.base import Check, Observation
from .eventlog import EventLog
from .hygiene import clean_observation
from .pod import Pod
from .podevents import Event, Restarted, Unlatched, log_line

# The hard deadline trails the check's own timeout, so a check that bounds its I/O with the same
# timeout (the HTTP client does) reports what stalled before the scheduler cuts in, even when the
# loop runs late; past it the check's own `on_deadline` says what the overrun means.
DEADLINE_GRACE = 0.5
DEADLINE_GRACE_SHARE = 0.25  # of the timeout, when that is more than DEADLINE_GRACE
FIRST_POLL_SPREAD = 0.5  # seconds over which the first polls of all checks are spread

EventSink = Callable[[Sequence[Event]], None]
PollSink = Callable[[str, float], None]  # (check name, seconds the poll took)


def log_events(log: EventLog) -> EventSink:
    """A sink that writes each event's one log line."""
    def sink(events: Sequence[Event]) -> None:
        for event in events:
            line = log_line(event)
            if line is not None:
                log.emit(line[0], line[1], **line[2])
    return sink


async def poll_once(check: Check) -> Tuple[Observation, float]:
    """Run one observation under the check's hard deadline; never raises (but cancellation)."""
    t0 = time.monotonic()
    timeout = check.spec.timeout
    try:
        obs = await asyncio.wait_for(check.observe(), timeout + max(
            DEADLINE_GRACE, DEADLINE_GRACE_SHARE * timeout))
    except asyncio.TimeoutError:
        obs = check.on_deadline(timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        obs = Observation(False, "%s: %s" % (type(exc).__name__, exc))
    return clean_observation(obs, check.secrets()), time.monotonic() - t0


class Jitter:
    """Numbers spread over [-1, 1] to offset polls (xorshift64): statistics need nothing better,
    and the `random` module costs 0.3 MB of memory at start."""

    def __init__(self, seed: int) -> None:
        self.state = (seed & 0xFFFFFFFFFFFFFFFF) or 1

    def __call__(self) -> float:
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 7
        x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
        self.state = x
        return x / 0x7FFFFFFFFFFFFFFF - 1.0


class Scheduler:
    """Polls the checks of a `Pod` and hands every event to `sinks`."""

    def __init__(self, pod: Pod, checks: Sequence[Check], log: EventLog,
                 sinks: Sequence[EventSink], on_poll: Optional[PollSink] = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 jitter: Optional[Callable[[], float]] = None) -> None:
        self.pod = pod
        self.log = log  # for the scheduler's own troubles; events go to the sinks
        self.checks: Dict[str, Check] = {c.name: c for c in checks if c.scheduled}
        self.sinks = list(sinks)
        self.on_poll = on_poll
        self.clock, self.wall = clock, wall
        self.jitter = jitter if jitter is not None else Jitter(os.getpid() ^ time.monotonic_ns())
        self._tasks: List["asyncio.Task[None]"] = []
        self._timer: Optional[asyncio.TimerHandle] = None
        self._wake: Optional[asyncio.Event] = None

    # --- inputs that do not come from polls ----------------------------------------------------

    def record(self, name: str, obs: Observation, latency: float = 0.0) -> None:
        """An observation from outside the pollers (an admin call sets a manual check)."""
        now = self.clock()
        self._route(self.pod.observe(name, obs, latency, now, now, self.wall()))

    def drain(self, source: str) -> None:
        """Fail ready because of `source` until `undrain(source)`."""
        self._route(self.pod.drain(source, self.clock(), self.wall()))

    def undrain(self, source: str) -> None:
        """Clear one drain source."""
        self._route(self.pod.undrain(source, self.clock(), self.wall()))

    # --- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start one polling task per check, first polls spread (call inside the running loop)."""
        loop = asyncio.get_running_loop()
        count = len(self.checks)
        for i, name in enumerate(self.checks):
            first = FIRST_POLL_SPREAD * i / count  # not all at once against one backend
            self._tasks.append(loop.create_task(self._poll_forever(name, first)))
        self._arm()

    async def stop(self) -> None:
        """Cancel every polling task and the timer, and wait for the tasks to finish."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._timer is not None:
            self._timer.cancel()

    async def _poll_forever(self, name: str, first: float) -> None:
        check = self.checks[name]
        await self._sleep(first)
        while True:
            delay = self.pod.poll_delay(name, self.jitter())
            if delay is None:  # dormant: wait for a restart to wake us
                await self._sleep(None)
                continue
            polled_at = self.clock()
            obs, latency = await poll_once(check)
            try:
                now = self.clock()
                self._route(self.pod.observe(name, obs, latency, polled_at, now, self.wall()))
                if self.on_poll is not None:
                    self.on_poll(name, latency)
            except Exception as exc:  # a bug in one check must not stop the others
                self.log.warn("check bookkeeping failed", check=name, error=repr(exc))
            delay = self.pod.poll_delay(name, self.jitter())
            if delay is not None:
                await self._sleep(delay)

    def _route(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, Restarted):
                for check in self.checks.values():
                    check.forget()  # counters and rates of the old process mean nothing now
            if isinstance(event, (Restarted, Unlatched)):
                self._wake_pollers()
        if events:
            for sink in self.sinks:
                sink(events)
        self._arm()

    def _on_timer(self) -> None:
        self._timer = None
        self._route(self.pod.tick(self.clock(), self.wall()))

    def _arm(self) -> None:
        """One timer for the pod's next deadline (staleness, the start-up grace)."""
        due = self.pod.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is None or not self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, due - self.clock()) + 0.001, self._on_timer)

    async def _sleep(self, delay: Optional[float]) -> None:
        """Sleep `delay` (None: until woken), or less when a restart wakes every poller."""
        wake = self._wake
        if wake is None:
            self._wake = wake = asyncio.Event()
        try:
            await asyncio.wait_for(wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    def _wake_pollers(self) -> None:
        """A new incarnation: poll now at the start pace, not after the old long sleeps."""
        if self._wake is not None:
            self._wake.set()
            self._wake = None  # sleepers from now on wait on a fresh event
