"""The one contract every check kind follows (kube-apiserver healthz style).

A check kind is a `Check` subclass whose module and class `checks.CHECK_MODULES` names under its
kind name (`checks.CHECK_KINDS[kind]` imports it). It declares its keys as `Param`s, gathers one
`Observation` per poll in `observe()` (the only place with I/O), and turns an observation into a
verdict in `judge()` (pure, so per-request overrides such as `/readyz?queue.max=5` can re-judge
the cached observation without touching a backend).
The engine owns timing, deadlines, hysteresis and staleness; a check never sleeps or retries.
"""

from typing import (TYPE_CHECKING, Any, Callable, ClassVar, Dict, FrozenSet, Mapping, Optional,
                    Set, Tuple, Union)

from ..beatregistry import HeartbeatRegistry
from ..blocking import BLOCKING_SCANS, BlockingRunner, Resolver
from ..scrape import ProgressBoard, ScrapeHub
from ..values import (
    ConfigError,
    format_duration,
    parse_duration,
    parse_positive_count,
    parse_probes,
)

if TYPE_CHECKING:  # the name only: CheckResources.gpus imports it for the first gpu check
    from ..gpureader import GPUReaders


Incarnation = Optional[Union[float, str]]  # see Observation.incarnation


class Observation:
    """What one poll saw.

    ok      the raw outcome before thresholds that `judge` applies (True for a plain success).
    reason  short words for a failure (or a note on a pass), shown after `failed:` in ?verbose.
    value   the number the verdict used (queue depth, nodes alive...), shown in JSON and /metrics.
    hard    the backend said so itself (vLLM /health 503): skips `fail-after`.
    detail  JSON-able extras for ?format=json (per-node, per-worker data...).
    raw     anything else `judge` needs that is not shown (a response body...).
    refused the backend refused the connection: while loading that is the `loading` phase;
            after a pass it means the backend restarted (only for checks in `started`).
    loading the backend answered that it is loading (llama.cpp's 503 `Loading model`): before
            start the `starting` phase; after start a new incarnation, never a dead server.
    incarnation  which backend process answered, when the check can see it: a float is its
            Unix start time (`process_start_time_seconds`), a str an opaque identity shown
            as is (llama-server's `Process-Start-Time-Unix` header); a new value is a restart.
    restart a reason when the check saw a restart another way (a counter went backwards).
    """

    __slots__ = ("ok", "reason", "value", "hard", "detail", "raw", "refused", "loading",
                 "incarnation", "restart")

    def __init__(
        self,
        ok: bool,
        reason: str = "",
        value: Optional[float] = None,
        hard: bool = False,
        detail: Optional[Dict[str, Any]] = None,
        raw: Any = None,
        refused: bool = False,
        incarnation: Incarnation = None,
        restart: str = "",
        loading: bool = False,
    ) -> None:
        self.ok = ok
        self.reason = reason
        self.value = value
        self.hard = hard
        self.detail = detail
        self.raw = raw
        self.refused = refused
        self.loading = loading
        self.incarnation = incarnation
        self.restart = restart

    def __repr__(self) -> str:
        return "Observation(ok=%r, reason=%r, value=%r, hard=%r)" % (
            self.ok, self.reason, self.value, self.hard)


class Param:
    """One key a check kind accepts: how to parse it, its default, whether to hide it."""

    __slots__ = ("parse", "default", "required", "secret", "help", "overridable", "repeat")

    def __init__(
        self,
        parse: Callable[[str], Any],
        default: Any = None,
        required: bool = False,
        secret: bool = False,
        help: str = "",
        overridable: bool = False,
        repeat: bool = False,
    ) -> None:
        self.parse = parse
        self.default = default
        self.required = required
        self.secret = secret
        self.help = help
        self.overridable = overridable
        self.repeat = repeat  # the key may be given many times; the value is a list


# Keys every kind accepts; the engine reads them, the check never does.
COMMON_PARAMS: Dict[str, Param] = {
    "name": Param(str, help="check name (default: the kind)"),
    "probes": Param(parse_probes, help="groups this check counts in: live,ready,started"),
    "interval": Param(parse_duration, help="time between polls"),
    "timeout": Param(parse_duration, help="hard deadline of one poll"),
    "fail-after": Param(parse_positive_count, help="consecutive failures before failing"),
    "pass-after": Param(parse_positive_count, help="consecutive passes before passing"),
    "stale-after": Param(parse_duration, help="a result older than this counts as failed"),
    "start-interval": Param(parse_duration, help="poll interval until started latches"),
}


