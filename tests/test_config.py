"""Configuration: check specs, flags, environment, config files, and their error messages."""

import json

import pytest

from probed.cli import main
from probed.flags import parse_serve_args
from probed.settings import resolve_settings
from probed.checkspecs import build_checks, build_spec, describe_spec, split_check_text
from probed.values import ConfigError, parse_duration, parse_host_port, parse_status_ranges


@pytest.mark.parametrize("text,seconds", [
    ("500ms", 0.5), ("10s", 10.0), ("2m", 120.0), ("1m30s", 90.0), ("1h", 3600.0),
    ("2.5", 2.5), ("0", 0.0), ("1.5s", 1.5), ("250us", 0.00025),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10x", "s", "-1s", "1m-3s", "nan", "inf", "10 s"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_addresses_and_status_ranges():
    assert parse_host_port(":8080") == ("", 8080)
    assert parse_host_port("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_host_port("[::1]:8080") == ("::1", 8080)
    assert parse_status_ranges("200-399,404") == ((200, 399), (404, 404))
    for bad in ("8080", "[::1]8080", ":http", ":70000"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def spec(text: str):
    return build_spec(split_check_text(text, "--check #1"), "--check #1")


def test_check_spec_defaults_and_common_keys():
    s = spec("http url=http://127.0.0.1:8000/health")
    assert (s.kind, s.name, s.probes) == ("http", "http", frozenset({"ready", "started"}))
    assert (s.interval, s.timeout, s.fail_after, s.pass_after) == (10.0, 1.0, 1, 1)
    assert s.stale_after == 31.0
    s = spec("http name=h url=http://x/ probes=live,ready interval=2s timeout=500ms "
             "fail-after=3 pass-after=2 stale-after=1m expect=200,204")
    assert (s.name, s.probes, s.interval, s.timeout) == ("h", frozenset({"live", "ready"}),
                                                         2.0, 0.5)
    assert (s.fail_after, s.pass_after, s.stale_after) == (3, 2, 60.0)
    assert s.params["expect"] == ((200, 200), (204, 204))


@pytest.mark.parametrize("text,needle", [
    ("nosuch url=x", "unknown check kind 'nosuch'"),
    ("http", "missing required key 'url'"),
    ("http url=ftp://x", "url=ftp://x: expected an http:// or https:// URL"),
    # one URL grammar: the client's own (issue 15: port 99999 passed --print-config)
    ("http url=http://127.0.0.1:99999/", "url=http://127.0.0.1:99999/: expected a port between"),
    ("http url=http://x/ interval=10x", "interval=10x: expected a duration"),
    ("http url=http://x/ probes=live,alive", "probes=live,alive"),
    ("http url=http://x/ colour=red", "unknown key 'colour'"),
    ("http url=http://x/ fail-after=0", "fail-after=0: expected a whole number >= 1"),
    ("http url=http://x/ name=a.b", "name=a.b"),
    ("http url=http://x/ interval=5s stale-after=5s", "stale-after=5s"),
    ("http url=http://x/ url=http://y/", "key 'url' given 2 times"),
    ("tcp addr=:80", "addr=:80: expected host:port"),
    ("exec cmd='unclosed", "--check #1"),
    ("http url=http://x/ justaword", "'justaword' is not key=value"),
])
def test_check_errors_name_origin_key_and_value(text, needle):
    with pytest.raises(ConfigError) as info:
        spec(text)
    assert needle in str(info.value)
    assert "--check #1" in str(info.value)


def test_duplicate_names_are_rejected():
    raws = [split_check_text("tcp addr=127.0.0.1:1", "--check #1"),
            split_check_text("tcp addr=127.0.0.1:2", "--check #2")]
    with pytest.raises(ConfigError) as info:
        build_checks(raws, ["--check #1", "--check #2"])
    assert "'tcp' already comes from --check #1" in str(info.value)


def test_secrets_never_shown():
    s = spec("http url=http://x/ header='Authorization: Bearer s3cr3t' token-file=/run/tok")
    shown = json.dumps(describe_spec(s))
    assert "s3cr3t" not in shown and "<redacted>" in shown and "/run/tok" in shown
    with pytest.raises(ConfigError) as info:
        spec("http url=http://x/ header=s3cr3t-without-colon")
    assert "s3cr3t" not in str(info.value)


def settings(argv, env=None):
    return resolve_settings(parse_serve_args(argv), env or {})


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"read-timeout": "3s", "idle-timeout": 7,
                                "checks": [{"kind": "tcp", "addr": "127.0.0.1:1",
                                            "probes": ["live"]}]}))
    s = settings(["--config", str(conf), "--read-timeout", "1s"],
                 {"PROBED_READ_TIMEOUT": "2s", "PROBED_WRITE_TIMEOUT": "4s"})
    s, raws = s
    assert (s.read_timeout, s.write_timeout, s.idle_timeout) == (1.0, 4.0, 7.0)
    assert s.drain_seconds == 5.0
    assert raws[0][0] == {"kind": "tcp", "addr": "127.0.0.1:1", "probes": "live"}


def test_checks_add_up_from_file_environment_and_flags(tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"checks": [{"kind": "tcp", "name": "f", "addr": "h:1"}]}))
    s = settings(["--check", "tcp name=c addr=h:3"],
                 {"PROBED_CONFIG": str(conf), "PROBED_CHECK": "tcp name=e1 addr=h:2\n"
                                                             "tcp name=e2 addr=h:2"})
    raws = s[1]
    assert [r["name"] for r, _ in raws] == ["f", "e1", "e2", "c"]
    assert [o for _, o in raws][1] == "PROBED_CHECK line 1"


