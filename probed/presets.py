"""Presets: one flag per backend that expands into named checks (shown by --print-config).

Each preset is plain data (raw check dicts, exactly what `--check` would give), so nothing
here knows how checks run. The mapping to groups: saturation and sleep touch
`ready` only; death, stalls and failed inferences touch `live`; `started` needs the server
healthy, the model listed and one successful inference.
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .values import (
    ConfigError,
    parse_bool,
    parse_count,
    format_duration,
    parse_duration,
    parse_http_url,
    parse_number,
    redact_userinfo,
)

RawCheck = Dict[str, Any]


def parse_fraction(text: str) -> float:
    """A KV-cache share between 0 and 1 (vLLM reports 0.0-1.0, not percent)."""
    value = parse_number(text)
    if not 0 < value <= 1:
        raise ValueError("expected a fraction in (0, 1], e.g. 0.95")
    return value


# API paths people copy along with a base URL (the OpenAI base URL ends in /v1): a preset adds
# these itself, so `--vllm http://h:8000/v1` would poll /v1/health and /v1/v1/models.
KNOWN_API_SUFFIXES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1", "/health",
                      "/metrics", "/generate")
BASE_URL_FLAGS = ("vllm", "tgi", "sglang", "llamacpp", "ray", "ray_agent")


def parse_base_url(text: str) -> str:
    """A server base URL (scheme, host, port, and a path prefix when the server sits behind
    one), without a trailing slash or a known API path (see preset_notes)."""
    url = parse_http_url(text).rstrip("/")
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    path = slash + path
    for suffix in KNOWN_API_SUFFIXES:
        if path.endswith(suffix):
            path = path[:-len(suffix)].rstrip("/")
            break
    return "%s://%s%s" % (scheme, host, path)


def preset_notes(opts: Mapping[str, Any], given: Mapping[str, str]) -> List[str]:
    """One line per base URL the presets changed from what the user gave (logged at start)."""
    notes = []
    for name in BASE_URL_FLAGS:
        text = given.get(name)
        if text is not None and opts.get(name) and text.strip().rstrip("/") != opts[name]:
            notes.append("--%s %s: using the base URL %s (the preset adds /health, /v1/models "
                         "and /metrics itself)" % (name.replace("_", "-"),
                                                   redact_userinfo(text.strip()), opts[name]))
    return notes


# Options and the server flags whose checks read them: given alone, an option would be ignored.
OPTION_READERS = {
    "max_waiting": ("vllm", "tgi", "sglang", "llamacpp"),
    "max_kv_cache": ("vllm", "sglang"),  # TGI and llama.cpp export no KV-cache gauge
    "stall_after": ("vllm", "sglang", "llamacpp"),  # TGI has no progress check
}


def unread_option(opts: Mapping[str, Any], given: Mapping[str, str]) -> Optional[str]:
    """A config error for an option no given server flag reads, or None."""
    for option, readers in OPTION_READERS.items():
        if option in given and not any(opts.get(r) for r in readers):
            return "--%s %s: no server flag given reads it (it is read with %s)" % (
                option.replace("_", "-"), given[option],
                ", ".join("--" + r for r in readers))
    return None


def parse_gpu_option(text: str) -> str:
    """--gpu: auto, all, or GPUs, checked as the gpu check's `devices=` key checks them."""
    from .gpufaults import parse_device_list  # only with --gpu: the GPU code is RSS (issue 18)

    parse_device_list(text)
    return text.strip()


