"""Daemon settings: flags, `PROBED_<FLAG>` environment and `--config FILE.json`, resolved.

Precedence for every setting: command line, then environment, then config file, then the
default. Checks add up from all three (and from the preset flags). Every mistake raises a
ConfigError naming the flag, variable or key, the bad value and what was expected.
"""

import argparse
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import __version__
from .admin import parse_admin_addr
from .config import describe_spec, json_check_to_raw, split_check_text
from .eventlog import LOG_FORMATS
from .presets import PRESET_OPTIONS, preset_checks
from .values import (
    ConfigError,
    format_duration,
    parse_duration,
    parse_host_port,
    parse_positive_count,
    redact_userinfo,
)


def _port(text: str) -> int:
    value = parse_positive_count(text)
    if value > 65535:
        raise ValueError("expected a port between 1 and 65535")
    return value


def _log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise ValueError("expected text or json")
    return text


def _optional_duration(text: str) -> Optional[float]:
    return None if text.strip().lower() in ("", "0", "off", "none") else parse_duration(text)


# (flag, parser, default, help). dest is the flag without dashes, '-' -> '_'.
OptionRow = Tuple[str, Callable[[str], Any], Any, str]
_DAEMON_OPTIONS: List[OptionRow] = [
    ("--addr", parse_host_port, ("", 8080), "probe listener: :8080 (all, IPv4+IPv6), "
                                            "0.0.0.0:8080, [::1]:8080"),
    ("--read-timeout", parse_duration, 10.0, "time to receive a whole request"),
    ("--write-timeout", parse_duration, 10.0, "time to send a reply"),
    ("--idle-timeout", parse_duration, 120.0, "keep-alive connection idle time"),
    ("--max-connections", parse_positive_count, 1024, "open connections beyond this are "
                                                      "closed at once"),
    ("--tcp-live", _port, None, "TCP port that listens only while live passes"),
    ("--tcp-ready", _port, None, "TCP port that listens only while ready passes"),
    ("--tcp-started", _port, None, "TCP port that listens only while started passes"),
    ("--startup-timeout", _optional_duration, None, "live fails when not started within this "
                                                    "(default: never)"),
    ("--start-interval", parse_duration, 0.5, "poll interval of started checks until started"),
    ("--interval", _optional_duration, None, "poll interval of every check that sets none, "
                                             "presets included (default: per kind)"),
    ("--drain-seconds", parse_duration, 5.0, "after SIGTERM: ready fails, probes answered this "
                                             "long, then exit 0"),
    ("--log-format", _log_format, "text", "text (logfmt) or json"),
    ("--admin-addr", parse_admin_addr, None, "admin listener (drain, heartbeats, become-ready): "
                                             ":9090 is 127.0.0.1:9090; a host listens there "
                                             "(default: off)"),
    ("--admin-token-file", str, None, "every admin call must send Authorization: Bearer "
                                      "<this file's token> (re-read when it changes)"),
]
SERVE_OPTIONS: List[OptionRow] = _DAEMON_OPTIONS + PRESET_OPTIONS

EPILOG = """check kinds and keys: see README.md ("Checks"). Examples:
  probed --vllm http://127.0.0.1:8000 --max-waiting 32
  probed --check "http url=http://127.0.0.1:8000/health probes=live,ready,started"
Every flag also reads PROBED_<FLAG> (e.g. PROBED_READ_TIMEOUT=5s; PROBED_CHECK holds one check
per line).

subcommands (each has --help):
  probed [serve]     the daemon (default)
  probed check URL   one probe for exec probes: exit 0 pass, 1 fail, 2 usage, 3 unreachable
  probed bench URL   kubelet-style probe latency: p50/p90/p99/max, probes/s
  probed drain       preStop: fail ready, wait until nothing is in flight
  probed beat NAME   a worker's heartbeat (file or admin listener)
  probed demo, probed sim   the vLLM simulator and a guided demo (package only)"""


