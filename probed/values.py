"""Parsers for configuration values: durations, numbers, URLs, status ranges, probe groups.

Pure functions, no I/O. Every parser raises ValueError with a message that says what was
expected; the config layer adds the flag or key name and the bad value.
"""

import re
import time
from typing import FrozenSet, List, Tuple

from .clientproto import split_url
from .groups import GROUPS


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(Exception):
    """A configuration mistake, reported before the daemon starts (exit code 2)."""


def parse_duration(text: str) -> float:
    """Parse Go-style durations (`500ms`, `1m30s`, `2h`) or plain seconds (`2.5`) into seconds."""
    s = text.strip()
    if not s:
        raise ValueError("expected a duration like 500ms, 10s, 2m or plain seconds")
    try:
        value = float(s)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION_PART.finditer(s):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ValueError("expected a duration like 500ms, 10s, 2m or plain seconds") from None
    if value != value or value < 0 or value == float("inf"):
        raise ValueError("expected a finite duration >= 0")
    return value


def format_duration(seconds: float) -> str:
    """Render seconds the way a user would type them: 500ms, 10s, 2m30s."""
    if seconds < 1 and seconds != 0:
        return "%gms" % round(seconds * 1000, 3)
    if seconds < 60 or seconds != int(seconds):
        return "%gs" % round(seconds, 3)
    minutes, secs = divmod(int(seconds), 60)
    return "%dm%ds" % (minutes, secs) if secs else "%dm" % minutes


def format_timestamp(wall: float, millis: bool = False) -> str:
    """RFC 3339 UTC time of a Unix timestamp, with milliseconds for logs."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
    return text + (".%03dZ" % (int(wall * 1000) % 1000) if millis else "Z")


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str, limit: int) -> str:
    """`text` safe to show in a reply or a log line: control characters (CR, LF, ESC...)
    escaped as \\xNN, and at most `limit` characters, saying how many were left out."""
    if _CONTROL_CHARS.search(text):
        text = _CONTROL_CHARS.sub(lambda m: "\\x%02x" % ord(m.group()) if ord(m.group()) < 256
                                  else "\\u%04x" % ord(m.group()), text)
    if len(text) > limit:
        return "%s... (%d more characters)" % (text[:limit], len(text) - limit)
    return text


def parse_count(text: str) -> int:
    """Parse a whole number >= 0."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < 0:
        raise ValueError("expected a whole number >= 0")
    return value


def parse_positive_count(text: str) -> int:
    """Parse a whole number >= 1."""
    value = parse_count(text)
    if value < 1:
        raise ValueError("expected a whole number >= 1")
    return value


def parse_number(text: str) -> float:
    """Parse a finite float."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return value


def parse_bool(text: str) -> bool:
    """Parse true/false, yes/no, on/off, 1/0."""
    s = text.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_probes(text: str) -> FrozenSet[str]:
    """Parse a comma list of probe groups (live, ready, started); empty means none."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    for name in names:
        if name not in GROUPS:
            raise ValueError("expected a comma list of live, ready, started")
    return frozenset(names)


def parse_status_ranges(text: str) -> Tuple[Tuple[int, int], ...]:
    """Parse `200-399,404` into inclusive (low, high) ranges of HTTP status codes."""
    ranges: List[Tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        low, sep, high = part.partition("-")
        try:
            lo, hi = int(low), int(high) if sep else int(low)
        except ValueError:
            raise ValueError("expected status codes or ranges like 200-399,404") from None
        if not (100 <= lo <= hi <= 599):
            raise ValueError("expected status codes between 100 and 599, low-high")
        ranges.append((lo, hi))
    return tuple(ranges)


def redact_userinfo(text: str) -> str:
    """`http://user:pass@host/` -> `http://<redacted>@host/`, for error messages."""
    return re.sub(r"(?<=//)[^/?#@\s]*@", "<redacted>@", text)


def parse_http_url(text: str) -> str:
    """Check a URL by the client's own grammar (clientproto.split_url), so a URL accepted here
    is one the pollers can request: http:// or https://, a host, a port that exists."""
    s = text.strip()
    if not re.match(r"^(https?)://[^/?#\s]+", s):
        raise ValueError("expected an http:// or https:// URL with a host")
    try:
        split_url(s)
    except ValueError as exc:
        if str(exc).startswith("Port"):  # urllib's words for a port that cannot exist
            raise ValueError("expected a port between 0 and 65535 after the host") from None
        if "credentials" in str(exc):
            raise ValueError("credentials in a URL are not supported (use header= or "
                             "token-file=)") from None
        raise
    return s


def parse_host_port(text: str, default_host: str = "") -> Tuple[str, int]:
    """Parse `host:port`, `:port`, `[v6]:port` into (host, port); an empty host stays empty."""
    s = text.strip()
    if s.startswith("["):
        host, sep, port = s[1:].partition("]:")
        if not sep:
            raise ValueError("expected [ipv6]:port")
    else:
        host, sep, port = s.rpartition(":")
        if not sep:
            raise ValueError("expected host:port or :port")
    try:
        number = int(port)
    except ValueError:
        raise ValueError("expected a port number after the colon") from None
    if not 0 <= number <= 65535:
        raise ValueError("expected a port between 0 and 65535")
    return (host or default_host, number)