class CheckSpec:
    """A check's validated configuration: common settings plus its kind's parameters."""

    __slots__ = ("kind", "name", "probes", "interval", "timeout", "fail_after", "pass_after",
                 "stale_after", "params", "origin", "start_interval", "shown")

    def __init__(self, kind: str, name: str, probes: FrozenSet[str], interval: float,
                 timeout: float, fail_after: int, pass_after: int, stale_after: float,
                 params: Dict[str, Any], origin: str = "",
                 start_interval: Optional[float] = None) -> None:
        self.kind = kind
        self.name = name
        self.probes = probes
        self.interval = interval
        self.timeout = timeout
        self.fail_after = fail_after
        self.pass_after = pass_after
        self.stale_after = stale_after
        self.params = params
        self.origin = origin  # where it came from: "--check #2", "--vllm", "config.json"
        self.start_interval = start_interval  # None: the daemon's --start-interval
        self.shown: Dict[str, Any] = {}  # kind keys as the user wrote them, secrets masked


class CheckResources:
    """What the checks of one daemon share. The daemon makes one and hands it to every check
    (and the admin listener gets the same heartbeat registry); a check built without one gets
    its own, unshared. `resolver` (DNS) and `scans` (heartbeat file scans) run blocking calls
    on threads of their own, each kind capped, so a hung resolver cannot delay a scan."""

    __slots__ = ("scrapes", "progress", "beats", "_gpus", "resolver", "scans", "children")

    def __init__(self, scrapes: Optional[ScrapeHub] = None,
                 progress: Optional[ProgressBoard] = None,
                 beats: Optional[HeartbeatRegistry] = None,
                 gpus: Optional["GPUReaders"] = None,
                 resolver: Optional[Resolver] = None,
                 scans: Optional[BlockingRunner] = None) -> None:
        self.scrapes = scrapes if scrapes is not None else ScrapeHub()
        self.progress = progress if progress is not None else ProgressBoard()
        self.beats = beats if beats is not None else HeartbeatRegistry()
        self._gpus = gpus  # NVML readers: made by the first gpu check (see `gpus`)
        self.resolver = resolver if resolver is not None else Resolver()
        self.scans = scans if scans is not None else BlockingRunner("scan", BLOCKING_SCANS)
        self.children: Set[int] = set()  # PIDs of exec checks' running commands (the reaper
        # leaves those to asyncio, which waits for their status)

    @property
    def gpus(self) -> "GPUReaders":
        """The NVML readers the gpu checks share, made when the first one asks."""
        if self._gpus is None:
            from ..gpureader import GPUReaders  # here: NVML's reader is RSS only gpu checks need

            self._gpus = GPUReaders()
        return self._gpus


class Check:
    """Base class of every check kind. Subclasses set `kind`, `params`, and `observe`."""

    kind: ClassVar[str] = ""
    params: ClassVar[Dict[str, Param]] = {}
    default_probes: ClassVar[FrozenSet[str]] = frozenset(("ready", "started"))
    default_interval: ClassVar[float] = 10.0
    default_timeout: ClassVar[float] = 1.0
    # False: only read on demand (the preStop drain polls `inflight` itself), never on a
    # schedule, so it costs the server nothing while nobody asks.
    scheduled: ClassVar[bool] = True

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.config: Dict[str, Any] = spec.params
        self.resources = resources if resources is not None else CheckResources()

    async def observe(self) -> Observation:
        """Poll the backend once. The engine bounds it with the check's timeout."""
        raise NotImplementedError

    def judge(self, obs: Observation, config: Mapping[str, Any], was_ok: bool) -> Tuple[bool, str]:
        """Turn an observation into (passes, reason) under `config`; `was_ok` allows hysteresis."""
        return obs.ok, obs.reason

    def target(self) -> str:
        """What this check looks at, for the index page and logs (never contains secrets)."""
        return ""

    def secrets(self) -> Tuple[str, ...]:
        """Values this check sends that must never be shown (tokens, secret headers): every
        reason and detail is scrubbed of them before anyone renders it."""
        return ()

    def on_deadline(self, timeout: float) -> Observation:
        """What a poll that ran past its hard deadline means. Failing is the usual answer; a
        check for which slowness is no evidence (progress) says so instead."""
        return Observation(False, "timed out after %s" % format_duration(timeout))

    def forget(self) -> None:
        """The backend restarted: drop history kept between polls (counters, rates)."""

    def parse_override(self, key: str, text: str) -> Any:
        """Parse a per-request override `NAME.KEY=VALUE`; only keys marked overridable."""
        param = self.params.get(key)
        if param is None or not param.overridable:
            allowed = sorted(k for k, p in self.params.items() if p.overridable)
            raise ConfigError("check %r has no overridable key %r (expected one of: %s)" % (
                self.name, key, ", ".join(allowed) or "none"))
        try:
            return param.parse(text)
        except ValueError as exc:
            raise ConfigError("%s.%s=%r: %s" % (self.name, key, text, exc)) from None
