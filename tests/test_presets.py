"""Presets and drop-in compatibility, through the real command line and a real daemon.

- `--vllm`, `--tgi`, `--sglang`, `--llamacpp`: what `--print-config` shows each expands into
  (names, kinds, groups): saturation and sleep touch `ready` only, death and stalls `live`,
  `started` is health + model listed + one inference (DESIGN §3).
- Multi Node Prober: `--vllm-endpoint URL` (a /health URL) with its timeout flags; a daemon
  answers /healthz, /readyz and /startupz with that program's bodies and codes
  (router.MULTINODE_PROBER_ROUTES).
- LLM Healthchecker: METRICS_ENDPOINT, METRIC_TO_CHECK, METRIC_THRESHOLD (or the misspelt
  METRICS_THRESHOLD), APP_PORT; a daemon answers /health 503 `Unhealthy` when the value is over
  the threshold, else 200 `Healthy`, and (unlike the Go program) reads labelled float series
  and accepts threshold 0.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from backends import Backend, kubelet_probe, wait_for, wait_status
from conftest import free_port, wait_listening
from llm_backend import LLMBackend
from probed.checks import CHECK_KINDS
from probed.checks.base import Observation
from probed.cli import main
from probed.checkspecs import build_spec, split_check_text
from probed.scheduler import poll_once
from probed.checkstate import CheckState

REPO = Path(__file__).resolve().parents[1]
WAITING_4 = (b"# TYPE vllm:num_requests_waiting gauge\n"
             b'vllm:num_requests_waiting{model_name="m"} 4.0\n')


COMPAT_ENVS = ("METRICS_ENDPOINT", "METRIC_TO_CHECK", "METRIC_THRESHOLD", "METRICS_THRESHOLD",
               "APP_PORT", "VLLM_API_KEY", "OPENAI_API_KEY")


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Any:
    """run(args, env) -> (exit code, stdout, stderr) of `probed ARGS` run in-process (fast)
    with exactly `env` as its PROBED_ and compatibility variables."""
    def run(args: Sequence[str], env: Optional[Dict[str, str]] = None) -> Tuple[int, str, str]:
        for name in list(os.environ):
            if name.startswith("PROBED_") or name in COMPAT_ENVS:
                monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err
    return run


def print_config(cli: Any, args: Sequence[str],
                 env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The parsed `--print-config` output (the command must succeed)."""
    code, out, err = cli(list(args) + ["--print-config"], env)
    assert code == 0, err
    return json.loads(out)


