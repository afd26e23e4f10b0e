"""The daemon's command line: the flag table, the parser built from it, Go-style spellings and
one-line errors with a did-you-mean (--help is flaghelp.py's). No I/O; settings.py resolves the
values.

Every flag is a row of one table (flag, parser, default, metavar, help), so --help, the
environment names (`PROBED_<FLAG>`), the config file keys and `--print-config` never disagree.
"""

import re
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from .checkspecs import MIN_INTERVAL
from .eventlog import LOG_FORMATS
from .presets import PRESET_OPTIONS
from .beatregistry import parse_beat_name
from .groups import GROUPS
from .values import (
    ConfigError,
    format_duration,
    parse_duration,
    parse_host_port,
    parse_http_url,
    parse_positive_count,
)

ADMIN_DEFAULT_HOST = "127.0.0.1"  # `--admin-addr :9090` listens on loopback only
HELP_WIDTH = 100  # columns of --help
MIN_TIMER = 0.1  # seconds: the floor of the read, write and idle timeouts


class Option(NamedTuple):
    """One daemon flag: how its value is parsed, its default, what it is, what it does."""
    flag: str
    parse: Callable[[str], Any]
    default: Any
    metavar: str
    help: str


def parse_port(text: str) -> int:
    """A TCP port, 1-65535."""
    value = parse_positive_count(text)
    if value > 65535:
        raise ValueError("expected a port between 1 and 65535")
    return value


def parse_admin_addr(text: str) -> Optional[Tuple[str, int]]:
    """`:9090` -> ("127.0.0.1", 9090); `0.0.0.0:9090` as given; `off` or empty -> None."""
    if text.strip().lower() in ("", "off", "none"):
        return None
    host, port = parse_host_port(text, ADMIN_DEFAULT_HOST)
    if port == 0:
        raise ValueError("expected a port between 1 and 65535")
    return host, port


def parse_admin_url(text: str) -> str:
    """An admin listener's base URL: http://host:9090 (no path)."""
    return parse_http_url(text).rstrip("/")


def parse_group(text: str) -> str:
    """live, ready or started."""
    if text not in GROUPS:
        raise ValueError("expected live, ready or started")
    return text


def parse_log_format(text: str) -> str:
    """text or json."""
    if text not in LOG_FORMATS:
        raise ValueError("expected text or json")
    return text


def parse_interval(text: str) -> float:
    """A poll interval: a duration of at least MIN_INTERVAL."""
    value = parse_duration(text)
    if value < MIN_INTERVAL:
        raise ValueError("expected at least %s (a shorter interval hammers the backend)"
                         % format_duration(MIN_INTERVAL))
    return value


def parse_timer(text: str) -> float:
    """A connection timeout: a duration of at least MIN_TIMER."""
    value = parse_duration(text)
    if value < MIN_TIMER:
        raise ValueError("expected at least %s" % format_duration(MIN_TIMER))
    return value


def parse_optional_duration(text: str) -> Optional[float]:
    """A duration, or off (0, off, none): no limit."""
    return None if text.strip().lower() in ("", "0", "off", "none") else parse_duration(text)


def parse_optional_interval(text: str) -> Optional[float]:
    """An interval, or off: each check keeps its own."""
    return None if text.strip().lower() in ("", "0", "off", "none") else parse_interval(text)


def parse_exit_rule(text: str) -> Dict[str, int]:
    """`live=75` or `live=75,gpu-live=76`: which failures end probed with which exit code."""
    rules: Dict[str, int] = {}
    for part in text.split(","):
        name, eq, code = part.strip().partition("=")
        if not eq or not name or not code.strip().isdigit() or not 1 <= int(code) <= 255:
            raise ValueError("expected GROUP_OR_CHECK=CODE with a code from 1 to 255, e.g. "
                             "live=75")
        rules[name.strip()] = int(code)
    return rules


