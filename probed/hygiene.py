"""What an observation may carry into a reply or a log line: no secrets, no control characters,
bounded size. Pure functions; the scheduler applies them to every poll's result, once, before
the pod stores it, so every later rendering (plain, verbose, JSON, logs, /metrics) is clean.

Why here and not in each renderer: a reason reaches the unauthenticated plain `/readyz` body,
`?verbose`, `?format=json` and the log, and a backend chooses its bytes (an error page that
echoes our Authorization header, a terminal escape in a file name, 40k model ids).
"""

from typing import Any, Iterable, List, Tuple

from .checks.base import Observation
from .values import printable, redact_userinfo

REASON_MAX_CHARS = 300  # a reason: one probe reply line and one log field
DETAIL_MAX_CHARS = 300  # one string inside a JSON detail
DETAIL_MAX_ITEMS = 20  # items of one list (or keys of one object) inside a JSON detail
DETAIL_MAX_DEPTH = 4  # nesting kept inside a JSON detail
SECRET_MIN_CHARS = 4  # shorter "secrets" would redact ordinary words
REDACTED = "<redacted>"


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every known secret and URL credential replaced by <redacted>."""
    for secret in secrets:
        if len(secret) >= SECRET_MIN_CHARS and secret in text:
            text = text.replace(secret, REDACTED)
    return redact_userinfo(text) if "@" in text else text


def clean_text(text: str, secrets: Tuple[str, ...], limit: int) -> str:
    """Redacted, control characters escaped, at most `limit` characters."""
    return printable(redact(text, secrets), limit)


def clean_detail(value: Any, secrets: Tuple[str, ...], depth: int = 0) -> Any:
    """A JSON-able detail with strings cleaned and lists and objects cut to their first items
    (a note says how many were left out)."""
    if isinstance(value, str):
        return clean_text(value, secrets, DETAIL_MAX_CHARS)
    if depth >= DETAIL_MAX_DEPTH and isinstance(value, (list, tuple, dict)):
        return "(%d items)" % len(value)
    if isinstance(value, (list, tuple)):
        items: List[Any] = [clean_detail(v, secrets, depth + 1) for v in value[:DETAIL_MAX_ITEMS]]
        if len(value) > DETAIL_MAX_ITEMS:
            items.append("... %d more" % (len(value) - DETAIL_MAX_ITEMS))
        return items
    if isinstance(value, dict):
        out = {}
        for i, (key, item) in enumerate(value.items()):
            if i == DETAIL_MAX_ITEMS:
                out["..."] = "%d more" % (len(value) - DETAIL_MAX_ITEMS)
                break
            out[clean_text(str(key), secrets, DETAIL_MAX_CHARS)] = clean_detail(
                item, secrets, depth + 1)
        return out
    return value


def clean_observation(obs: Observation, secrets: Tuple[str, ...]) -> Observation:
    """The observation with its reason and detail fit to show (in place; returned for chaining).
    `raw` is left alone: judge() reads it, nothing renders it."""
    obs.reason = clean_text(obs.reason, secrets, REASON_MAX_CHARS)
    if obs.detail is not None:
        obs.detail = clean_detail(obs.detail, secrets)
    if isinstance(obs.incarnation, str):
        obs.incarnation = clean_text(obs.incarnation, secrets, DETAIL_MAX_CHARS)
    return obs
