"""Daemon settings: flags, `PROBED_<FLAG>` environment and `--config FILE.json`, resolved into
one typed `Settings` plus the raw checks they ask for.

Precedence for every setting: command line, then environment, then config file, then the
default. Checks add up from all three (and from the preset flags). Every mistake raises a
ConfigError naming the flag, variable or key, the bad value and what was expected; a
configuration that would leave a pod broken without a word (no checks at all) is refused.
"""

import json
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .checkspecs import describe_spec, json_check_to_raw, split_check_text
from .files import read_small_text
from .flags import (DAEMON_OPTIONS, PRESET_FLAGS, SERVE_OPTIONS, dest, env_name, parse_port,
                    show_default)
from .presets import RawCheck, preset_checks, preset_notes, unread_option
from .values import ConfigError, format_duration, redact_userinfo

CONFIG_MAX_BYTES = 1 << 20  # a --config file; a bigger one is a wrong path (or /dev/zero)
MULTINODE_PROBER_PORT = 8081  # the Multi Node Prober's default --addr



class Settings(NamedTuple):
    """Everything the daemon reads, typed. Preset flags are not here: they became checks."""
    addr: Tuple[str, int]
    read_timeout: float
    write_timeout: float
    idle_timeout: float
    max_connections: int
    tcp_live: Optional[int]
    tcp_ready: Optional[int]
    tcp_started: Optional[int]
    startup_timeout: Optional[float]
    start_interval: float
    interval: Optional[float]
    drain_seconds: float
    log_format: str
    admin_addr: Optional[Tuple[str, int]]
    admin_token_file: Optional[str]
    restart_pod_on: Optional[Dict[str, int]]
    restart_pod_after: float
    beat_to: Optional[str]
    beat_name: Optional[str]
    beat_every: float
    beat_on: str
    beat_token_file: Optional[str]
    multinode_prober: bool = False  # --vllm-endpoint: the Go prober's reply bodies and codes
    notes: Tuple[str, ...] = ()  # what resolution changed on the user's behalf: logged at start


def resolve_settings(ns: object, env: Mapping[str, str]
                     ) -> Tuple[Settings, List[Tuple[RawCheck, str]]]:
    """Apply command line > environment > config file > default to every setting; returns the
    settings and every raw check with its origin."""
    config_path = getattr(ns, "config", None) or env.get("PROBED_CONFIG")
    file_data = load_config_file(config_path) if config_path else {}
    values: Dict[str, Any] = {}
    for option in SERVE_OPTIONS:
        found = _given_text(ns, env, file_data, config_path, option.flag)
        if found is None:
            values[dest(option.flag)] = option.default
            continue
        where, text = found
        try:
            values[dest(option.flag)] = option.parse(text)
        except ValueError as exc:
            raise ConfigError("%s=%s: %s" % (where, redact_userinfo(text), exc)) from None
    addr_given = _given_text(ns, env, file_data, config_path, "--addr") is not None
    if "APP_PORT" in env and not addr_given:  # the LLM Healthchecker's port; --addr wins
        values["addr"] = ("", _env_port(env, "APP_PORT"))
    elif values["vllm_endpoint"] and not addr_given:  # drop-in for the Go prober's manifests
        values["addr"] = ("", MULTINODE_PROBER_PORT)
    presets = {dest(f): values[dest(f)] for f in PRESET_FLAGS}
    given = _given_presets(ns, env, file_data, config_path)
    unread = unread_option(presets, given)
    if unread:
        raise ConfigError(unread)
    raws = _collect_checks(ns, env, file_data, config_path) + preset_checks(presets, env)
    if not raws and not getattr(ns, "allow_no_checks", False):
        raise ConfigError("no checks configured, so every probe would pass: give a preset "
                          "(--vllm URL, --llamacpp URL, --sglang URL, --tgi URL), --check "
                          "\"KIND key=value ...\" or --config FILE (or --allow-no-checks if an "
                          "empty set is meant)")
    if values["interval"] is not None:
        for raw, _ in raws:
            raw.setdefault("interval", format_duration(values["interval"]))
    daemon = {dest(o.flag): values[dest(o.flag)] for o in DAEMON_OPTIONS}
    if daemon["beat_to"] and not daemon["beat_name"]:
        index = env.get("LWS_WORKER_INDEX", "").strip()
        daemon["beat_name"] = "rank-" + index if index.isdigit() else env.get("HOSTNAME") or \
            "worker"
    settings = Settings(multinode_prober=bool(values["vllm_endpoint"]),
                        notes=tuple(preset_notes(presets, given)),
                        **daemon)
    return settings, raws