# (flag, parser, default, help): read like every serve flag (flag, env, config file).
PRESET_OPTIONS: List[Tuple[str, Callable[[str], Any], Any, str]] = [
    ("--vllm", parse_base_url, None, "vLLM server base URL: health, model, sleep, queue, "
                                     "KV cache, progress and inference checks"),
    ("--tgi", parse_base_url, None, "TGI server base URL"),
    ("--sglang", parse_base_url, None, "SGLang server base URL"),
    ("--llamacpp", parse_base_url, None, "llama.cpp server base URL"),
    ("--vllm-endpoint", parse_http_url, None, "Multi Node Prober compatible: the vLLM base URL "
                                              "(or its /health URL)"),
    ("--model", str, None, "model id that must be served (default: any)"),
    ("--max-waiting", parse_count, None, "ready fails above this many queued requests"),
    ("--max-kv-cache", parse_fraction, None, "ready fails above this KV-cache use (0-1)"),
    ("--api-key-file", str, None, "file with the server's API key (default: $VLLM_API_KEY, "
                                  "$LLAMA_API_KEY or $OPENAI_API_KEY)"),
    ("--vllm-dev-mode", parse_bool, False, "vLLM has VLLM_SERVER_DEV_MODE=1: ask /is_paused "
                                           "(see README: an engine call)"),
    ("--idle-sleep", parse_bool, False, "vLLM sleeps itself when idle (--sleep-idle-ttl): "
                                        "sleeping stays ready"),
    ("--inference-every", parse_duration, None, "also run the synthetic inference this often "
                                                "after start (live); default: only until started"),
    ("--inference-timeout", parse_duration, None, "deadline of one synthetic inference "
                                                  "(default 30s; 100s with --vllm-endpoint)"),
    ("--stall-after", parse_duration, 120.0, "live fails when requests run but no token is "
                                             "generated for this long (0: off)"),
    ("--ray", parse_base_url, None, "Ray dashboard URL (leader): GCS health, ALIVE nodes, GPUs"),
    ("--ray-nodes", parse_count, None, "ALIVE Ray nodes needed (default: $LWS_GROUP_SIZE or 1)"),
    ("--ray-gpus", parse_count, 0, "GPUs needed over ALIVE Ray nodes"),
    ("--ray-grace", parse_duration, None, "also fail live when the Ray cluster has been short "
                                          "this long (recreates the group; default: never)"),
    ("--ray-agent", parse_base_url, None, "this node's Ray agent URL (:52365): raylet health"),
    ("--worker-ranks", parse_count, None, "multi-node without Ray (leader): ready needs a "
                                          "heartbeat from each of N worker ranks (--beat-to)"),
    ("--worker-window", parse_duration, 15.0, "a worker rank silent this long is lost (three "
                                              "of the workers' --beat-every)"),
    ("--gpu", parse_gpu_option, None,
     "NVIDIA GPU faults through NVML on auto (the GPUs this container's server sees), all, or "
     "listed GPUs (0,1 or GPU-8f3e...): faults a restart fixes fail live (with a --vllm, "
     "--sglang, --tgi or --vllm-endpoint server), the others ready"),
]
# Servers whose restarts probed sees (a new process start time, or the port refused while the
# model loads): only with one of them can live fail on a fault a restart fixes, since only then
# does probed know when that restart happened and stop failing.
GPU_RESTART_VISIBLE = ("vllm", "sglang", "tgi", "vllm_endpoint")


Names = Tuple[str, ...]  # metric names, fallbacks in order: the first present wins


class BackendFlavour:
    """What differs between servers: metric names and which signals exist."""

    def __init__(self, name: str, queue: Names, running: Names, counter: Names,
                 kv_cache: Names = (), hard_status: str = "", models: bool = True,
                 inference_api: str = "completions", sleep: bool = False,
                 process: bool = True, key_envs: Names = (),
                 health_timeout: Optional[str] = None, loading_text: str = "") -> None:
        self.name = name
        self.queue = queue
        self.running = running
        self.counter = counter
        self.kv_cache = kv_cache
        self.hard_status = hard_status
        self.models = models
        self.inference_api = inference_api
        self.sleep = sleep
        self.process = process  # tells its process apart (start time gauge or identity header)
        self.key_envs = key_envs  # where the server's API key is found when no file is given
        self.health_timeout = health_timeout
        self.loading_text = loading_text  # in a failing /health: loading, a new incarnation


OPENAI_KEY_ENVS = ("OPENAI_API_KEY",)
# The API server answers slowly while it is busy (a real vLLM on 2 CPU cores took 1-3 s for
# /metrics and /v1/models during a burst): a slow reply is no news about the model, sleep,
# queue or progress. /health keeps the 1 s default: its fail-after 3 absorbs slow replies.
PRESET_API_TIMEOUT = "5s"


