"""Check specifications: `KIND key=value ...` strings and JSON objects into validated `CheckSpec`s.

Every mistake becomes a ConfigError naming where it came from (`--check #2`), the key, the bad
value and what was expected, before the daemon starts. Secrets are masked in every rendering.
"""

import re
import shlex
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .checks import CHECK_KINDS
from .checks.base import COMMON_PARAMS, Check, CheckResources, CheckSpec, Param
from .hygiene import REDACTED
from .values import ConfigError, format_duration, redact_userinfo

RawValue = Union[str, List[str]]
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,63}\Z")


def split_check_text(text: str, origin: str) -> Dict[str, RawValue]:
    """`http url=... probes=live` -> {"kind": "http", "url": ..., "probes": ...} (raw strings)."""
    try:
        tokens = shlex.split(text)
    except ValueError as exc:  # the text is not echoed: it may hold a header with a token
        raise ConfigError("%s: %s (check the quoting)" % (origin, exc)) from None
    if not tokens:
        raise ConfigError("%s: empty check (expected \"KIND key=value ...\")" % origin)
    raw: Dict[str, RawValue] = {"kind": tokens[0]}
    for token in tokens[1:]:
        key, eq, value = token.partition("=")
        if not eq or not key:
            raise ConfigError("%s: %r is not key=value" % (origin, token))
        previous = raw.get(key)
        if previous is None:
            raw[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            raw[key] = [previous, value]
    return raw


def json_check_to_raw(obj: Any, origin: str) -> Dict[str, RawValue]:
    """A JSON check object: the same keys as `--check`; numbers, booleans and lists allowed."""
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        raise ConfigError("%s: expected an object with a \"kind\" string" % origin)
    raw: Dict[str, RawValue] = {}
    for key, value in obj.items():
        if key == "from":
            continue  # where --print-config says a check came from: informational
        if isinstance(value, list):
            items = [_json_scalar(v, origin, key) for v in value]
            raw[key] = ",".join(items) if key == "probes" else items
        else:
            raw[key] = _json_scalar(value, origin, key)
    return raw


def _json_scalar(value: Any, origin: str, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ConfigError("%s: key %r: expected a string, number or boolean, got %s" % (
        origin, key, type(value).__name__))


def _parse_value(param: Param, key: str, value: RawValue, where: str) -> Any:
    values = value if isinstance(value, list) else [value]
    if len(values) > 1 and not param.repeat:
        raise ConfigError("%s: key %r given %d times (it takes one value)" % (
            where, key, len(values)))
    parsed = []
    for text in values:
        try:
            parsed.append(param.parse(text))
        except ValueError as exc:
            shown = REDACTED if param.secret else redact_userinfo(text)
            raise ConfigError("%s: %s=%s: %s" % (where, key, shown, exc)) from None
    return parsed if param.repeat else parsed[0]


def build_spec(raw: Mapping[str, RawValue], origin: str) -> CheckSpec:
    """Validate one raw check against its kind's keys and the common keys."""
    kind = raw.get("kind")
    cls = CHECK_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError("%s: unknown check kind %r (expected one of: %s)" % (
            origin, kind, ", ".join(sorted(CHECK_KINDS))))
    where = "%s (%s)" % (origin, kind)
    common: Dict[str, Any] = {}
    params: Dict[str, Any] = {}
    shown: Dict[str, Any] = {}
    for key, value in raw.items():
        if key == "kind":
            continue
        if key in COMMON_PARAMS:
            common[key] = _parse_value(COMMON_PARAMS[key], key, value, where)
        elif key in cls.params:
            params[key] = _parse_value(cls.params[key], key, value, where)
            shown[key] = REDACTED if cls.params[key].secret else value
        else:
            raise ConfigError("%s: unknown key %r (expected one of: %s)" % (
                where, key, ", ".join(sorted(set(cls.params) | set(COMMON_PARAMS)))))
    for key, param in cls.params.items():
        if key not in params:
            if param.required:
                raise ConfigError("%s: missing required key %r (%s)" % (where, key, param.help))
            params[key] = param.default
    spec = _spec_from(cls, common, params, origin)
    spec.shown = shown
    return spec


def _spec_from(cls: Any, common: Dict[str, Any], params: Dict[str, Any],
               origin: str) -> CheckSpec:
    name = common.get("name", cls.kind)
    if not NAME_PATTERN.match(name):
        raise ConfigError("%s: name=%s: expected letters, digits, '-' or '_' (at most 63)" % (
            origin, name))
    interval = common.get("interval", cls.default_interval)
    timeout = common.get("timeout", cls.default_timeout)
    if interval <= 0:
        raise ConfigError("%s: interval=%s: expected a duration > 0" % (
            origin, format_duration(interval)))
    if timeout <= 0:
        raise ConfigError("%s: timeout=%s: expected a duration > 0" % (
            origin, format_duration(timeout)))
    stale_after = common.get("stale-after", 3 * interval + timeout)
    if stale_after <= interval:
        raise ConfigError("%s: stale-after=%s: expected more than interval=%s" % (
            origin, format_duration(stale_after), format_duration(interval)))
    return CheckSpec(cls.kind, name, common.get("probes", cls.default_probes), interval, timeout,
                     common.get("fail-after", 1), common.get("pass-after", 1), stale_after,
                     params, origin, common.get("start-interval"))


def build_checks(raws: Sequence[Dict[str, RawValue]], origins: Sequence[str],
                 resources: Optional[CheckResources] = None) -> List[Check]:
    """Checks from raw specs, all sharing `resources` (one set is made when none is given);
    names must be unique."""
    shared = resources if resources is not None else CheckResources()
    checks: List[Check] = []
    seen: Dict[str, str] = {}
    for raw, origin in zip(raws, origins):
        spec = build_spec(raw, origin)
        if spec.name in seen:
            raise ConfigError("%s: a check named %r already comes from %s (give one name=...)" % (
                origin, spec.name, seen[spec.name]))
        seen[spec.name] = origin
        checks.append(CHECK_KINDS[spec.kind](spec, shared))
    return checks


def describe_spec(spec: CheckSpec) -> Dict[str, Any]:
    """A check as the JSON object `--config` accepts, secrets replaced by <redacted>."""
    out: Dict[str, Any] = {
        "kind": spec.kind, "name": spec.name, "probes": ",".join(sorted(spec.probes)),
        "interval": format_duration(spec.interval), "timeout": format_duration(spec.timeout),
        "fail-after": spec.fail_after, "pass-after": spec.pass_after,
        "stale-after": format_duration(spec.stale_after),
    }
    if spec.start_interval is not None:
        out["start-interval"] = format_duration(spec.start_interval)
    out.update(spec.shown)
    if spec.origin:
        out["from"] = spec.origin
    return out
