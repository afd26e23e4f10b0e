"""Check kinds `models` and `inference` against an OpenAI-shaped loopback server.

The server (`tests/llm_backend.LLMBackend`) answers like vLLM's OpenAI server and records
every request, so the tests assert what probed sent (path, model, max_tokens=1, chat vs
completions shape, Bearer token) as well as the verdict. Tokens come from a token file or
from VLLM_API_KEY / OPENAI_API_KEY and must never show up in a reason or in --print-config.
"""

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest

from llm_backend import LLMBackend
from probed.checks import CHECK_KINDS
from probed.checks.base import Check, CheckResources, Observation
from probed.config import build_spec, split_check_text
from probed.scheduler import poll_once
from probed.values import ConfigError

REPO = Path(__file__).resolve().parents[1]
OUTER_DEADLINE = 8.0
SECRET = "sk-probed-test-3f9a1c"  # must never appear in a reason or in --print-config
KEY_ENVS = ("VLLM_API_KEY", "OPENAI_API_KEY")
_CASES = itertools.count()


def make(text: str, resources: Optional[CheckResources] = None) -> Check:
    """A check from `KIND key=value ...` text, exactly as `--check` builds it; checks given one
    `resources` share scrapes and progress as the checks of one daemon do."""
    spec = build_spec(split_check_text(text, "test"), "test")
    return CHECK_KINDS[spec.kind](spec, resources)


def poll(check: Check) -> Observation:
    """One poll as the engine runs it: observe() under the check's own deadline."""
    async def run() -> Observation:
        obs, _latency = await asyncio.wait_for(poll_once(check), OUTER_DEADLINE)
        return obs
    return asyncio.run(run())


def verdict(check: Check, obs: Observation) -> Tuple[bool, str]:
    """judge() under the check's own config."""
    return check.judge(obs, check.config, True)


def unique_metrics_url() -> str:
    """A metrics URL no other test has noted progress for."""
    return "http://127.0.0.1:1/case%d-%s/metrics" % (next(_CASES), uuid.uuid4().hex[:8])


@pytest.fixture(autouse=True)
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without the developer's own API keys in the environment."""
    for name in KEY_ENVS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[LLMBackend]:
    with LLMBackend(models=["qwen2.5-1.5b", "other"]) as s:
        yield s


# --- models --------------------------------------------------------------------------------------

def test_models_lists_what_is_served(server: LLMBackend) -> None:
    check = make("models url=%s" % server.url)
    obs = poll(check)
    assert verdict(check, obs) == (True, "serving qwen2.5-1.5b, other")
    assert obs.value == 2
    assert obs.detail is not None and obs.detail["models"] == ["qwen2.5-1.5b", "other"]
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/v1/models")]
    assert "authorization" not in server.requests[0].headers


def test_models_named_model_must_be_listed(server: LLMBackend) -> None:
    assert poll(make("models url=%s model=other" % server.url)).ok
    check = make("models url=%s model=llama-3-8b" % server.url)
    assert verdict(check, poll(check)) == (
        False, "model 'llama-3-8b' not served (serving: qwen2.5-1.5b, other)")


def test_models_empty_list_is_not_started() -> None:
    with LLMBackend(models=[]) as s:
        check = make("models url=%s" % s.url)
        assert verdict(check, poll(check)) == (False, "no model served yet")


def test_models_http_errors_and_refused(server: LLMBackend) -> None:
    server.route("GET", "/v1/models", (503, b'{"detail": "loading"}'))
    check = make("models url=%s" % server.url)
    assert verdict(check, poll(check)) == (False, '/v1/models: HTTP 503: {"detail": "loading"}')
    url = server.url
    server.close()
    obs = poll(make("models url=%s timeout=2s" % url))
    assert not obs.ok and "refused" in obs.reason
    assert obs.detail is not None and obs.detail["error"] == "refused"


@pytest.mark.parametrize("body", [b"<html>proxy error page</html>", b"[]",
                                  b'{"data": [{"object": "model"}]}'],
                         ids=["html", "json-list", "entry-without-id"])
def test_models_malformed_reply_fails_naming_v1_models(server: LLMBackend, body: bytes) -> None:
    server.route("GET", "/v1/models", (200, body))
    for kind in ("models", "inference"):
        obs = poll(make("%s url=%s" % (kind, server.url)))
        assert not obs.ok
        assert "/v1/models" in obs.reason, obs.reason
    assert not server.seen("POST", "/v1/completions")  # never posts model "None"


# --- inference: what is sent ---------------------------------------------------------------------