def sglang_names(suffix: str) -> Names:
    """SGLang exports `sglang:` names, and `sglang_` ones behind its router: both, colon first."""
    return ("sglang:" + suffix, "sglang_" + suffix)


FLAVOURS = {
    "vllm": BackendFlavour("vllm", ("vllm:num_requests_waiting",),
                           ("vllm:num_requests_running",), ("vllm:generation_tokens_total",),
                           ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
                           hard_status="503", sleep=True,
                           key_envs=("VLLM_API_KEY",) + OPENAI_KEY_ENVS),
    # TGI: the port opens only when warm; /health 503 means unhealthy; counters lack _total.
    "tgi": BackendFlavour("tgi", ("tgi_queue_size",), ("tgi_batch_current_size",), (),
                          models=False, inference_api="tgi", process=False),
    # SGLang: /health is 503 while starting, so it is not hard evidence of death; it runs a
    # 1-token generation with a 20 s internal timeout, so its poll gets longer than that.
    "sglang": BackendFlavour("sglang", sglang_names("num_queue_reqs"),
                             sglang_names("num_running_reqs"),
                             sglang_names("generation_tokens_total"), sglang_names("token_usage"),
                             key_envs=OPENAI_KEY_ENVS, health_timeout="25s"),
    # llama.cpp: /health 503 "Loading model" means not started yet, never dead. Its
    # tokens_predicted_total rises only when a request finishes (one long generation looks
    # flat); n_decode_total rises every decode step. --api-key covers /metrics too. Its idle
    # sleep (--sleep-idle-seconds) is the only sleep it has and wakes on the next request, so
    # it needs no awake check: such a pod stays ready.
    "llamacpp": BackendFlavour("llamacpp", ("llamacpp:requests_deferred",),
                               ("llamacpp:requests_processing",),
                               ("llamacpp:n_decode_total", "llamacpp:tokens_predicted_total"),
                               models=False, key_envs=("LLAMA_API_KEY",) + OPENAI_KEY_ENVS,
                               loading_text="Loading model"),
}


def listed(names: Names) -> Any:
    """One name as a string, fallbacks as a list (what --print-config then shows)."""
    return names[0] if len(names) == 1 else list(names)


def server_key(flavour: BackendFlavour, opts: Mapping[str, Any]) -> Dict[str, str]:
    """The API key source every check but /health sends: --api-key-file, else the variables."""
    if opts.get("api_key_file"):
        return {"token-file": opts["api_key_file"]}
    return {"token-env": ",".join(flavour.key_envs)} if flavour.key_envs else {}


def scraping(token: Dict[str, str]) -> Dict[str, str]:
    """The keys of a check that reads the API (/metrics, /v1/models, /is_paused): the API key
    and a timeout that fits a busy server."""
    return dict(token, timeout=PRESET_API_TIMEOUT)


def backend_checks(flavour: BackendFlavour, base: str, opts: Mapping[str, Any]) -> List[RawCheck]:
    """The named checks one backend flag expands into."""
    n = flavour.name
    token = server_key(flavour, opts)
    scrape = scraping(token)
    checks: List[RawCheck] = [dict(
        kind="http", name=n + "-health", url=base + "/health",
        probes="live,ready,started", expect="200", **{"fail-after": "3"},
        **({"hard": flavour.hard_status} if flavour.hard_status else {}),
        **({"timeout": flavour.health_timeout} if flavour.health_timeout else {}),
        **({"loading": flavour.loading_text} if flavour.loading_text else {}))]
    if flavour.models:
        checks.append(dict(kind="models", name=n + "-model", url=base, probes="ready,started",
                           **({"model": opts["model"]} if opts.get("model") else {}), **scrape))
    if flavour.sleep:
        checks.append(dict(kind="awake", name=n + "-awake", url=base, probes="ready", **scrape,
                           **({"idle-sleep": "true"} if opts.get("idle_sleep") else {}),
                           **({"ask-engine": "true"} if opts.get("vllm_dev_mode") else {})))
    metrics = base + "/metrics"
    if opts.get("max_waiting") is not None:
        checks.append(dict(kind="metric", name=n + "-queue", url=metrics,
                           metric=listed(flavour.queue), agg="sum",
                           max="%g" % opts["max_waiting"], probes="ready", **scrape))
    if opts.get("max_kv_cache") is not None and flavour.kv_cache:
        checks.append(dict(kind="metric", name=n + "-kv-cache", url=metrics,
                           metric=list(flavour.kv_cache), agg="max",
                           max="%g" % opts["max_kv_cache"], probes="ready", **scrape))
    stall = opts.get("stall_after")
    if flavour.counter and flavour.running and stall:
        checks.append(dict(kind="progress", name=n + "-progress", url=metrics,
                           running=listed(flavour.running), counter=listed(flavour.counter),
                           **{"stall-after": format_duration(stall)}, probes="live", **scrape))
    if flavour.running:
        checks.append(inflight_check(flavour, base, scrape, bool(opts.get("vllm_dev_mode"))))
    if flavour.process:
        checks.append(dict(kind="process", name=n + "-process", url=metrics, probes="",
                           **scrape))
    checks.append(inference_check(flavour, base, opts, token))
    return checks


