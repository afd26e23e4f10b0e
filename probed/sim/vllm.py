"""A simulated vLLM OpenAI server, for `probed demo`, for tests, and for trying probed by hand.

It behaves on the wire like vLLM in each state a probe must tell apart (as a real vLLM 0.32
did in tests/fixtures/real-servers): the port refuses connections while the model loads
(`loading`, `restart`, and after a dead engine exits), `/health` is 200 with an empty body
until the engine dies (then 503, and the process "exits" 0-4 s later), sleeping, paused and
hung engines still answer 200, and `/metrics` is vLLM V1 exposition (probed/sim/api.py).
A sleeping, paused or hung engine holds new requests without counting them in running or
waiting (a hung one freezes its gauges). Closing the port is real: the listening socket
is closed, and a bound socket that does not listen holds the port so connects are refused.
Control: `set_state()` in-process, or `POST /_sim/state/<name>` on a separate loopback control
port that stays up while the server port is closed. Loopback use only: no TLS, no streaming,
one request per connection. Must never block the event loop or leave a socket open after stop().
"""

import asyncio
import collections
import hmac
import json
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

from ..httpproto import Request
from .api import (
    SIM_CLOSED_STATES,
    SIM_ENGINE_DEAD_MESSAGE,
    SIM_METRIC_STYLES,
    SimEngineValues,
    SimMetricsSnapshot,
    SimRequestError,
    render_sim_metrics,
    sim_completion_body,
    sim_error_body,
    sim_json,
    sim_models_body,
    sim_parse_inference,
    sim_split,
    sim_state_params,
)
from .net import SimListener, SimReply, sim_reply

SIM_DEAD_REQUEST_EXIT = 0.1  # vLLM's error handler sets should_exit at once; uvicorn then stops
SIM_SATURATED_SLOWDOWN = 4.0  # a saturated server's requests take this many times longer
SIM_TOKENS_PER_REQUEST = 64  # busy traffic: requests finished per generated token
SIM_CPU_FRACTION = 0.1  # process_cpu_seconds_total grows at this share of wall time
SIM_METRICS_TYPE = "text/plain; version=1.0.0; charset=utf-8"  # vLLM 0.32's prometheus_client
SIM_HOLDING_STATES = ("sleeping", "paused", "stalled")  # requests wait, uncounted
SIM_NOT_FOUND = sim_json({"detail": "Not Found"})  # FastAPI's own 404 body


def _sim_engine_total(field: str) -> Any:
    """A read-only property: `field` of SimEngineValues summed over engines, as /metrics shows."""
    return property(lambda sim: sum(getattr(e, field) for e in sim._engines()))