def test_completion_discovers_the_model_and_asks_for_one_token(server: LLMBackend) -> None:
    check = make("inference url=%s timeout=5s" % server.url)
    obs = poll(check)
    ok, reason = verdict(check, obs)
    assert ok and reason.startswith("generated in ") and reason.endswith("ms"), reason
    assert obs.detail is not None
    assert (obs.detail["status"], obs.detail["model"]) == (200, "qwen2.5-1.5b")
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/v1/models"), ("POST", "/v1/completions")]
    post = server.requests[1]
    assert post.headers["content-type"] == "application/json"
    body = post.json()
    assert body["model"] == "qwen2.5-1.5b"
    assert body["max_tokens"] == 1
    assert body["prompt"] == "Hi"
    assert "messages" not in body
    # the discovered model is remembered: the next poll goes straight to the completion
    assert poll(check).ok
    assert [r.path for r in server.requests[2:]] == ["/v1/completions"]


def test_chat_sends_messages_not_a_prompt(server: LLMBackend) -> None:
    check = make("inference url=%s/ api=chat model=other prompt='Say hi' timeout=5s" % server.url)
    assert verdict(check, poll(check))[0] is True
    assert [(r.method, r.path) for r in server.requests] == [("POST", "/v1/chat/completions")]
    body = server.requests[0].json()
    assert body["model"] == "other"
    assert body["max_tokens"] == 1
    assert body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert "prompt" not in body


def test_max_tokens_key(server: LLMBackend) -> None:
    poll(make("inference url=%s model=other max-tokens=4" % server.url))
    assert server.requests[0].json()["max_tokens"] == 4


def test_model_not_served_fails_with_the_servers_words(server: LLMBackend) -> None:
    check = make("inference url=%s model=llama-3-8b" % server.url)
    ok, reason = verdict(check, poll(check))
    assert not ok
    assert reason.startswith("HTTP 404: ") and "llama-3-8b" in reason
    assert server.requests[0].json()["model"] == "llama-3-8b"  # a given model is not looked up


def test_a_replaced_model_is_discovered_again_after_404() -> None:
    with LLMBackend(models=["v1"]) as s:
        check = make("inference url=%s" % s.url)
        assert poll(check).ok
        s.models = ["v2"]  # the server was redeployed with another model
        obs = poll(check)
        assert not obs.ok and obs.reason.startswith("HTTP 404")
        assert poll(check).ok
        posted = [r.json()["model"] for r in s.seen("POST", "/v1/completions")]
        assert posted == ["v1", "v1", "v2"]
        assert len(s.seen("GET", "/v1/models")) == 2


def test_no_model_served_yet_fails_without_posting() -> None:
    with LLMBackend(models=[]) as s:
        check = make("inference url=%s" % s.url)
        assert verdict(check, poll(check)) == (False, "no model served yet")
        assert not s.seen("POST", "/v1/completions")


@pytest.mark.parametrize("status, body, reason", [
    (500, b"Internal Server Error", "HTTP 500: Internal Server Error"),
    (200, b"not json", "HTTP 200 but the reply is not JSON"),
    (200, b'{"error": "overloaded"}', "HTTP 200 but the reply has no 'choices'"),
])
def test_completion_failures(server: LLMBackend, status: int, body: bytes, reason: str) -> None:
    server.route("POST", "/v1/completions", (status, body))
    check = make("inference url=%s model=other" % server.url)
    assert verdict(check, poll(check)) == (False, reason)


def test_completion_that_hangs_fails_at_the_checks_timeout(server: LLMBackend) -> None:
    server.hang("POST", "/v1/completions")
    check = make("inference url=%s model=other timeout=500ms" % server.url)
    obs = poll(check)  # OUTER_DEADLINE fails the test if the timeout is not enforced
    assert not obs.ok
    assert "timed out" in obs.reason
    assert len(server.seen("POST", "/v1/completions")) == 1


def test_model_discovery_that_hangs_fails_too(server: LLMBackend) -> None:
    server.hang("GET", "/v1/models")
    obs = poll(make("inference url=%s timeout=500ms" % server.url))
    assert not obs.ok and "timed out" in obs.reason


# --- Bearer tokens -------------------------------------------------------------------------------