DAEMON_OPTIONS: List[Option] = [
    Option("--addr", parse_host_port, ("", 8080), "ADDR",
           "probe listener: :8080 (all, IPv4+IPv6), 0.0.0.0:8080, [::1]:8080"),
    Option("--read-timeout", parse_timer, 10.0, "DURATION", "time to receive a whole request"),
    Option("--write-timeout", parse_timer, 10.0, "DURATION", "time to send a reply"),
    Option("--idle-timeout", parse_timer, 120.0, "DURATION", "keep-alive connection idle time"),
    Option("--max-connections", parse_positive_count, 1024, "N",
           "open connections beyond this: the oldest idle or incomplete one gives way"),
    Option("--tcp-live", parse_port, None, "PORT", "TCP port that listens only while live passes"),
    Option("--tcp-ready", parse_port, None, "PORT",
           "TCP port that listens only while ready passes"),
    Option("--tcp-started", parse_port, None, "PORT",
           "TCP port that listens only while started passes"),
    Option("--startup-timeout", parse_optional_duration, None, "DURATION",
           "live fails when not started within this (default: never)"),
    Option("--start-interval", parse_interval, 0.5, "DURATION",
           "poll interval of started and ready checks until the pod has been ready once"),
    Option("--interval", parse_optional_interval, None, "DURATION",
           "poll interval of every check that sets none, presets included (default: per kind)"),
    Option("--drain-seconds", parse_duration, 5.0, "DURATION",
           "after SIGTERM, SIGINT or SIGHUP: ready fails, probes answered this long, then exit 0"),
    Option("--log-format", parse_log_format, "text", "FORMAT", "text (logfmt) or json"),
    Option("--admin-addr", parse_admin_addr, None, "ADDR",
           "admin listener (drain, heartbeats, become-ready): :9090 is 127.0.0.1:9090; a host "
           "listens there (default: off)"),
    Option("--admin-token-file", str, None, "FILE",
           "every admin call must send Authorization: Bearer <this file's token> (re-read when "
           "it changes)"),
    Option("--restart-pod-on", parse_exit_rule, None, "RULE",
           "exit with CODE when GROUP (live) or a CHECK fails for --restart-pod-after, e.g. "
           "live=75: with restartPolicyRules (Kubernetes 1.35+) the pod restarts in place"),
    Option("--restart-pod-after", parse_duration, 30.0, "DURATION",
           "how long a --restart-pod-on failure must last before probed exits"),
    Option("--beat-to", parse_admin_url, None, "URL",
           "another probed's admin listener (multi-node leader): POST /heartbeat/NAME there "
           "every --beat-every while --beat-on passes"),
    Option("--beat-name", parse_beat_name, None, "NAME",
           "this pod's heartbeat name (default: rank-$LWS_WORKER_INDEX, else the host name)"),
    Option("--beat-every", parse_interval, 5.0, "DURATION", "time between heartbeats"),
    Option("--beat-on", parse_group, "ready", "GROUP",
           "beat only while this group (live, ready, started) passes"),
    Option("--beat-token-file", str, None, "FILE", "Bearer token for --beat-to's listener"),
]

PRESET_METAVARS = {
    "--vllm": "URL", "--tgi": "URL", "--sglang": "URL", "--llamacpp": "URL",
    "--vllm-endpoint": "URL", "--model": "NAME", "--max-waiting": "N",
    "--max-kv-cache": "FRACTION", "--api-key-file": "FILE", "--inference-every": "DURATION",
    "--inference-timeout": "DURATION", "--stall-after": "DURATION", "--ray": "URL",
    "--ray-nodes": "N", "--ray-gpus": "N", "--ray-grace": "DURATION", "--ray-agent": "URL",
    "--gpu": "GPUS", "--worker-ranks": "N", "--worker-window": "DURATION",
    "--vllm-dev-mode": "BOOL", "--idle-sleep": "BOOL",
}

SERVE_OPTIONS: List[Option] = DAEMON_OPTIONS + [
    Option(flag, parse, default, PRESET_METAVARS.get(flag, "VALUE"), text)
    for flag, parse, default, text in PRESET_OPTIONS]
PRESET_FLAGS = frozenset(flag for flag, _, _, _ in PRESET_OPTIONS)
SWITCHES = ("--print-config", "--allow-no-checks", "--version", "--help")  # take no value
VALUE_FLAGS = frozenset([o.flag for o in SERVE_OPTIONS] + ["--check", "--config"])