class VLLMSimulator:
    """A vLLM OpenAI server in one of SIM_STATES, on host:port (0 picks a free port).

    Call `await start()` inside a running loop, `set_state()` from that loop's thread, and
    `await stop()` at the end. `control_port` (None: off, 0: any free port) serves
    `GET /_sim/state` and `POST /_sim/state/<name>?key=value` on loopback. With several
    engines, queue and running counts are split over them, engine 0 has the state's KV-cache
    use and the others 80% of it (so "max over engines" and "sum" read differently).
    """

    generation_tokens = _sim_engine_total("generation_tokens")
    prompt_tokens = _sim_engine_total("prompt_tokens")
    requests_running = _sim_engine_total("running")
    requests_waiting = _sim_engine_total("waiting")

    def __init__(self, host: str = "127.0.0.1", port: int = 0, model: str = "sim-model",
                 api_key: Optional[str] = None, dev_mode: bool = False, num_engines: int = 1,
                 metrics_style: str = "v1", token_latency: float = 0.02,
                 dead_exit_after: float = 2.0, state: str = "ready",
                 state_params: Optional[Dict[str, Any]] = None,
                 control_port: Optional[int] = None,
                 log: Optional[Callable[[str], None]] = None) -> None:
        if num_engines < 1:
            raise ValueError("num_engines must be >= 1, got %r" % num_engines)
        if metrics_style not in SIM_METRIC_STYLES:
            raise ValueError("metrics_style %r: expected one of %s" % (
                metrics_style, ", ".join(SIM_METRIC_STYLES)))
        self.host, self.model, self.api_key, self.dev_mode = host, model, api_key, dev_mode
        self.num_engines, self.metrics_style = num_engines, metrics_style
        self.token_latency = token_latency
        self._overrides = {"exit_after": dead_exit_after}
        self._initial = (state, sim_state_params(state, state_params or {}, self._overrides))
        self._port, self._control_port = port, control_port
        self._log = log
        self.hits: "collections.Counter[str]" = collections.Counter()
        self._routes = {"/health": ("GET", self._health), "/metrics": ("GET", self._metrics),
                        "/v1/models": ("GET", self._models),
                        "/v1/completions": ("POST", self._inference),
                        "/v1/chat/completions": ("POST", self._inference)}
        if dev_mode:  # VLLM_SERVER_DEV_MODE=1 adds these; otherwise they are 404
            self._routes.update({"/is_sleeping": ("GET", self._is_sleeping),
                                 "/sleep": ("POST", self._sleep),
                                 "/wake_up": ("POST", self._wake_up),
                                 "/is_paused": ("GET", self._is_paused),
                                 "/pause": ("POST", self._pause),
                                 "/resume": ("POST", self._resume)})
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._main: Optional[SimListener] = None
        self._control: Optional[SimListener] = None
        self.state = "exited"  # `exited` also once a dead engine's process is gone
        self.incarnation = 0  # 1 for the first process; +1 each time the port opens again
        self.process_start_time = self._created = self._pending_start = time.time()
        self._params: Dict[str, Any] = {}
        self._since = time.monotonic()
        self._epoch = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._changed: Optional[asyncio.Event] = None
        self._opened_at = time.monotonic()
        self._reset_counters()

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the ports and enter the initial state (a closed state leaves the port refusing)."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._main = SimListener(self.host, self._port, self._dispatch)
        if self._control_port is not None:
            try:
                loopback = "::1" if ":" in self.host else "127.0.0.1"  # never exposed
                self._control = SimListener(loopback, self._control_port, self._control_dispatch)
            except OSError:
                self._main.close(self._loop, rebind=False)
                raise
            self._control.open(self._loop)
        self._pending_start = time.time()
        self._enter(*self._initial)

    async def stop(self) -> None:
        """Close every socket and end every open connection; the simulator is done."""
        self._epoch += 1  # no timer may change state from now on
        if self._timer is not None:
            self._timer.cancel()
        tasks: List["asyncio.Task[Any]"] = []
        for listener in (self._main, self._control):
            if listener is not None and self._loop is not None:
                tasks.extend(listener.tasks)
                listener.close(self._loop, rebind=False)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._main = self._control = None

    def set_state(self, name: str, **params: Any) -> None:
        """Switch to state `name` (parameters: SIM_STATE_DEFAULTS); ValueError if bad.

        Call it on the simulator's loop (from another thread: loop.call_soon_threadsafe).
        """
        params = sim_state_params(name, params, self._overrides)
        if self._loop is None:
            self._initial = (name, params)
        else:
            self._enter(name, params)

    @property
    def params(self) -> Dict[str, Any]:
        """The current state's parameters, defaults filled in."""
        return dict(self._params)

    @property
    def port(self) -> int:
        """The server port (the real one when 0 was asked for, once started)."""
        return self._main.port if self._main is not None else self._port

    @property
    def control_port(self) -> Optional[int]:
        """The loopback control port, None when there is none."""
        return self._control.port if self._control is not None else None

    @property
    def url(self) -> str:
        """Base URL of the OpenAI server, e.g. http://127.0.0.1:8000."""
        return "http://%s:%d" % ("[%s]" % self.host if ":" in self.host else self.host, self.port)

    @property
    def listening(self) -> bool:
        """Whether the server port accepts connections now."""
        return self._main is not None and self._main.listening

    # ---- state machine ----------------------------------------------------------------------

    def _enter(self, name: str, params: Dict[str, Any]) -> None:
        if self._loop is None or self._main is None or self._changed is None:
            raise RuntimeError("the simulator is stopped: start a new one")
        self._fold()
        self._epoch += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        old, self.state, self._params = self.state, name, params
        if name == "restart" and params.get("seconds") == 0 and self._main.listening:
            # a restart faster than any poll: the new process answers on the same socket, as
            # when a supervisor swaps processes behind a listener it keeps (no refusal at all)
            self._pending_start = time.time()
            self._new_incarnation()
            self.state, params = "ready", sim_state_params("ready", {}, self._overrides)
            self._params = params
        elif name in SIM_CLOSED_STATES:
            if self._main.listening:
                self._pending_start = time.time()  # the next process starts now
            self._main.close(self._loop)
        elif not self._main.listening:
            self._new_incarnation()
            self._main.open(self._loop)
        delay = params.get("exit_after") if name == "dead" else params.get("seconds")
        if delay is not None:
            self._timer = self._loop.call_later(delay, self._timer_fired, self._epoch)
        self._changed.set()
        self._changed = asyncio.Event()
        if self._log is not None:
            shown = " ".join("%s=%s" % kv for kv in sorted(params.items()))
            self._log("vllmsim: %s -> %s %s" % (old, name, shown))

    def _timer_fired(self, epoch: int) -> None:
        if epoch == self._epoch and self._main is not None:
            self.set_state("exited" if self.state == "dead" else "ready")

    def _new_incarnation(self) -> None:
        start = round(self._pending_start, 2)  # /proc start times have 10 ms resolution
        if self.incarnation and start <= self.process_start_time:
            start = self.process_start_time + 0.01
        self.incarnation += 1
        self.process_start_time, self._created = start, time.time()
        self._opened_at = time.monotonic()
        self._reset_counters()

    def _reset_counters(self) -> None:
        n = self.num_engines
        self._gen, self._prompt, self._finished = [0] * n, [0] * n, [0] * n
        self._ttft_count, self._ttft_sum = [0] * n, [0.0] * n
        self._inflight = [0] * n
        self._next_engine = 0

    def _accrued(self) -> int:
        """Tokens generated by simulated traffic since the current state began."""
        if self.state not in ("busy", "saturated"):
            return 0
        return int(self._params["rate"] * (time.monotonic() - self._since))

    def _fold(self) -> None:
        """Make traffic-generated tokens permanent before the state (and its rate) changes."""
        for i, share in enumerate(sim_split(self._accrued(), self.num_engines)):
            self._gen[i] += share
            self._prompt[i] += share // 2
            self._finished[i] += share // SIM_TOKENS_PER_REQUEST
        self._since = time.monotonic()

    def _engines(self) -> List[SimEngineValues]:
        n, p = self.num_engines, self._params
        tokens = sim_split(self._accrued(), n)
        running = sim_split(int(p.get("running", 0)), n)
        waiting = sim_split(int(p.get("waiting", 0)), n)
        kv = float(p.get("kv", 0.0))
        asleep = self.state == "sleeping"
        return [SimEngineValues(
            running=running[i] + self._inflight[i], waiting=waiting[i],
            kv_usage=kv if i == 0 else round(kv * 0.8, 4), sleeping=int(asleep),
            sleep_level=int(p["level"]) if asleep else 0,
            prompt_tokens=self._prompt[i] + tokens[i] // 2,
            generation_tokens=self._gen[i] + tokens[i],
            finished=self._finished[i] + tokens[i] // SIM_TOKENS_PER_REQUEST,
            ttft_count=self._ttft_count[i], ttft_sum=self._ttft_sum[i]) for i in range(n)]

    def snapshot(self) -> SimMetricsSnapshot:
        """The numbers /metrics would show right now."""
        cpu = round((time.monotonic() - self._opened_at) * SIM_CPU_FRACTION, 2)
        return SimMetricsSnapshot(self.model, self.metrics_style, self.process_start_time,
                                  self._created, cpu, self._engines())

    def status(self) -> Dict[str, Any]:
        """The simulator's state as the control port reports it."""
        return {"state": self.state, "params": self._params, "listening": self.listening,
                "port": self.port, "incarnation": self.incarnation,
                "process_start_time_seconds": self.process_start_time,
                "generation_tokens": self.generation_tokens, "prompt_tokens": self.prompt_tokens,
                "requests_running": self.requests_running,
                "requests_waiting": self.requests_waiting}

    # ---- the OpenAI server ------------------------------------------------------------------

    async def _dispatch(self, req: Request) -> SimReply:
        self.hits[req.path] += 1
        if req.path.startswith("/v1") and self.api_key is not None and not self._authorized(req):
            return sim_reply(401, sim_json({"error": "Unauthorized"}))  # vLLM's middleware
        route = self._routes.get(req.path)
        if route is None:
            return sim_reply(404, SIM_NOT_FOUND)
        if req.method != route[0]:
            return sim_reply(405, sim_json({"detail": "Method Not Allowed"}),
                             extra=[("allow", route[0])])
        return await route[1](req)

    def _authorized(self, req: Request) -> bool:
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.encode("latin-1"), (self.api_key or "").encode("utf-8"))

    async def _health(self, req: Request) -> SimReply:
        return sim_reply(503 if self.state == "dead" else 200)

    async def _metrics(self, req: Request) -> SimReply:
        return sim_reply(200, render_sim_metrics(self.snapshot()), SIM_METRICS_TYPE)

    async def _models(self, req: Request) -> SimReply:
        return sim_reply(200, sim_models_body(self.model, int(self._created)))

    async def _is_sleeping(self, req: Request) -> SimReply:
        return sim_reply(200, sim_json({"is_sleeping": self.state == "sleeping"}))

    async def _sleep(self, req: Request) -> SimReply:
        try:
            self.set_state("sleeping", level=dict(req.query_pairs()).get("level", "1"))
        except ValueError as exc:
            return sim_reply(400, sim_error_body(str(exc), "BadRequestError", 400, "level"))
        return sim_reply(200, sim_json({"status": "sleeping", "level": self._params["level"]}))

    async def _wake_up(self, req: Request) -> SimReply:
        if self.state == "sleeping":
            self.set_state("ready")
        return sim_reply(200, sim_json({"status": "awake", "tags": None}))

    async def _is_paused(self, req: Request) -> SimReply:
        return sim_reply(200, sim_json({"is_paused": self.state == "paused"}))

    async def _pause(self, req: Request) -> SimReply:
        if self.state != "paused":
            self.set_state("paused")
        return sim_reply(200, sim_json({"status": "paused"}))

    async def _resume(self, req: Request) -> SimReply:
        if self.state == "paused":
            self.set_state("ready")
        return sim_reply(200, sim_json({"status": "resumed"}))

    async def _inference(self, req: Request) -> SimReply:
        chat = req.path == "/v1/chat/completions"
        try:
            tokens, prompt = sim_parse_inference(req.body, chat, self.model)
        except SimRequestError as exc:
            return sim_reply(exc.status, exc.body)
        if not await self._admit():
            return self._dead_reply()
        engine, incarnation = self._next_engine, self.incarnation
        self._next_engine = (engine + 1) % self.num_engines
        slow = SIM_SATURATED_SLOWDOWN if self.state == "saturated" else 1.0
        took = self.token_latency * tokens * slow
        self._inflight[engine] += 1
        try:
            await asyncio.sleep(took)
        finally:
            if incarnation == self.incarnation:  # a new process has fresh counters
                self._inflight[engine] -= 1
        if not await self._admit():  # an engine that hung or died mid-request
            return self._dead_reply()
        self._gen[engine] += tokens
        self._prompt[engine] += prompt
        self._finished[engine] += 1
        self._ttft_count[engine] += 1
        self._ttft_sum[engine] += took / tokens
        return sim_reply(200, sim_completion_body(chat, self.model, uuid.uuid4().hex,
                                                  int(time.time()), tokens, prompt))

    async def _admit(self) -> bool:
        """Wait while the engine schedules nothing; False when it is dead.

        Asleep or paused, a new request is accepted and held until wake_up or resume; hung,
        it never finishes. None of them shows in running or waiting (a real 0.32 read 0 and 0
        while holding one; a hung engine's gauges are frozen).
        """
        while self.state in SIM_HOLDING_STATES and self._changed is not None:
            await self._changed.wait()
        return self.state != "dead"

    def _dead_reply(self) -> SimReply:
        """EngineDeadError: 500, and vLLM's handler makes the server exit right after."""
        if self._params.get("exit_on_request") and self._loop is not None:
            self._loop.call_later(SIM_DEAD_REQUEST_EXIT, self._timer_fired, self._epoch)
        return sim_reply(500, sim_error_body(SIM_ENGINE_DEAD_MESSAGE, "InternalServerError", 500))

    # ---- the control port -------------------------------------------------------------------

    async def _control_dispatch(self, req: Request) -> SimReply:
        if req.path == "/_sim/state" and req.method == "GET":
            return sim_reply(200, sim_json(self.status()))
        if not (req.path.startswith("/_sim/state/") and req.method == "POST"):
            return sim_reply(404, sim_json({"error": "control: GET /_sim/state or "
                                                     "POST /_sim/state/<name>?key=value"}))
        params: Dict[str, Any] = dict(req.query_pairs())
        try:
            body = json.loads(req.body.decode("utf-8")) if req.body.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object of state parameters")
            params.update(body)
            self.set_state(req.path[len("/_sim/state/"):], **params)
        except ValueError as exc:
            return sim_reply(400, sim_json({"error": str(exc)}))
        return sim_reply(200, sim_json(self.status()))