def inflight_check(flavour: BackendFlavour, base: str, token: Dict[str, str],
                   dev_mode: bool) -> RawCheck:
    """Requests in flight for the preStop drain; a sleeping or paused vLLM engine holds
    requests /metrics does not count, so there the count is unknown (the drain waits)."""
    check: RawCheck = dict(kind="inflight", name=flavour.name + "-inflight",
                           url=base + "/metrics", metric=list(flavour.running + flavour.queue),
                           probes="", **token)
    if flavour.sleep:
        check["awake-metric"] = 'vllm:engine_sleep_state{sleep_state="awake"}'
        if dev_mode:
            check["paused-url"] = base + "/is_paused"
    return check


def inference_check(flavour: BackendFlavour, base: str, opts: Mapping[str, Any],
                    token: Dict[str, str]) -> RawCheck:
    """One synthetic inference: part of `started`, and of `live` with --inference-every."""
    every = opts.get("inference_every")
    check: RawCheck = dict(kind="inference", name=flavour.name + "-inference",
                           timeout=format_duration(opts.get("inference_timeout") or 30.0),
                           probes="live,started" if every else "started", **token)
    if flavour.inference_api == "tgi":
        check.update(url=base + "/generate", api="json", **{"expect-field": "generated_text"},
                     body='{"inputs": "Hi", "parameters": {"max_new_tokens": 1}}')
    else:
        check.update(url=base, api=flavour.inference_api)
        if opts.get("model"):
            check["model"] = opts["model"]
    if every:
        check["interval"] = format_duration(every)
        if flavour.counter:
            check.update({"idle-only": "true", "metrics-url": base + "/metrics"})
    return check


def multinode_prober_checks(health_url: str, opts: Mapping[str, Any]) -> List[RawCheck]:
    """--vllm-endpoint: the Multi Node Prober's /healthz, /readyz (vLLM /health) and /startupz
    (a chat completion), with its 100 s inference timeout unless --inference-timeout is given."""
    # Go's prober GETs endpoint + "/health": a base URL works there, and its README's /health
    # URL (which never worked in Go) is taken as given.
    trimmed = health_url.rstrip("/")
    base = trimmed[:-len("/health")] if trimmed.endswith("/health") else trimmed
    return [
        dict(kind="http", name="vllm-health", url=base + "/health", probes="live,ready,started",
             expect="200", hard="503"),
        dict(kind="inference", name="vllm-inference", url=base.rstrip("/"), api="chat",
             probes="started", timeout=format_duration(opts.get("inference_timeout") or 100.0)),
    ]


def worker_ranks_check(ranks: int, window: float) -> RawCheck:
    """--worker-ranks N: the leader of a multi-node vLLM without Ray is ready only while all N
    worker ranks beat (pushed to its admin listener by each worker's `--beat-to`)."""
    return dict(kind="heartbeat", name="ranks", expect=str(ranks),
                window=format_duration(window), probes="ready")