@pytest.mark.parametrize("argv,env,needle", [
    (["--read-timeout", "10x"], {}, "--read-timeout=10x: expected a duration"),
    ([], {"PROBED_IDLE_TIMEOUT": "soon"}, "PROBED_IDLE_TIMEOUT=soon"),
    (["--addr", "8080"], {}, "--addr=8080: expected host:port"),
    (["--tcp-ready", "0"], {}, "--tcp-ready=0"),
    (["--log-format", "xml"], {}, "--log-format=xml: expected text or json"),
    (["--vllm", "http://127.0.0.1:80000"], {}, "--vllm=http://127.0.0.1:80000: expected a port"),
    (["--vllm", "http://user:pw@h:8000"], {}, "--vllm=http://<redacted>@h:8000: credentials"),
])
def test_flag_errors(argv, env, needle):
    with pytest.raises(ConfigError) as info:
        settings(argv, env)
    assert needle in str(info.value)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        settings(["--config", str(bad)])
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"adress": ":80"}')
    with pytest.raises(ConfigError, match="unknown key 'adress'"):
        settings(["--config", str(unknown)])
    with pytest.raises(ConfigError, match="cannot read"):
        settings(["--config", str(tmp_path / "missing.json")])


def test_main_exits_2_with_one_line_and_print_config_exits_0(capsys):
    assert main(["--check", "http url=nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("probed: error: --check #1 (http): url=nope")
    assert main(["serve", "--print-config", "--check",
                 "http url=http://127.0.0.1:1/ header='X-Api-Key: k3y'"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert doc["checks"][0]["url"] == "http://127.0.0.1:1/" and "k3y" not in out
    assert doc["addr"] == ":8080" and doc["max-connections"] == 1024


def test_checks_that_can_never_pass_are_config_errors():
    for text, needle in (("heartbeat path=/tmp expect=2 min-fresh=3", "min-fresh=3 with expect=2"),
                         ("metric url=http://x/m metric=q max=5 recover=6", "recover=6")):
        with pytest.raises(ConfigError) as info:
            build_checks([split_check_text(text, "--check #1")], ["--check #1"])
        assert needle in str(info.value)


def test_the_kinds_table_names_every_check_class_by_its_kind():
    """checks/__init__.py names each kind's module and class as text (the module is imported
    when a check of that kind is built): every row must lead to a Check of that kind, and
    every Check kind defined under probed/checks/ must have its row."""
    import importlib
    import pkgutil

    import probed.checks
    from probed.checks import CHECK_KINDS, CHECK_MODULES
    from probed.checks.base import Check

    defined = {}
    for info in pkgutil.iter_modules(probed.checks.__path__):
        module = importlib.import_module("probed.checks." + info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Check) and value.kind
                    and value.__module__ == module.__name__):
                defined[value.kind] = (info.name, value.__name__)
    assert defined == CHECK_MODULES
    for kind in CHECK_MODULES:
        assert CHECK_KINDS[kind].kind == kind
    assert sorted(CHECK_KINDS) == sorted(CHECK_MODULES) and len(CHECK_KINDS) == len(defined)
    with pytest.raises(KeyError):
        CHECK_KINDS["no-such-kind"]
