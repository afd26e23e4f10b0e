"""What the vLLM simulator (probed/sim/vllm.py) says, as bytes: states, OpenAI bodies, /metrics.

Pure functions and tables, no I/O and no clock (callers pass timestamps in). The shapes follow
vLLM's OpenAI server: errors are `{"error": {"message", "type", "param", "code"}}`
(vllm/entrypoints/utils.py create_error_response); a dead engine's message is EngineDeadError's
own text. /metrics copies the real vLLM 0.29 (V1) capture in ../shared/fixtures/metrics/real:
prometheus_client's float format, label names sorted (so `le` falls between `engine` and
`model_name`), a `_created` gauge after every counter and histogram. Older servers are selected
by `style`: "v1" (recent V1: `vllm:kv_cache_usage_perc`, `vllm:engine_sleep_state`), "early-v1"
(`engine` label, still `vllm:gpu_cache_usage_perc`, no sleep gauge), "v0" (only `model_name`,
one series, `vllm:num_requests_swapped`).
"""

import json
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

SIM_CLOSED_STATES = ("loading", "restart", "exited")  # nothing listens on the port
# Per state, its parameters and their defaults (None: "not set", only for durations).
SIM_STATE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "loading": {"seconds": None},  # None: until another state is set; else then `ready`
    "ready": {"kv": 0.0},
    "busy": {"running": 4, "waiting": 0, "kv": 0.35, "rate": 50.0},
    "saturated": {"running": 64, "waiting": 40, "kv": 0.98, "rate": 200.0},
    "sleeping": {"level": 1},
    "paused": {},  # dev mode POST /pause: awake, but new requests are held until /resume
    "stalled": {"running": 4, "waiting": 0, "kv": 0.35},
    "dead": {"exit_after": 2.0, "exit_on_request": 1},  # a real 0.32: /health 503 for 0-4 s
    "restart": {"seconds": 3.0},
    "exited": {},
}
SIM_STATES = tuple(SIM_STATE_DEFAULTS)
SIM_MAX_MODEL_LEN = 4096
SIM_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
SIM_WORDS = ("Hello", " from", " a", " simulated", " vLLM", ".")
SIM_ENGINE_DEAD_MESSAGE = ("EngineCore encountered an issue. See stack trace (above) for the "
                           "root cause.")

SIM_METRIC_STYLES = ("v1", "early-v1", "v0")
SIM_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
SIM_FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
SIM_SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
SIM_PROCESS_MAX_FDS = 1048576.0
SIM_PROCESS_VIRTUAL_BYTES = 8.59772928e09
SIM_PROCESS_RESIDENT_BYTES = 1.793798144e09


class SimRequestError(Exception):
    """An inference request the simulator answers with an OpenAI-style error."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError",
                 param: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = sim_error_body(message, err_type, status, param)


def _sim_coerce(state: str, key: str, value: Any, default: Any) -> Any:
    if default is None:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        default = 0.0
    try:
        number = int(value) if isinstance(default, int) else float(value)
    except (TypeError, ValueError):
        raise ValueError("state %s: %s=%r is not a number" % (state, key, value)) from None
    if not number >= 0:
        raise ValueError("state %s: %s=%r must be >= 0" % (state, key, value))
    if key == "kv" and number > 1:
        raise ValueError("state %s: kv=%r is a fraction: expected 0..1" % (state, value))
    if key == "level" and number not in (0, 1, 2):
        raise ValueError("state %s: level=%r: expected 0, 1 or 2" % (state, value))
    return number


def sim_state_params(name: str, given: Dict[str, Any],
                     overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The full parameter set of state `name`: defaults, then `overrides`, then `given`.

    Values may be strings (from a query string or the command line).
    """
    if name not in SIM_STATE_DEFAULTS:
        raise ValueError("unknown state %r: expected one of %s" % (name, ", ".join(SIM_STATES)))
    params = dict(SIM_STATE_DEFAULTS[name])
    params.update({k: v for k, v in (overrides or {}).items() if k in params})
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ValueError("state %s has no parameter %s: expected %s" % (
            name, ", ".join(unknown), ", ".join(sorted(params)) or "none"))
    for key, value in given.items():
        params[key] = _sim_coerce(name, key, value, SIM_STATE_DEFAULTS[name][key])
    return params