def checks_of(config: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Checks by name."""
    return {c["name"]: c for c in config["checks"]}


def groups(checks: Dict[str, Dict[str, Any]]) -> Dict[str, Tuple[str, str]]:
    """name -> (kind, probes) for every check that counts in some group."""
    return {n: (c["kind"], c["probes"]) for n, c in checks.items() if c["probes"]}


def clean_env(env: Dict[str, str]) -> Dict[str, str]:
    """Environment for a daemon subprocess: no stray compatibility or PROBED_ variables."""
    blank = {k: "" for k in COMPAT_ENVS if k in os.environ}
    blank.update(env)
    return blank


def wait_polled(port: int, path: str, name: str, polls: int = 1, timeout: float = 10.0) -> Any:
    """Wait until check `name` in `path`'s group has at least `polls` results; its JSON row."""
    row: List[Any] = [None]

    def polled() -> bool:
        doc = json.loads(kubelet_probe(port, path + "?format=json").body)
        row[0] = next(c for c in doc["checks"] if c["name"] == name)
        return row[0]["polls"] >= polls

    wait_for(polled, timeout, what="%d polls of %s" % (polls, name))
    return row[0]


# --- what each preset expands into ---------------------------------------------------------------

VLLM_FULL = {
    "vllm-health": ("http", "live,ready,started"),
    "vllm-model": ("models", "ready,started"),
    "vllm-awake": ("awake", "ready"),
    "vllm-queue": ("metric", "ready"),
    "vllm-kv-cache": ("metric", "ready"),
    "vllm-progress": ("progress", "live"),
    "vllm-inference": ("inference", "started"),
}


def test_vllm_preset_expands_into_named_checks_in_the_right_groups(cli: Any) -> None:
    base = "http://127.0.0.1:8000"
    checks = checks_of(print_config(cli, ["--vllm", base + "/", "--max-waiting", "5",
                                     "--max-kv-cache", "0.9"]))
    assert groups(checks) == VLLM_FULL
    health = checks["vllm-health"]
    assert (health["url"], health["expect"], health["hard"]) == (base + "/health", "200", "503")
    assert checks["vllm-model"]["url"] == base and "model" not in checks["vllm-model"]
    assert checks["vllm-awake"]["url"] == base
    queue = checks["vllm-queue"]
    assert (queue["url"], queue["metric"], queue["agg"], queue["max"]) == (
        base + "/metrics", "vllm:num_requests_waiting", "sum", "5")
    kv = checks["vllm-kv-cache"]
    assert (kv["metric"], kv["agg"], kv["max"]) == (
        ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"], "max", "0.9")
    progress = checks["vllm-progress"]
    assert (progress["running"], progress["counter"], progress["stall-after"]) == (
        "vllm:num_requests_running", "vllm:generation_tokens_total", "2m")
    inference = checks["vllm-inference"]
    assert (inference["url"], inference["api"], inference["timeout"]) == (
        base, "completions", "30s")
    assert all(c["from"] == "--vllm" for c in checks.values())


def test_vllm_preset_groups_follow_the_design_rules(cli: Any) -> None:
    checks = checks_of(print_config(cli, ["--vllm", "http://127.0.0.1:8000", "--max-waiting", "5",
                                     "--max-kv-cache", "0.9", "--inference-every", "1m"]))
    in_group = {g: {n for n, c in checks.items() if g in c["probes"].split(",")}
                for g in ("live", "ready", "started")}
    # saturation and sleep never touch live; death and stalls do
    assert {"vllm-queue", "vllm-kv-cache", "vllm-awake"}.isdisjoint(in_group["live"])
    assert {"vllm-health", "vllm-progress", "vllm-inference"} <= in_group["live"]
    assert {"vllm-health", "vllm-model", "vllm-inference"} == in_group["started"]
    assert "vllm-progress" not in in_group["ready"]


def test_vllm_preset_options(cli: Any) -> None:
    base = "http://127.0.0.1:8000"
    minimal = checks_of(print_config(cli, ["--vllm", base, "--stall-after", "0"]))
    assert set(groups(minimal)) == {"vllm-health", "vllm-model", "vllm-awake", "vllm-inference"}

    checks = checks_of(print_config(cli, [
        "--vllm", base, "--model", "qwen2.5-1.5b", "--api-key-file", "/var/run/key",
        "--inference-every", "45s", "--inference-timeout", "8s", "--stall-after", "90s"]))
    assert checks["vllm-model"]["model"] == "qwen2.5-1.5b"
    assert checks["vllm-model"]["token-file"] == "/var/run/key"
    assert checks["vllm-progress"]["stall-after"] == "1m30s"
    inference = checks["vllm-inference"]
    assert inference["probes"] == "live,started"  # periodic: a failed inference is death
    assert (inference["interval"], inference["timeout"], inference["model"]) == (
        "45s", "8s", "qwen2.5-1.5b")
    assert inference["token-file"] == "/var/run/key"
    # idle-only reads the progress check's own URL, so "tokens flowing" is the same fact
    assert inference["idle-only"] == "true"
    assert inference["metrics-url"] == checks["vllm-progress"]["url"]


def test_vllm_health_503_is_hard_evidence_and_other_failures_are_not() -> None:
    """The preset's `hard=503` (vLLM says its engine died) fails at once despite fail-after;
    any other failing status waits for fail-after like every check."""
    def failed_after(status: int, hard: str) -> int:
        with Backend(status=status, body=b"") as b:
            spec = build_spec(split_check_text(
                "http url=%s/health expect=200 fail-after=3 %s" % (b.url, hard), "t"), "t")
            check = CHECK_KINDS[spec.kind](spec)
            state = CheckState(check, 0.0, 0.0)
            state.record(Observation(True, "HTTP 200", 200.0, detail={"status": 200}),
                         0.0, 0.0, 0.0)
            for poll in range(1, 5):
                obs, _ = asyncio.run(poll_once(check))
                state.record(obs, 0.0, float(poll), float(poll))
                if not state.passing:
                    return poll
        return 0

    assert failed_after(503, "hard=503") == 1
    assert failed_after(500, "hard=503") == 3
    assert failed_after(503, "") == 3  # SGLang, llama.cpp: 503 means starting or loading


@pytest.mark.parametrize("flag, expected, details", [
    ("--tgi", {"tgi-health": ("http", "live,ready,started"), "tgi-queue": ("metric", "ready"),
               "tgi-inference": ("inference", "started")},
     {"tgi-queue": {"metric": "tgi_queue_size", "agg": "sum", "max": "3"},
      "tgi-inference": {"url": "http://127.0.0.1:8000/generate", "api": "json",
                        "expect-field": "generated_text"}}),
    ("--sglang", {"sglang-health": ("http", "live,ready,started"),
                  "sglang-model": ("models", "ready,started"),
                  "sglang-queue": ("metric", "ready"), "sglang-kv-cache": ("metric", "ready"),
                  "sglang-progress": ("progress", "live"),
                  "sglang-inference": ("inference", "started")},
     # SGLang names its metrics `sglang:` and, behind its router, `sglang_`; its /health runs
     # a 1-token generation with a 20 s internal timeout, so the poll may take longer
     {"sglang-queue": {"metric": ["sglang:num_queue_reqs", "sglang_num_queue_reqs"], "max": "3"},
      "sglang-kv-cache": {"metric": ["sglang:token_usage", "sglang_token_usage"], "agg": "max",
                          "max": "0.8"},
      "sglang-progress": {"running": ["sglang:num_running_reqs", "sglang_num_running_reqs"],
                          "counter": ["sglang:generation_tokens_total",
                                      "sglang_generation_tokens_total"]},
      "sglang-health": {"timeout": "25s"}}),
    ("--llamacpp", {"llamacpp-health": ("http", "live,ready,started"),
                    "llamacpp-queue": ("metric", "ready"),
                    "llamacpp-progress": ("progress", "live"),
                    "llamacpp-inference": ("inference", "started")},
     # tokens_predicted_total rises only when a request finishes; n_decode_total every step
     {"llamacpp-queue": {"metric": "llamacpp:requests_deferred", "max": "3"},
      "llamacpp-progress": {"running": "llamacpp:requests_processing",
                            "counter": ["llamacpp:n_decode_total",
                                        "llamacpp:tokens_predicted_total"]}}),
])
def test_other_backend_presets(cli: Any, flag: str, expected: Dict[str, Tuple[str, str]],
                               details: Dict[str, Dict[str, Any]]) -> None:
    # TGI and llama.cpp export no KV-cache gauge: --max-kv-cache with them alone is refused
    kv = ["--max-kv-cache", "0.8"] if flag == "--sglang" else []
    checks = checks_of(print_config(cli, [flag, "http://127.0.0.1:8000", "--max-waiting", "3"] +
                                    kv))
    assert groups(checks) == expected
    for name, keys in details.items():
        assert {k: checks[name].get(k) for k in keys} == keys, name
    # 503 is "starting" (SGLang) or "loading" (llama.cpp), never hard evidence of death
    assert "hard" not in checks[flag[2:] + "-health"]
    tgi_body = checks.get("tgi-inference", {}).get("body")
    if tgi_body:
        assert json.loads(tgi_body)["parameters"]["max_new_tokens"] == 1


def test_preset_flags_read_probed_environment(cli: Any) -> None:
    checks = checks_of(print_config(cli, [], {"PROBED_VLLM": "http://127.0.0.1:8000",
                                         "PROBED_MAX_WAITING": "7"}))
    assert checks["vllm-queue"]["max"] == "7"
    assert checks["vllm-queue"]["from"] == "--vllm"


def test_print_config_shows_numbers_as_numbers_and_round_trips(cli: Any, tmp_path: Path) -> None:
    out = print_config(cli, ["--vllm", "http://127.0.0.1:8000", "--max-waiting", "5",
                        "--max-kv-cache", "0.9", "--read-timeout", "3s"])
    assert checks_of(out)["vllm-queue"]["max"] == "5"
    assert checks_of(out)["vllm-kv-cache"]["max"] == "0.9"
    assert out["read-timeout"] == "3s" and out["max-connections"] == 1024
    assert "vllm" not in out, "preset flags are represented by the checks they expand into"
    config = tmp_path / "c.json"
    config.write_text(json.dumps(out))
    again = print_config(cli, ["--config", str(config)])
    for doc in (out, again):  # "from" says where a check came from, which differs by design
        for check in doc["checks"]:
            check.pop("from")
    assert again == out


@pytest.mark.parametrize("args, needles", [
    (["--vllm", "http://127.0.0.1:8000", "--vllm-endpoint", "http://127.0.0.1:8000/health"],
     ["--vllm-endpoint", "--vllm"]),
    (["--vllm", "http://127.0.0.1:8000", "--max-kv-cache", "95"], ["--max-kv-cache", "95"]),
    (["--vllm", "ftp://127.0.0.1:8000"], ["--vllm", "ftp://127.0.0.1:8000"]),
    (["--vllm", "http://127.0.0.1:8000", "--stall-after", "soon"], ["--stall-after", "soon"]),
    (["--vllm", "http://127.0.0.1:8000", "--max-waiting", "many"], ["--max-waiting", "many"]),
    (["--vllm-endpoint", "127.0.0.1:8000/health"], ["--vllm-endpoint"]),
])
def test_preset_errors_exit_2_naming_the_flag(cli: Any, args: List[str],
                                              needles: List[str]) -> None:
    code, out, err = cli(args + ["--print-config"])
    assert code == 2, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


# --- Multi Node Prober: --vllm-endpoint ----------------------------------------------------------

def test_multinode_prober_flags_expand_and_are_accepted(cli: Any) -> None:
    out = print_config(cli, ["--vllm-endpoint", "http://127.0.0.1:8000/health",
                        "--read-timeout", "5s", "--write-timeout", "6s", "--idle-timeout", "1m",
                        "--inference-timeout", "100s"])
    assert (out["read-timeout"], out["write-timeout"], out["idle-timeout"]) == ("5s", "6s", "1m")
    checks = checks_of(out)
    assert groups(checks) == {"vllm-health": ("http", "live,ready,started"),
                              "vllm-inference": ("inference", "started")}
    assert (checks["vllm-health"]["url"], checks["vllm-health"]["hard"]) == (
        "http://127.0.0.1:8000/health", "503")
    inference = checks["vllm-inference"]
    assert (inference["url"], inference["api"], inference["timeout"]) == (
        "http://127.0.0.1:8000", "chat", "1m40s")


@pytest.fixture
def vllm_server() -> Any:
    with LLMBackend(models=["qwen2.5-1.5b"]) as s:
        yield s


def test_multinode_prober_bodies_when_healthy(start_daemon: Any, vllm_server: LLMBackend) -> None:
    daemon = start_daemon(["--vllm-endpoint", vllm_server.url + "/health"])
    started = wait_status(daemon.port, "/startupz", 200)
    assert started.body == b"Startup check passed\n"
    assert (kubelet_probe(daemon.port, "/readyz").status,
            kubelet_probe(daemon.port, "/readyz").body) == (200, b"Readiness check passed\n")
    live = kubelet_probe(daemon.port, "/healthz")
    assert (live.status, live.body) == (200, b"Liveness check passed\n")
    assert kubelet_probe(daemon.port, "/livez").body == b"ok\n"  # probed's own paths stay
    # the startup check was a one-token chat completion with the discovered model
    chats = vllm_server.seen("POST", "/v1/chat/completions")
    assert chats and chats[0].json()["model"] == "qwen2.5-1.5b"
    assert chats[0].json()["max_tokens"] == 1
    verbose = kubelet_probe(daemon.port, "/readyz?verbose")
    assert verbose.status == 200 and b"[+]vllm-health ok" in verbose.body


def test_multinode_prober_bodies_before_start(start_daemon: Any,
                                              vllm_server: LLMBackend) -> None:
    vllm_server.route("POST", "/v1/chat/completions", (500, b'{"error": "engine warming"}'))
    daemon = start_daemon(["--vllm-endpoint", vllm_server.url + "/health"])
    wait_polled(daemon.port, "/startupz", "vllm-inference")
    wait_polled(daemon.port, "/startupz", "vllm-health")
    startup = kubelet_probe(daemon.port, "/startupz")
    assert (startup.status, startup.body) == (500, b"Startup check failed\n")
    ready = kubelet_probe(daemon.port, "/readyz")
    assert (ready.status, ready.body) == (503, b"Readiness check failed\n")
    live = kubelet_probe(daemon.port, "/healthz")  # loading must not be killed
    assert (live.status, live.body) == (200, b"Liveness check passed\n")
    verbose = kubelet_probe(daemon.port, "/startupz?verbose")
    assert verbose.status == 500 and b"engine warming" in verbose.body


def test_multinode_prober_liveness_failure_body(start_daemon: Any) -> None:
    with LLMBackend(models=["m"], health=503) as s:
        daemon = start_daemon(["--vllm-endpoint", s.url + "/health", "--startup-timeout", "1s"])
        live = wait_status(daemon.port, "/healthz", 500)
        assert live.body == b"Liveness check failed\n"
        head = kubelet_probe(daemon.port, "/healthz", method="HEAD")
        assert (head.status, head.body) == (500, b"")


@pytest.mark.slow
def test_multinode_prober_engine_death_after_start(start_daemon: Any,
                                                   vllm_server: LLMBackend) -> None:
    daemon = start_daemon(["--vllm-endpoint", vllm_server.url + "/health"])
    wait_status(daemon.port, "/startupz", 200)
    vllm_server.health = 503  # vLLM's engine died; /health says so until the process exits
    live = wait_status(daemon.port, "/healthz", 500, timeout=15)  # health polls every 10 s
    assert live.body == b"Liveness check failed\n"
    ready = kubelet_probe(daemon.port, "/readyz")
    assert (ready.status, ready.body) == (503, b"Readiness check failed\n")


# --- LLM Healthchecker environment ---------------------------------------------------------------

def healthchecker_env(url: str, metric: str = "vllm:num_requests_waiting",
                      threshold: Optional[str] = "3",
                      var: str = "METRIC_THRESHOLD") -> Dict[str, str]:
    """The LLM Healthchecker's variables."""
    env = {"METRICS_ENDPOINT": url, "METRIC_TO_CHECK": metric}
    if threshold is not None:
        env[var] = threshold
    return env


def health_after_first_poll(start_daemon: Any, body: bytes, env: Dict[str, str]) -> Any:
    """Start a daemon with `env` against a backend serving `body`; /health after one poll."""
    with Backend(body=body) as b:
        full = {k: (v.replace("{URL}", b.url)) for k, v in env.items()}
        daemon = start_daemon([], env=clean_env(full))
        row = wait_polled(daemon.port, "/readyz", "metric")
        reply = kubelet_probe(daemon.port, "/health")
        assert len(b.requests) >= 1
        return reply, row, daemon


@pytest.mark.parametrize("body, threshold, healthy", [
    (WAITING_4, "3", False),
    (WAITING_4, "4", True),  # equal is not over
    (WAITING_4, "3.99", False),
    (WAITING_4, "10", True),
    (b"", "3", True),
    (b"null", "3", True),
    (b"# TYPE vllm:other gauge\nvllm:other 99\n", "3", True),  # no such series: like empty
    (b"vllm:num_requests_waiting 0\n", "0", True),
    (b"vllm:num_requests_waiting 0.5\n", "0", False),
    (b'vllm:num_requests_waiting{model_name="a"} 2.5\n'
     b'vllm:num_requests_waiting{model_name="b"} 1.0\n', "3", False),  # summed: 3.5
], ids=["4>3", "4=4", "4>3.99", "4<10", "empty", "null", "absent", "0=0", "0.5>0", "sum"])
def test_healthchecker_env_threshold(start_daemon: Any, body: bytes, threshold: str,
                                     healthy: bool) -> None:
    reply, row, _ = health_after_first_poll(
        start_daemon, body, healthchecker_env("{URL}/metrics", threshold=threshold))
    assert (reply.status, reply.body) == ((200, b"Healthy") if healthy else (503, b"Unhealthy"))
    assert row["status"] == ("pass" if healthy else "fail")


def test_healthchecker_labelled_float_series_value_in_json(start_daemon: Any) -> None:
    env = healthchecker_env("{URL}/metrics", 'vllm:num_requests_waiting{model_name="m"}', "3")
    reply, row, daemon = health_after_first_poll(start_daemon, WAITING_4, env)
    assert (reply.status, reply.body) == (503, b"Unhealthy")
    assert row["value"] == 4.0  # the JSON output carries the observed value
    assert 'vllm:num_requests_waiting{model_name="m"}' in row["reason"]
    # a per-request override re-judges the cached value; the alias bodies stay
    lenient = kubelet_probe(daemon.port, "/health?metric.max=10")
    assert (lenient.status, lenient.body) == (200, b"Healthy")
    assert kubelet_probe(daemon.port, "/health").status == 503


@pytest.mark.parametrize("threshold, healthy", [("3", False), ("4", True)])
def test_healthchecker_misspelt_threshold_variable(start_daemon: Any, threshold: str,
                                                   healthy: bool) -> None:
    env = healthchecker_env("{URL}/metrics", threshold=threshold, var="METRICS_THRESHOLD")
    reply, _, _ = health_after_first_poll(start_daemon, WAITING_4, env)
    assert (reply.status, reply.body) == ((200, b"Healthy") if healthy else (503, b"Unhealthy"))


def test_healthchecker_print_config(cli: Any) -> None:
    env = healthchecker_env("http://127.0.0.1:8000/metrics", threshold="2.5")
    checks = checks_of(print_config(cli, [], env))
    assert groups(checks) == {"metric": ("metric", "ready")}
    metric = checks["metric"]
    assert {k: metric[k] for k in ("url", "metric", "agg", "max", "missing")} == {
        "url": "http://127.0.0.1:8000/metrics", "metric": "vllm:num_requests_waiting",
        "agg": "sum", "max": "2.5", "missing": "pass"}


def test_app_port_sets_the_listen_port() -> None:
    port = free_port()
    with Backend(body=WAITING_4) as b:
        env = dict(os.environ, PYTHONPATH=str(REPO), APP_PORT=str(port),
                   **healthchecker_env(b.url + "/metrics", threshold="5"))
        for name in ("PROBED_ADDR", "METRICS_THRESHOLD"):
            env.pop(name, None)
        proc = subprocess.Popen([sys.executable, "-m", "probed"], cwd=str(REPO), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_listening("127.0.0.1", port)
            reply = wait_status(port, "/health", 200)
            assert reply.body == b"Healthy"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert proc.stderr is not None
            proc.stderr.close()


def test_addr_wins_over_app_port(start_daemon: Any) -> None:
    other = free_port()
    daemon = start_daemon([], env=clean_env({"APP_PORT": str(other)}))
    assert kubelet_probe(daemon.port, "/livez").status == 200  # --addr from the fixture
    with pytest.raises(OSError):
        kubelet_probe(other, "/livez", timeout=1.0)


@pytest.mark.parametrize("env, needles", [
    (healthchecker_env("http://127.0.0.1:1/metrics", threshold="abc"),
     ["METRIC_THRESHOLD", "abc"]),
    (healthchecker_env("http://127.0.0.1:1/metrics", threshold="nan", var="METRICS_THRESHOLD"),
     ["METRICS_THRESHOLD", "nan"]),
    ({"METRIC_TO_CHECK": "vllm:num_requests_waiting", "METRIC_THRESHOLD": "1"},
     ["METRICS_ENDPOINT"]),
    ({"METRICS_ENDPOINT": "http://127.0.0.1:1/metrics", "METRIC_THRESHOLD": "1"},
     ["METRIC_TO_CHECK"]),
    (healthchecker_env("http://127.0.0.1:1/metrics", threshold=None), ["METRIC_THRESHOLD"]),
    (healthchecker_env("http://127.0.0.1:1/metrics", metric="vllm:x{"), ["METRIC_TO_CHECK"]),
    ({"APP_PORT": "eighty"}, ["APP_PORT", "eighty"]),
    ({"APP_PORT": "70000"}, ["APP_PORT", "70000"]),
], ids=["bad-threshold", "bad-misspelt-threshold", "no-endpoint", "no-metric", "no-threshold",
        "bad-selector", "bad-port", "port-range"])
def test_healthchecker_config_errors_exit_2_naming_the_variable(cli: Any, env: Dict[str, str],
                                                                needles: List[str]) -> None:
    code, _, err = cli(["--print-config"], env)  # nothing listens, even if no error came
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_bad_metrics_endpoint_error_names_metrics_endpoint(cli: Any) -> None:
    code, _, err = cli(["--print-config"], healthchecker_env("127.0.0.1:8000/metrics"))
    assert code == 2
    assert "METRICS_ENDPOINT" in err, err