def dest(flag: str) -> str:
    """`--read-timeout` -> `read_timeout` (the Settings field and argparse dest)."""
    return flag.lstrip("-").replace("-", "_")


def env_name(flag: str) -> str:
    """`--read-timeout` -> `PROBED_READ_TIMEOUT`."""
    return "PROBED_" + dest(flag).upper()


def show_default(value: Any) -> str:
    """A default as --help and --print-config show it."""
    if isinstance(value, tuple):
        return "%s:%d" % value
    if isinstance(value, bool):  # as the flag takes it (true/false), not Python's spelling
        return "true" if value else "false"
    if isinstance(value, float):
        return format_duration(value)
    return str(value)


def normalize_argv(argv: Sequence[str]) -> List[str]:
    """Go's flag package spellings too (`-addr=:8080`, `-addr :8080`, `--addr=:8080`), so the
    container args of a working Multi Node Prober deployment work unchanged; an unknown flag is
    one line with a did-you-mean."""
    known = VALUE_FLAGS | set(SWITCHES)
    out: List[str] = []
    expect_value = False
    for arg in argv:
        if expect_value:
            out.append(arg)
            expect_value = False
            continue
        if arg in ("-h", "--") or not arg.startswith("-") or arg == "-":
            out.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        flag = "--" + name
        if flag not in known:
            raise ConfigError(unknown_flag(arg.partition("=")[0], known))
        out.append(flag + eq + value)
        expect_value = flag in VALUE_FLAGS and not eq
    return out


def unknown_flag(given: str, known: Iterable[str]) -> str:
    """`unknown flag --vlm (did you mean --vllm?)`, one line."""
    import difflib  # only on this mistake: a plain start does without it

    close = difflib.get_close_matches("--" + given.lstrip("-"), sorted(known), n=1, cutoff=0.6)
    hint = " (did you mean %s?)" % close[0] if close else ""
    return "unknown flag %s%s; probed --help lists them" % (given, hint)


# What argparse takes for a value although it starts with "-": a negative number (its rule up to
# 3.12; 3.13 also takes "-1e3" and "-5."), or "-" alone.
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def parse_serve_args(argv: Sequence[str]) -> SimpleNamespace:
    """The `probed [serve]` arguments, parsed as flaghelp.build_serve_parser() would: only given
    flags are set, the last of a repeated flag wins, `--check` collects, mistakes are one
    ConfigError line. It is not argparse because argparse and gettext are 0.3-1.2 MB of a
    daemon's idle RSS (bench/README.md) for one call at start. `-h`/`--help` and `--version`
    end parsing with `help` or `version` set: the caller prints flaghelp's help or the version."""
    args = normalize_argv(argv)
    ns = SimpleNamespace()
    extra: List[str] = []  # words that are no flag nor a flag's value: refused at the end
    i = 0
    while i < len(args):
        arg, i = args[i], i + 1
        flag, eq, value = arg.partition("=")
        if flag in ("-h", "--help"):
            if eq:
                raise ConfigError("argument -h/--help: ignored explicit argument %r" % value)
            ns.help = True  # the caller prints flaghelp's help: only --help pays for argparse
            return ns
        if arg == "--":
            extra += args[i - 1:]
            break
        if not arg.startswith("-") or arg == "-":
            extra.append(arg)
            continue
        if flag in SWITCHES:
            if eq:
                raise ConfigError("argument %s: ignored explicit argument %r" % (flag, value))
            setattr(ns, dest(flag), True)
            if flag == "--version":
                return ns  # the caller prints it, as it prints the help
            continue
        if not eq:
            if i == len(args) or _takes_as_flag(args[i]):
                raise ConfigError("argument %s: expected one argument" % flag)
            value, i = args[i], i + 1
        if flag == "--check":
            ns.check = getattr(ns, "check", []) + [value]
        else:
            setattr(ns, dest(flag), value)
    if extra:
        raise ConfigError("unrecognized arguments: %s" % " ".join(extra))
    return ns


def _takes_as_flag(arg: str) -> bool:
    """Whether argparse would read `arg` as an option, not as the value before it."""
    return (arg.startswith("-") and arg != "-" and not _NEGATIVE_NUMBER.match(arg)
            and " " not in arg)