def test_token_file_is_sent_and_reread(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text(SECRET + "\n")
    with LLMBackend(models=["m"], api_key=SECRET) as s:
        models = make("models url=%s token-file=%s" % (s.url, key))
        inference = make("inference url=%s token-file=%s" % (s.url, key))
        assert poll(models).ok and poll(inference).ok
        assert {r.headers.get("authorization") for r in s.requests} == {"Bearer " + SECRET}
        s.api_key = "sk-rotated"
        key.write_text("sk-rotated")
        assert poll(inference).ok
        assert s.requests[-1].headers["authorization"] == "Bearer sk-rotated"


@pytest.mark.parametrize("env", ["VLLM_API_KEY", "OPENAI_API_KEY"])
def test_token_from_environment(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv(env, SECRET)
    with LLMBackend(models=["m"], api_key=SECRET) as s:
        assert poll(make("models url=%s" % s.url)).ok
        assert poll(make("inference url=%s api=chat" % s.url)).ok
        assert {r.headers.get("authorization") for r in s.requests} == {"Bearer " + SECRET}


def test_token_precedence_file_then_vllm_then_openai(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("VLLM_API_KEY", "sk-vllm")
    key = tmp_path / "key"
    key.write_text("sk-file")
    with LLMBackend(models=["m"]) as s:
        poll(make("models url=%s" % s.url))
        poll(make("models url=%s token-file=%s" % (s.url, key)))
        monkeypatch.delenv("VLLM_API_KEY")
        poll(make("models url=%s" % s.url))
        sent = [r.headers.get("authorization") for r in s.requests]
    assert sent == ["Bearer sk-vllm", "Bearer sk-file", "Bearer sk-openai"]


def test_401_fails_and_never_shows_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", SECRET)
    with LLMBackend(models=["m"], api_key="sk-the-right-one") as s:
        reasons = []
        for text in ("models url=%s", "inference url=%s", "inference url=%s model=m",
                     "inference url=%s api=chat model=m"):
            check = make(text % s.url)
            ok, reason = verdict(check, poll(check))
            assert not ok
            assert "HTTP 401" in reason and "Unauthorized" in reason, reason
            reasons.append(reason + repr(poll(check)) + json.dumps(poll(check).detail))
        assert all(r.headers.get("authorization") == "Bearer " + SECRET for r in s.requests)
    assert not any(SECRET in r for r in reasons)


def test_no_token_is_sent_without_a_source(server: LLMBackend) -> None:
    poll(make("inference url=%s" % server.url))
    assert all("authorization" not in r.headers for r in server.requests)


def _print_config(args: Any, env: Dict[str, str]) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-m", "probed", "--print-config"] + list(args),
                          cwd=str(REPO), env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=30)


def test_print_config_shows_where_the_token_comes_from_never_the_token(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text(SECRET)
    env = {"VLLM_API_KEY": SECRET, "OPENAI_API_KEY": SECRET}
    done = _print_config(["--vllm", "http://127.0.0.1:8000", "--api-key-file", str(key),
                          "--inference-every", "1m",
                          "--check", "inference url=http://127.0.0.1:9000 api=chat "
                                     "'header=Authorization: Bearer %s'" % SECRET], env)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert SECRET not in out and SECRET not in done.stderr.decode()
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["vllm-model"]["token-file"] == str(key)
    assert checks["vllm-inference"]["token-file"] == str(key)
    assert checks["inference"]["header"] == "<redacted>"


# --- api=json: any JSON POST endpoint (a FastAPI /ask) -------------------------------------------

def _ask(ex: Any) -> Tuple[int, bytes]:
    question = ex.json().get("question")
    return 200, json.dumps({"answer": "4", "question": question,
                            "result": {"choices": [{"text": "4"}]}}).encode()


def test_json_api_posts_the_body_and_finds_the_field() -> None:
    with LLMBackend() as s:
        s.route("POST", "/ask", _ask)
        check = make("inference url=%s/ask api=json body='{\"question\": \"2+2?\"}' "
                     "expect-field=answer timeout=5s" % s.url)
        ok, reason = verdict(check, poll(check))
        assert ok and reason.startswith("generated in "), reason
        assert [(r.method, r.path) for r in s.requests] == [("POST", "/ask")]
        assert s.requests[0].json() == {"question": "2+2?"}
        assert s.requests[0].headers["content-type"] == "application/json"
        deep = make("inference url=%s/ask api=json body='{}' expect-field=result.choices.0.text"
                    % s.url)
        assert poll(deep).ok
        missing = make("inference url=%s/ask api=json body='{}' expect-field=sources" % s.url)
        assert verdict(missing, poll(missing)) == (False, "HTTP 200 but the reply has no 'sources'")
        out_of_range = make("inference url=%s/ask api=json expect-field=result.choices.1" % s.url)
        assert poll(out_of_range).ok is False


def test_json_api_failures() -> None:
    with LLMBackend() as s:
        s.route("POST", "/ask", (500, b'{"detail": "model crashed"}'))
        check = make("inference url=%s/ask api=json body='{}' expect-field=answer" % s.url)
        assert verdict(check, poll(check)) == (False, 'HTTP 500: {"detail": "model crashed"}')
        s.route("POST", "/ask", (200, b"<html>ok</html>"))
        assert verdict(check, poll(check)) == (False, "HTTP 200 but the reply is not JSON")
        s.hang("POST", "/ask")
        slow = make("inference url=%s/ask api=json body='{}' timeout=300ms" % s.url)
        obs = poll(slow)
        assert not obs.ok and "timed out" in obs.reason


def test_json_api_body_must_be_json() -> None:
    with pytest.raises(ConfigError, match="body="):
        make("inference url=http://127.0.0.1:1/ask api=json body='{question'")
    with pytest.raises(ConfigError, match="api=grpc"):
        make("inference url=http://127.0.0.1:1/ api=grpc")


# --- idle-only: a server that generates tokens needs no synthetic inference ----------------------

def test_idle_only_skips_while_the_progress_check_sees_tokens_rise(server: LLMBackend) -> None:
    shared = CheckResources()
    metrics = unique_metrics_url()
    progress = make("progress url=%s" % metrics, shared)
    inference = make("inference url=%s idle-only=true metrics-url=%s interval=1m" % (
        server.url, metrics), shared)
    now = time.monotonic()
    progress.note(2, 100.0, now - 1)
    progress.note(2, 160.0, now)  # tokens rose just now
    obs = poll(inference)
    assert verdict(inference, obs) == (True, "skipped: tokens are flowing, the engine generates")
    assert server.requests == []  # nothing was sent to the server


def test_idle_only_runs_when_tokens_are_flat_or_rose_long_ago(server: LLMBackend) -> None:
    shared = CheckResources()
    metrics = unique_metrics_url()
    progress = make("progress url=%s" % metrics, shared)
    inference = make("inference url=%s idle-only=true metrics-url=%s interval=10s" % (
        server.url, metrics), shared)
    assert poll(inference).ok  # never saw progress: run it
    assert len(server.seen("POST", "/v1/completions")) == 1
    now = time.monotonic()
    progress.note(1, 5.0, now - 30)
    progress.note(1, 9.0, now - 20)  # rose 20 s ago, more than one 10 s interval
    progress.note(1, 9.0, now)
    obs = poll(inference)
    assert obs.ok and not obs.reason.startswith("skipped")
    assert len(server.seen("POST", "/v1/completions")) == 2
    # without idle-only the same flow of tokens never skips
    progress.note(1, 20.0, time.monotonic())
    plain = make("inference url=%s metrics-url=%s interval=10s" % (server.url, metrics), shared)
    assert not poll(plain).reason.startswith("skipped")


def test_idle_only_with_a_real_progress_scrape() -> None:
    shared = CheckResources()
    def body(tokens: int) -> bytes:
        return ("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3\n"
                "# TYPE vllm:generation_tokens_total counter\n"
                "vllm:generation_tokens_total %d\n" % tokens).encode()

    prefix = "/case%d-%s" % (next(_CASES), uuid.uuid4().hex[:8])
    with LLMBackend(models=["m"], metrics=body(10), prefix=prefix) as s:
        progress = make("progress url=%s/metrics interval=100ms" % s.url, shared)
        inference = make("inference url=%s idle-only=true metrics-url=%s/metrics interval=1m" % (
            s.url, s.url), shared)
        assert poll(progress).ok
        assert poll(inference).reason.startswith("generated")  # no rise seen yet
        s.metrics = body(42)
        time.sleep(0.06)  # past the shared scrape's max age (interval / 2)
        assert poll(progress).ok
        assert poll(inference).reason.startswith("skipped")
        assert len(s.seen("POST", "/v1/completions")) == 1


def test_idle_only_without_metrics_url_is_an_error_or_uses_the_servers_metrics(
        server: LLMBackend) -> None:
    shared = CheckResources()
    try:
        inference = make("inference url=%s idle-only=true interval=1m" % server.url, shared)
    except ConfigError as exc:
        assert "metrics-url" in str(exc)
        return
    progress = make("progress url=%s/metrics" % server.url, shared)
    now = time.monotonic()
    progress.note(2, 1.0, now - 1)
    progress.note(2, 2.0, now)
    assert poll(inference).reason.startswith("skipped")


def test_idle_only_defaults_its_metrics_url_without_writing_into_the_spec() -> None:
    # issue 15: the inference check wrote "metrics-url" into its spec's params
    check = make("inference url=http://127.0.0.1:1 idle-only=true")
    assert check.spec.params["metrics-url"] is None
    assert check.metrics_url == "http://127.0.0.1:1/metrics"  # type: ignore[attr-defined]