def healthchecker_checks(env: Mapping[str, str]) -> List[RawCheck]:
    """The LLM Healthchecker's environment: one metric against a threshold on /health."""
    url = env.get("METRICS_ENDPOINT")
    metric = env.get("METRIC_TO_CHECK")
    if not url and not metric:
        return []
    if not url or not metric:
        raise ConfigError("METRICS_ENDPOINT and METRIC_TO_CHECK go together (got only %s)" % (
            "METRICS_ENDPOINT" if url else "METRIC_TO_CHECK"))
    try:
        parse_http_url(url)
    except ValueError as exc:
        raise ConfigError("METRICS_ENDPOINT=%s: %s" % (url, exc)) from None
    var = "METRIC_THRESHOLD" if "METRIC_THRESHOLD" in env else "METRICS_THRESHOLD"
    threshold = env.get(var)
    if threshold is None:
        raise ConfigError("METRIC_TO_CHECK=%s needs METRIC_THRESHOLD" % metric)
    try:
        parse_number(threshold)
    except ValueError as exc:
        raise ConfigError("%s=%s: %s" % (var, threshold, exc)) from None
    return [dict(kind="metric", name="metric", url=url, metric=metric, agg="sum",
                 max=threshold, missing="pass", probes="ready")]


def preset_checks(opts: Mapping[str, Any], env: Mapping[str, str]) -> List[Tuple[RawCheck, str]]:
    """Every check the preset flags and compatibility variables ask for, with its origin."""
    out: List[Tuple[RawCheck, str]] = []
    for name, flavour in FLAVOURS.items():
        base = opts.get(name)
        if base:
            out += [(c, "--" + name) for c in backend_checks(flavour, base, opts)]
    if opts.get("vllm_endpoint"):
        if opts.get("vllm"):
            raise ConfigError("--vllm-endpoint and --vllm both describe the vLLM server; "
                              "give one (--vllm is the richer preset)")
        out += [(c, "--vllm-endpoint") for c in multinode_prober_checks(
            opts["vllm_endpoint"], opts)]
    out += [(c, "--ray") for c in ray_checks(opts, env)]
    if opts.get("ray_agent"):
        out.append((dict(kind="ray-agent", name="ray-agent", url=opts["ray_agent"]),
                    "--ray-agent"))
    if opts.get("worker_ranks"):
        out.append((worker_ranks_check(opts["worker_ranks"], opts["worker_window"]),
                    "--worker-ranks"))
    out += [(c, "METRIC_TO_CHECK") for c in healthchecker_checks(env)]
    out += [(c, "--gpu") for c in gpu_checks(opts)]
    return out


def gpu_checks(opts: Mapping[str, Any]) -> List[RawCheck]:
    """--gpu: gpu-live (faults a restart fixes) and gpu-ready (every fault) sharing one NVML
    reader; without a server whose restarts probed sees, gpu-ready alone, on node-level faults."""
    devices = opts.get("gpu")
    if not devices:
        return []
    if not any(opts.get(name) for name in GPU_RESTART_VISIBLE):
        return [dict(kind="gpu", name="gpu-ready", devices=devices, faults="reset",
                     probes="ready")]
    return [dict(kind="gpu", name="gpu-live", devices=devices, faults="restart", probes="live"),
            dict(kind="gpu", name="gpu-ready", devices=devices, faults="all", probes="ready")]


def ray_checks(opts: Mapping[str, Any], env: Mapping[str, str]) -> List[RawCheck]:
    """--ray: the cluster check in ready/started; with --ray-grace, the same check in live
    with enough fail-after to cover the grace (a lost worker then recreates the group)."""
    url = opts.get("ray")
    if not url:
        return []
    nodes = opts.get("ray_nodes")
    if nodes is None:
        size = env.get("LWS_GROUP_SIZE", "1")
        try:
            nodes = parse_count(size)
        except ValueError as exc:
            raise ConfigError("LWS_GROUP_SIZE=%s: %s" % (size, exc)) from None
    base = dict(kind="ray", url=url, nodes=str(nodes), gpus=str(opts.get("ray_gpus") or 0))
    checks = [dict(base, name="ray", probes="ready,started")]
    grace = opts.get("ray_grace")
    if grace:
        interval = max(1.0, min(5.0, grace / 3))
        checks.append(dict(base, name="ray-live", probes="live",
                           interval=format_duration(interval),
                           **{"fail-after": str(int(grace // interval) + 1)}))
    return checks