def env_name(flag: str) -> str:
    """`--read-timeout` -> `PROBED_READ_TIMEOUT`."""
    return "PROBED_" + flag.lstrip("-").replace("-", "_").upper()


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def build_serve_parser() -> argparse.ArgumentParser:
    """The `probed [serve]` argument parser (defaults are applied after parsing)."""
    parser = argparse.ArgumentParser(
        prog="probed", description="Kubernetes probes for LLM inference servers, answered "
        "from cached verdicts.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version="probed " + __version__)
    parser.add_argument("--check", action="append", metavar='"KIND key=value ..."',
                        help="a check (repeatable): http, tcp, exec, ...")
    parser.add_argument("--config", metavar="FILE.json", help="checks and settings as JSON")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration (secrets redacted) and exit")
    for flag, _parse, default, text in SERVE_OPTIONS:
        shown = "" if default is None else " (default: %s)" % _show_default(default)
        parser.add_argument(flag, metavar="VALUE", help=text + shown)
    return parser


def _show_default(value: Any) -> str:
    if isinstance(value, tuple):
        return "%s:%d" % value
    if isinstance(value, float):
        return format_duration(value)
    return str(value)


def _load_config_file(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError("--config %s: cannot read: %s" % (path, exc.strerror or exc)) from None
    except ValueError as exc:
        raise ConfigError("--config %s: not valid JSON: %s" % (path, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError("--config %s: expected a JSON object with \"checks\"" % path)
    known = {_dest(flag).replace("_", "-") for flag, _, _, _ in SERVE_OPTIONS} | {"checks"}
    for key in data:
        if key not in known:
            raise ConfigError("--config %s: unknown key %r (expected one of: %s)" % (
                path, key, ", ".join(sorted(known))))
    return data


def resolve_settings(ns: argparse.Namespace, env: Mapping[str, str]) -> Dict[str, Any]:
    """Apply command line > environment > config file > default to every daemon setting."""
    config_path = getattr(ns, "config", None) or env.get("PROBED_CONFIG")
    file_data = _load_config_file(config_path) if config_path else {}
    settings: Dict[str, Any] = {}
    for flag, parse, default, _ in SERVE_OPTIONS:
        dest = _dest(flag)
        if hasattr(ns, dest):
            where, text = flag, getattr(ns, dest)
        elif env_name(flag) in env:
            where, text = env_name(flag), env[env_name(flag)]
        elif dest.replace("_", "-") in file_data:
            where = "--config %s: key %r" % (config_path, dest.replace("_", "-"))
            text = str(file_data[dest.replace("_", "-")])
        else:
            settings[dest] = default
            continue
        try:
            settings[dest] = parse(text)
        except ValueError as exc:
            raise ConfigError("%s=%s: %s" % (where, redact_userinfo(text), exc)) from None
    if "APP_PORT" in env:  # the LLM Healthchecker's port; --addr wins, a bad value never
        try:
            app_port = _port(env["APP_PORT"])
        except ValueError as exc:
            raise ConfigError("APP_PORT=%s: %s" % (env["APP_PORT"], exc)) from None
        if not _given(ns, env, file_data, "--addr"):
            settings["addr"] = ("", app_port)
    settings["checks"] = _collect_checks(ns, env, file_data, config_path) + preset_checks(
        settings, env)
    if settings["interval"] is not None:
        for raw, _ in settings["checks"]:
            raw.setdefault("interval", format_duration(settings["interval"]))
    return settings


def _given(ns: argparse.Namespace, env: Mapping[str, str], file_data: Dict[str, Any],
           flag: str) -> bool:
    dest = _dest(flag)
    return hasattr(ns, dest) or env_name(flag) in env or dest.replace("_", "-") in file_data


def _collect_checks(ns: argparse.Namespace, env: Mapping[str, str], file_data: Dict[str, Any],
                    config_path: Optional[str]) -> List[Tuple[Dict[str, Any], str]]:
    raws: List[Tuple[Dict[str, Any], str]] = []
    checks = file_data.get("checks", [])
    if not isinstance(checks, list):
        raise ConfigError("--config %s: \"checks\" must be a list" % config_path)
    for i, obj in enumerate(checks, 1):
        origin = "--config %s: check #%d" % (config_path, i)
        raws.append((json_check_to_raw(obj, origin), origin))
    env_lines = [l for l in env.get("PROBED_CHECK", "").splitlines() if l.strip()]
    for i, text in enumerate(env_lines, 1):
        origin = "PROBED_CHECK line %d" % i
        raws.append((split_check_text(text, origin), origin))
    for i, text in enumerate(getattr(ns, "check", None) or [], 1):
        origin = "--check #%d" % i
        raws.append((split_check_text(text, origin), origin))
    return raws


def describe_settings(settings: Dict[str, Any], checks: Sequence[Any]) -> Dict[str, Any]:
    """The effective configuration as the JSON `--config` accepts, secrets redacted."""
    # Preset flags are left out: the checks they expanded into are listed, so feeding this
    # back as --config gives the same daemon.
    out: Dict[str, Any] = {}
    presets = {flag for flag, _, _, _ in PRESET_OPTIONS}
    for flag, parse, _, _ in SERVE_OPTIONS:
        value = settings[_dest(flag)]
        if value is None or flag in presets:
            continue
        if parse in (parse_duration, _optional_duration):
            value = format_duration(value)
        elif isinstance(value, tuple):
            value = _show_default(value)
        out[_dest(flag).replace("_", "-")] = value
    out["checks"] = [describe_spec(c.spec) for c in checks]
    return out