def sim_json(obj: Any) -> bytes:
    """Compact JSON, as FastAPI's JSONResponse writes it."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def sim_error_body(message: str, err_type: str, code: int, param: Optional[str] = None) -> bytes:
    """vLLM's ErrorResponse: `{"error": {"message", "type", "param", "code"}}`."""
    return sim_json({"error": {"message": message, "type": err_type, "param": param,
                               "code": code}})


def sim_models_body(model: str, created: int) -> bytes:
    """`GET /v1/models`: the OpenAI list with the one served model."""
    return sim_json({"object": "list", "data": [{
        "id": model, "object": "model", "created": created, "owned_by": "vllm", "root": model,
        "parent": None, "max_model_len": SIM_MAX_MODEL_LEN, "permission": [{
            "id": "modelperm-sim", "object": "model_permission", "created": created,
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
            "organization": "*", "group": None, "is_blocking": False}]}]})


def sim_split(total: int, parts: int) -> List[int]:
    """`total` spread over `parts` as evenly as integers allow, the remainder first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _sim_count_words(text: Any) -> int:
    if isinstance(text, list):  # a prompt may be a list of strings, or content parts
        return sum(_sim_count_words(t.get("text", "") if isinstance(t, dict) else t) for t in text)
    return len(str(text).split()) if text is not None else 0


def sim_parse_inference(body: bytes, chat: bool, model: str) -> Tuple[int, int]:
    """(max_tokens, prompt_tokens) of a completion request; SimRequestError when it is bad."""
    try:
        payload = json.loads(body.decode("utf-8")) if body else None
    except ValueError:
        raise SimRequestError(400, "request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise SimRequestError(400, "request body must be a JSON object")
    asked = payload.get("model")
    if asked is not None and asked != model:
        raise SimRequestError(404, "The model `%s` does not exist." % asked, "NotFoundError",
                              "model")
    if payload.get("stream"):
        raise SimRequestError(400, "the vLLM simulator does not stream: send stream=false",
                              param="stream")
    if chat:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise SimRequestError(400, "messages: expected a non-empty list", param="messages")
        prompt = sum(_sim_count_words(m.get("content")) + 4 for m in messages
                     if isinstance(m, dict))
        wanted = payload.get("max_completion_tokens", payload.get("max_tokens"))
    else:
        if "prompt" not in payload:
            raise SimRequestError(400, "prompt: field required", param="prompt")
        prompt = _sim_count_words(payload["prompt"])
        wanted = payload.get("max_tokens")
    wanted = SIM_DEFAULT_MAX_TOKENS if wanted is None else wanted
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise SimRequestError(400, "max_tokens must be an integer >= 1, got %r" % (wanted,),
                              param="max_tokens")
    prompt = max(prompt, 1)
    if prompt + wanted > SIM_MAX_MODEL_LEN:
        raise SimRequestError(400, "This model's maximum context length is %d tokens. However, you "
                              "requested %d tokens (%d in the messages, %d in the completion)." % (
                                  SIM_MAX_MODEL_LEN, prompt + wanted, prompt, wanted))
    return wanted, prompt


def sim_completion_body(chat: bool, model: str, request_id: str, created: int, tokens: int,
                        prompt_tokens: int) -> bytes:
    """An OpenAI completion (or chat completion) that generated `tokens` tokens and hit the limit."""
    text = "".join(SIM_WORDS[i % len(SIM_WORDS)] for i in range(tokens))
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + tokens,
             "completion_tokens": tokens, "prompt_tokens_details": None}
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                          "tool_calls": [], "reasoning_content": None},
                  "logprobs": None, "finish_reason": "length", "stop_reason": None}
        return sim_json({"id": "chatcmpl-" + request_id, "object": "chat.completion",
                         "created": created, "model": model, "choices": [choice],
                         "usage": usage, "prompt_logprobs": None})
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
              "stop_reason": None, "prompt_logprobs": None}
    return sim_json({"id": "cmpl-" + request_id, "object": "text_completion", "created": created,
                     "model": model, "choices": [choice], "usage": usage})


# ---- /metrics ----------------------------------------------------------------------------------

class SimEngineValues(NamedTuple):
    """What one engine (data-parallel rank) reports; counters are totals since process start."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    sleep_level: int = 0  # while sleeping: 0 nothing freed, 1 weights offloaded, 2 discarded
    sleeping: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: int = 0  # requests that ended with finished_reason="length"
    ttft_count: int = 0
    ttft_sum: float = 0.0


