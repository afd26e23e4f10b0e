"""Command line: flags, `PROBED_<FLAG>` environment, `--config FILE.json`, and subcommands.

Precedence for every daemon setting: command line, then environment, then config file, then
the default. Checks add up from all three. Every mistake exits 2 with one line naming the
flag, variable or key, the bad value and what was expected.
"""

import argparse
import asyncio
import json
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import __version__
from .checks import ExecCheck, HTTPCheck, TCPCheck  # noqa: F401 (registers the kinds)
from .config import build_checks, describe_spec, json_check_to_raw, split_check_text
from .daemon import Daemon
from .eventlog import LOG_FORMATS, EventLog
from .probebench import bench_main
from .values import (
    ConfigError,
    format_duration,
    parse_duration,
    parse_host_port,
    parse_positive_count,
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
SERVE_OPTIONS: List[Tuple[str, Callable[[str], Any], Any, str]] = [
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
    ("--drain-seconds", parse_duration, 5.0, "after SIGTERM: ready fails, probes answered this "
                                             "long, then exit 0"),
    ("--log-format", _log_format, "text", "text (logfmt) or json"),
]

EPILOG = """check kinds and keys: see README.md ("Checks"). Example:
  probed --check "http url=http://127.0.0.1:8000/health probes=live,ready,started"
Every flag also reads PROBED_<FLAG> (e.g. PROBED_READ_TIMEOUT=5s; PROBED_CHECK holds one check
per line)."""


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
            raise ConfigError("%s=%s: %s" % (where, text, exc)) from None
    settings["checks"] = _collect_checks(ns, env, file_data, config_path)
    return settings


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


def print_config(settings: Dict[str, Any], checks: Sequence[Any]) -> None:
    """The effective configuration as the JSON `--config` accepts, secrets redacted."""
    out: Dict[str, Any] = {}
    for flag, _, _, _ in SERVE_OPTIONS:
        value = settings[_dest(flag)]
        shown = value if value is None or isinstance(value, int) else _show_default(value)
        out[_dest(flag).replace("_", "-")] = shown
    out["checks"] = [describe_spec(c.spec) for c in checks]
    print(json.dumps(out, indent=2))


def serve(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """`probed [serve] ...`: validate everything, then run the daemon."""
    ns = build_serve_parser().parse_args(list(argv))
    settings = resolve_settings(ns, env)
    raws = settings.pop("checks")
    checks = build_checks([r for r, _ in raws], [o for _, o in raws])
    if getattr(ns, "print_config", False):
        print_config(settings, checks)
        return 0
    log = EventLog(settings["log_format"])
    return asyncio.run(Daemon(settings, checks, log).run())


SUBCOMMANDS: Dict[str, Callable[[List[str]], int]] = {
    "serve": lambda args: 0,  # handled in main(): it needs the environment
    "bench": bench_main,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `probed`, `python -m probed` and `python3 probed.py`."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and args[0] in SUBCOMMANDS else "serve"
    if args and args[0] in SUBCOMMANDS:
        args = args[1:]
    try:
        if command == "serve":
            return serve(args, os.environ)
        return SUBCOMMANDS[command](args)
    except ConfigError as exc:
        print("probed: error: %s" % exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