def _env_port(env: Mapping[str, str], name: str) -> int:
    try:
        return parse_port(env[name])
    except ValueError as exc:
        raise ConfigError("%s=%s: %s" % (name, env[name], exc)) from None


def _given_text(ns: object, env: Mapping[str, str], file_data: Dict[str, Any],
                config_path: Optional[str], flag: str) -> Optional[Tuple[str, str]]:
    """(where, text) of the value a flag was given, by precedence; None when not given."""
    name = dest(flag)
    if hasattr(ns, name):
        return flag, getattr(ns, name)
    if env_name(flag) in env:
        return env_name(flag), env[env_name(flag)]
    key = name.replace("_", "-")
    if key in file_data:
        where = "--config %s: key %r" % (config_path, key)
        value = file_data[key]
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError("%s: expected a string, number or boolean, got %s" % (
                where, "null" if value is None else type(value).__name__))
        return where, (("true" if value else "false") if isinstance(value, bool) else str(value))
    return None


def _given_presets(ns: object, env: Mapping[str, str], file_data: Dict[str, Any],
                   config_path: Optional[str]) -> Dict[str, str]:
    """The preset flags as the user typed them (for notes on what was changed)."""
    given = {}
    for flag in PRESET_FLAGS:
        found = _given_text(ns, env, file_data, config_path, flag)
        if found is not None:
            given[dest(flag)] = found[1]
    return given


def _no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    seen: Dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError("key %r appears twice in one object" % key)
        seen[key] = value
    return seen


def load_config_file(path: str) -> Dict[str, Any]:
    """The `--config` JSON object; ConfigError for anything else (refused file types, size,
    syntax, nesting, duplicate keys, unknown keys)."""
    try:
        text = read_small_text(path, CONFIG_MAX_BYTES, "--config")
    except OSError as exc:
        raise ConfigError("--config %s: cannot read: %s" % (path, exc.strerror or exc)) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:
        raise ConfigError("--config %s: not valid JSON: %s" % (path, exc)) from None
    except RecursionError:
        raise ConfigError("--config %s: nested too deeply to be a probed config" % path) from None
    if not isinstance(data, dict):
        raise ConfigError("--config %s: expected a JSON object with \"checks\"" % path)
    known = {dest(o.flag).replace("_", "-") for o in SERVE_OPTIONS} | {"checks"}
    for key in data:
        if key not in known:
            raise ConfigError("--config %s: unknown key %r (expected one of: %s)" % (
                path, key, ", ".join(sorted(known))))
    return data


def _collect_checks(ns: object, env: Mapping[str, str], file_data: Dict[str, Any],
                    config_path: Optional[str]) -> List[Tuple[RawCheck, str]]:
    raws: List[Tuple[RawCheck, str]] = []
    checks = file_data.get("checks", [])
    if not isinstance(checks, list):
        raise ConfigError("--config %s: \"checks\" must be a list" % config_path)
    for i, obj in enumerate(checks, 1):
        origin = "--config %s: check #%d" % (config_path, i)
        raws.append((json_check_to_raw(obj, origin), origin))
    env_lines = [line for line in env.get("PROBED_CHECK", "").splitlines() if line.strip()]
    for i, text in enumerate(env_lines, 1):
        origin = "PROBED_CHECK line %d" % i
        raws.append((split_check_text(text, origin), origin))
    for i, text in enumerate(getattr(ns, "check", None) or [], 1):
        origin = "--check #%d" % i
        raws.append((split_check_text(text, origin), origin))
    return raws


def describe_settings(settings: Settings, checks: Sequence[Any]) -> Dict[str, Any]:
    """The effective configuration as the JSON `--config` accepts, secrets redacted. Preset
    flags are left out: the checks they expanded into are listed, so feeding this back as
    --config gives the same daemon."""
    out: Dict[str, Any] = {}
    for option in DAEMON_OPTIONS:
        value = getattr(settings, dest(option.flag))
        if value is None:
            continue
        if isinstance(value, float) and option.parse is not float:
            value = format_duration(value)
        elif isinstance(value, tuple):
            value = show_default(value)
        elif isinstance(value, dict):
            value = ",".join("%s=%d" % kv for kv in value.items())
        out[dest(option.flag).replace("_", "-")] = value
    out["checks"] = [describe_spec(c.spec) for c in checks]
    return out