class SimMetricsSnapshot:
    """Everything one /metrics body shows: the process, and one SimEngineValues per engine."""

    __slots__ = ("model", "style", "process_start", "created", "cpu_seconds", "engines")

    def __init__(self, model: str, style: str, process_start: float, created: float,
                 cpu_seconds: float, engines: Sequence[SimEngineValues]) -> None:
        if style not in SIM_METRIC_STYLES:
            raise ValueError("metrics style %r: expected one of %s" % (
                style, ", ".join(SIM_METRIC_STYLES)))
        self.model, self.style, self.cpu_seconds = model, style, cpu_seconds
        self.process_start = process_start  # process_start_time_seconds (epoch seconds)
        self.created = created  # epoch seconds the counters were created (the `_created` values)
        self.engines = list(engines)


def sim_go_float(value: float) -> str:
    """A float as prometheus_client writes it: `0.0`, `584.0`, `1.789901963352685e+09`."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go prints large numbers in exponent form; so does the client
        mantissa = ("%s.%s%s" % (text[0], text[1:dot], text[dot + 1:])).rstrip("0.")
        return "%se+%02d" % (mantissa, dot - 1)
    return text


SimSeries = List[Tuple[Dict[str, str], float]]  # (labels, value) of each sample of a family
_SIM_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", '"': '\\"'})


def _sim_lines(name: str, samples: SimSeries) -> List[str]:
    lines = []
    for labels, value in samples:
        inner = ",".join('%s="%s"' % (k, labels[k].translate(_SIM_LABEL_ESCAPES))
                         for k in sorted(labels))
        lines.append("%s%s %s" % (name, "{%s}" % inner if labels else "", sim_go_float(value)))
    return lines


def _sim_family(out: List[str], name: str, kind: str, help_text: str, samples: SimSeries) -> None:
    out.append("# HELP %s %s" % (name, help_text))
    out.append("# TYPE %s %s" % (name, kind))
    out.extend(_sim_lines(name, samples))


def _sim_counter(out: List[str], snap: SimMetricsSnapshot, base: str, help_text: str,
                 samples: SimSeries) -> None:
    _sim_family(out, base + "_total", "counter", help_text, samples)
    _sim_family(out, base + "_created", "gauge", help_text,
                [(labels, snap.created) for labels, _ in samples])


def _sim_series(snap: SimMetricsSnapshot) -> List[Tuple[Dict[str, str], SimEngineValues]]:
    """Label sets and values per series: one per engine, or one summed series for v0."""
    if snap.style != "v0":
        return [({"engine": str(i), "model_name": snap.model}, e)
                for i, e in enumerate(snap.engines)]
    # Queues and counters add up; KV-cache use is the fullest engine's.
    total = SimEngineValues(*(sum(column) for column in zip(*snap.engines)))._replace(
        kv_usage=max([e.kv_usage for e in snap.engines] or [0.0]), sleep_level=0, sleeping=0)
    return [({"model_name": snap.model}, total)]


def _sim_sleep_gauge(engine: SimEngineValues, level: int) -> int:
    """One engine_sleep_state series: `awake` is 1 while awake; level 1 or 2 is 1 while asleep
    at that level (a real 0.32 asleep at level 0 shows all three at 0)."""
    if level == 0:
        return 0 if engine.sleeping else 1
    return 1 if engine.sleeping and engine.sleep_level == level else 0


def _sim_engine_gauges(out: List[str], snap: SimMetricsSnapshot,
                       series: List[Tuple[Dict[str, str], SimEngineValues]]) -> None:
    _sim_family(out, "vllm:num_requests_running", "gauge",
                "Number of requests in model execution batches.",
                [(lab, e.running) for lab, e in series])
    _sim_family(out, "vllm:num_requests_waiting", "gauge",
                "Number of requests waiting to be processed.",
                [(lab, e.waiting) for lab, e in series])
    kv_usage = [(lab, e.kv_usage) for lab, e in series]
    if snap.style != "v1":
        if snap.style == "v0":
            _sim_family(out, "vllm:num_requests_swapped", "gauge",
                        "Number of requests swapped to CPU.", [(lab, 0) for lab, _ in series])
        _sim_family(out, "vllm:gpu_cache_usage_perc", "gauge",
                    "GPU KV-cache usage. 1 means 100 percent usage.", kv_usage)
        return
    _sim_family(out, "vllm:num_requests_waiting_by_reason", "gauge",
                "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
                "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, "
                "KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
                [(dict(lab, reason=reason), e.waiting if reason == "capacity" else 0)
                 for lab, e in series for reason in ("capacity", "deferred")])
    _sim_family(out, "vllm:engine_sleep_state", "gauge",
                "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
                "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep "
                "level 2.",
                [(dict(lab, sleep_state=state), _sim_sleep_gauge(e, level))
                 for lab, e in series for level, state in enumerate(SIM_SLEEP_STATES)])
    _sim_family(out, "vllm:kv_cache_usage_perc", "gauge",
                "KV-cache usage. 1 means 100 percent usage.", kv_usage)


def _sim_ttft_family(out: List[str], snap: SimMetricsSnapshot,
                     series: List[Tuple[Dict[str, str], SimEngineValues]]) -> None:
    name = "vllm:time_to_first_token_seconds"
    help_text = "Histogram of time to first token in seconds."
    _sim_family(out, name, "histogram", help_text, [])
    for labels, e in series:
        mean = e.ttft_sum / e.ttft_count if e.ttft_count else 0.0
        buckets: SimSeries = [  # every request is put at the mean: enough for a probe
            (dict(labels, le=sim_go_float(bound)), e.ttft_count if mean <= bound else 0)
            for bound in SIM_TTFT_BUCKETS]
        buckets.append((dict(labels, le="+Inf"), e.ttft_count))
        out.extend(_sim_lines(name + "_bucket", buckets))
        out.extend(_sim_lines(name + "_count", [(labels, e.ttft_count)]))
        out.extend(_sim_lines(name + "_sum", [(labels, e.ttft_sum)]))
    _sim_family(out, name + "_created", "gauge", help_text,
                [(labels, snap.created) for labels, _ in series])


def render_sim_metrics(snap: SimMetricsSnapshot) -> bytes:
    """The whole /metrics body for `snap`, UTF-8, ending in a newline."""
    out: List[str] = []
    for name, kind, help_text, value in (
            ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
             SIM_PROCESS_VIRTUAL_BYTES),
            ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
             SIM_PROCESS_RESIDENT_BYTES),
            ("process_start_time_seconds", "gauge",
             "Start time of the process since unix epoch in seconds.", snap.process_start),
            ("process_cpu_seconds_total", "counter",
             "Total user and system CPU time spent in seconds.", snap.cpu_seconds),
            ("process_max_fds", "gauge", "Maximum number of open file descriptors.",
             SIM_PROCESS_MAX_FDS)):
        _sim_family(out, name, kind, help_text, [({}, value)])
    series = _sim_series(snap)
    _sim_engine_gauges(out, snap, series)
    _sim_counter(out, snap, "vllm:num_preemptions",
                 "Cumulative number of preemption from the engine.", [(lab, 0) for lab, _ in series])
    _sim_counter(out, snap, "vllm:prompt_tokens", "Number of prefill tokens processed.",
                 [(lab, e.prompt_tokens) for lab, e in series])
    _sim_counter(out, snap, "vllm:generation_tokens", "Number of generation tokens processed.",
                 [(lab, e.generation_tokens) for lab, e in series])
    _sim_counter(out, snap, "vllm:request_success", "Count of successfully processed requests.",
                 [(dict(lab, finished_reason=reason), e.finished if reason == "length" else 0)
                  for lab, e in series for reason in SIM_FINISHED_REASONS])
    _sim_ttft_family(out, snap, series)
    out.append("")
    return "\n".join(out).encode("utf-8")
