"""The command line a newcomer types: silent misconfigurations refused or named (issue 14),
Go-style flags of the Multi Node Prober, selectors as users type them, and config files and
values that used to crash, hang or slip through (issue 17). Each case: one line, exit 2."""

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from probed import __version__
from probed.checkspecs import build_checks, split_check_text
from probed.cli import main
from probed.flags import normalize_argv, parse_serve_args
from probed.settings import Settings, resolve_settings
from probed.values import ConfigError


def resolve(argv: List[str], env: Optional[Dict[str, str]] = None) -> Any:
    return resolve_settings(parse_serve_args(argv), env or {})


def one_error_line(argv: List[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def urls(argv: List[str]) -> Dict[str, str]:
    _, raws = resolve(argv)
    return {raw["name"]: raw["url"] for raw, _ in raws if "url" in raw}


# --- no checks at all -----------------------------------------------------------------------------

def test_no_checks_is_refused_naming_what_to_give(capsys: pytest.CaptureFixture) -> None:
    err = one_error_line([], capsys)
    assert "no checks configured" in err
    for needle in ("--vllm", "--check", "--config", "--allow-no-checks"):
        assert needle in err
    assert main(["--allow-no-checks", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["checks"] == []


# --- preset options no given server reads -------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["--tgi", "http://h:1", "--max-kv-cache", "0.5"], "--max-kv-cache 0.5: no server flag"),
    (["--llamacpp", "http://h:1", "--max-kv-cache", "0.5"], "--max-kv-cache 0.5: no server"),
    (["--tgi", "http://h:1", "--stall-after", "1m"], "--stall-after 1m: no server flag"),
    (["--vllm-endpoint", "http://h:1", "--max-waiting", "3"], "--max-waiting 3: no server"),
    (["--vllm", "http://h:1", "--max-waiting", "-1"], "--max-waiting=-1: expected a whole"),
    (["--vllm", "http://h:1", "--max-waiting", "2.5"], "--max-waiting=2.5: expected a whole"),
])
def test_an_option_that_would_be_ignored_or_never_pass_is_refused(
        argv: List[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert needle in one_error_line(argv, capsys)


def test_options_read_by_a_given_server_are_accepted() -> None:
    _, raws = resolve(["--vllm", "http://h:1", "--tgi", "http://t:1", "--max-kv-cache", "0.9",
                       "--stall-after", "1m", "--max-waiting", "3"])
    names = {raw["name"] for raw, _ in raws}
    assert {"vllm-kv-cache", "vllm-queue", "tgi-queue", "vllm-progress"} <= names


# --- preset URLs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("given", ["http://h:8000", "http://h:8000/", "http://h:8000/v1",
                                   "http://h:8000/v1/", "http://h:8000/health",
                                   "http://h:8000/metrics", "http://h:8000/v1/models"])
def test_a_preset_url_with_a_known_api_path_polls_the_base(given: str) -> None:
    found = urls(["--vllm", given])
    assert found["vllm-health"] == "http://h:8000/health"
    assert found["vllm-model"] == "http://h:8000"  # the check adds /v1/models
    settings, _ = resolve(["--vllm", given])
    changed = given.rstrip("/") != "http://h:8000"
    assert bool(settings.notes) == changed
    if changed:
        assert settings.notes[0].startswith("--vllm %s: using the base URL http://h:8000" % given)


def test_a_path_prefix_before_the_api_is_kept() -> None:
    found = urls(["--llamacpp", "http://gw:80/models/llama/v1"])
    assert found["llamacpp-health"] == "http://gw:80/models/llama/health"


def test_a_host_named_like_an_api_path_is_not_cut() -> None:
    assert urls(["--vllm", "http://metrics:8000"])["vllm-health"] == "http://metrics:8000/health"


# --- the Multi Node Prober's own manifests work unchanged -----------------------------------------

@pytest.mark.parametrize("argv", [
    ["-vllm-endpoint=http://vllm:8000", "-addr=:8081"],
    ["-vllm-endpoint", "http://vllm:8000", "-addr", ":8081"],
    ["--vllm-endpoint=http://vllm:8000", "--addr=:8081"],
    ["--vllm-endpoint", "http://vllm:8000/health", "-read-timeout=5s"],
    ["-vllm-endpoint", "http://vllm:8000"],  # its default port, 8081, as Go's
])
def test_go_style_flags_and_a_base_or_health_url(argv: List[str]) -> None:
    settings, raws = resolve(argv)
    assert settings.addr == ("", 8081) and settings.multinode_prober
    checks = {raw["name"]: raw for raw, _ in raws}
    assert checks["vllm-health"]["url"] == "http://vllm:8000/health"
    assert checks["vllm-inference"]["url"] == "http://vllm:8000"
    assert checks["vllm-inference"]["api"] == "chat" and "model" not in checks["vllm-inference"]


def test_an_unknown_flag_is_one_line_with_a_did_you_mean(capsys: pytest.CaptureFixture) -> None:
    err = one_error_line(["--vlm", "http://h:8000"], capsys)
    assert "unknown flag --vlm (did you mean --vllm?)" in err
    err = one_error_line(["-vllm-endpointt=http://h"], capsys)
    assert "unknown flag -vllm-endpointt (did you mean --vllm-endpoint?)" in err


def test_a_value_that_looks_like_a_flag_is_left_alone() -> None:
    assert normalize_argv(["--model", "-draft-", "-addr", "-1"]) == [
        "--model", "-draft-", "--addr", "-1"]
    _, raws = resolve(["--vllm", "http://h:8000", "--model=-draft-"])
    assert {raw["name"]: raw.get("model") for raw, _ in raws}["vllm-model"] == "-draft-"


# --- the hand parser agrees with argparse ----------------------------------------------------------

AGREED = [
    [],
    ["--vllm", "http://h:8000", "--max-waiting", "8"],
    ["--vllm=http://h:8000", "--addr", ":9000", "--addr", ":9001"],  # the last one wins
    ["--check", "http url=http://h/", "--check=tcp addr=h:1", "--allow-no-checks"],
    ["-addr=:8080", "-vllm-endpoint", "http://vllm:8000"],  # Go spellings
    ["--max-waiting", "-1"],  # a negative number is a value (the settings refuse it later)
    ["--model", "-"],
    ["--model", "-x y"],  # a value with a space is never an option
    ["--addr", ""],
    ["--print-config", "--vllm", "http://h:8000"],
]
REFUSED = [
    ["--addr"],  # no value at the end
    ["--model", "-draft-"],  # looks like a flag: argparse takes it as one
    ["--addr", "--vllm", "http://h"],
    ["stray", "--addr", ":1"],
    ["--addr", ":1", "stray", "more"],
    ["--", "x"],
    ["--print-config=yes"],
    ["--help=x"],
]


@pytest.mark.parametrize("argv", AGREED)
def test_the_daemon_parses_its_flags_as_argparse_would(argv: List[str]) -> None:
    from probed.flaghelp import build_serve_parser  # the parser --help shows

    assert vars(parse_serve_args(argv)) == vars(
        build_serve_parser().parse_args(normalize_argv(argv)))


@pytest.mark.parametrize("argv", REFUSED)
def test_the_daemon_refuses_what_argparse_refuses(argv: List[str]) -> None:
    from probed.flaghelp import build_serve_parser

    with pytest.raises(ConfigError) as ours:
        parse_serve_args(argv)
    with pytest.raises(ConfigError) as theirs:
        build_serve_parser().parse_args(normalize_argv(argv))
    assert str(ours.value) == str(theirs.value)


def test_help_and_version_print_and_return_0(capsys: pytest.CaptureFixture) -> None:
    assert main(["--vllm", "http://h:8000", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: probed ") and "--max-waiting N" in out
    assert "check kinds and their keys" in out  # the epilog, written when help is shown
    assert main(["--version"]) == 0 and capsys.readouterr().out == "probed %s\n" % __version__


# --- --check as users type it -----------------------------------------------------------------------

def test_a_labelled_selector_keeps_its_quotes_unquoted() -> None:
    raw = split_check_text('metric url=http://h/metrics metric=vllm:num_requests_waiting'
                           '{model_name="m",engine="0"} max=8', "--check #1")
    assert raw["metric"] == 'vllm:num_requests_waiting{model_name="m",engine="0"}'
    check = build_checks([raw], ["--check #1"])[0]
    assert str(check.config["metric"][0]) == raw["metric"]


def test_quoted_words_follow_the_shell() -> None:
    raw = split_check_text("""exec cmd='sh -c "exit 3"' name=x""", "--check #1")
    assert raw == {"kind": "exec", "cmd": 'sh -c "exit 3"', "name": "x"}
    with pytest.raises(ConfigError, match="no closing quotation"):
        split_check_text("exec cmd='unclosed", "--check #1")
    with pytest.raises(ConfigError, match="no closing brace"):
        split_check_text("metric metric=x{a=\"b\"", "--check #1")


def test_an_unquoted_header_secret_is_never_echoed(capsys: pytest.CaptureFixture) -> None:
    # issue 17: `header=X-Api-Key: SECRET` split by the shell echoed SECRET in the error
    err = one_error_line(["--check", "http url=http://h/ header=X-Api-Key: s3cr3t-v4lue"],
                         capsys)
    assert "s3cr3t" not in err and "quote the whole value" in err


# --- floors and values ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["--start-interval", "0", "--allow-no-checks"], "--start-interval=0: expected at least 100ms"),
    (["--interval", "1ns", "--allow-no-checks"], "--interval=1ns: expected at least 100ms"),
    (["--check", "tcp addr=h:1 interval=1ns"], "interval=1ns: expected at least 100ms"),
    (["--check", "tcp addr=h:1 start-interval=10ms"], "start-interval=10ms: expected at least"),
    (["--read-timeout", "0", "--allow-no-checks"], "--read-timeout=0: expected at least 100ms"),
    (["--check", "metric url=http://h/m metric=x max=1_0"], "max=1_0: expected a number"),
    (["--max-connections", "１０", "--allow-no-checks"], "expected a whole number"),
    (["--restart-pod-on", "live", "--allow-no-checks"], "--restart-pod-on=live: expected"),
])
def test_values_that_would_spin_or_slip_through_are_refused(argv: List[str], needle: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert needle in one_error_line(argv, capsys)


# --- config files that crashed, hung or slipped through ---------------------------------------------

@pytest.mark.parametrize("content,needle", [
    ('{"checks": []}' + "", None),
    ('[' * 100000 + ']' * 100000, "nested too deeply"),
    ('{"read-timeout": "1s", "read-timeout": "2s"}', "key 'read-timeout' appears twice"),
    ('{"read-timeout": null}', "key 'read-timeout': expected a string, number or boolean, got null"),
    ('{"checks": [{"kind": "tcp", "addr": null}]}', "key 'addr': expected a string"),
    ('{"checks": [{"kind": "tcp", "addr": "h:1", "addr": "h:2"}]}', "appears twice"),
])
def test_config_file_contents(tmp_path: Path, content: str, needle: Optional[str],
                              capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    if needle is None:
        assert main(["--config", str(path), "--allow-no-checks", "--print-config"]) == 0
        return
    assert needle in one_error_line(["--config", str(path)], capsys)


def test_config_files_that_are_not_regular_files_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    err = one_error_line(["--config", str(fifo)], capsys)  # would block forever in open()
    assert "--config %s" % fifo in err
    err = one_error_line(["--config", "/dev/zero"], capsys)  # would read until MemoryError
    assert "--config /dev/zero" in err


def test_settings_are_typed_and_print_config_round_trips(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    argv = ["--check", "tcp addr=127.0.0.1:9 name=t", "--read-timeout", "3s",
            "--restart-pod-on", "live=75", "--admin-addr", ":9090"]
    settings, _ = resolve(argv)
    assert isinstance(settings, Settings) and settings.read_timeout == 3.0
    assert settings.restart_pod_on == {"live": 75} and settings.admin_addr == ("127.0.0.1", 9090)
    assert main(argv + ["--print-config"]) == 0
    path = tmp_path / "again.json"
    path.write_text(capsys.readouterr().out)
    assert resolve(["--config", str(path)])[0] == settings
