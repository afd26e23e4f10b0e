"""Percent-encoding, percent-decoding and query strings (RFC 3986 and HTML forms). Pure.

What probed needs of urllib.parse, in a few lines: that module imports ipaddress at start and
together they cost about 0.4 MB of a process whose whole budget over the interpreter is 4 MB.
"""

import re
from typing import List, Tuple

_URL_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_URL_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def percent_encode(text: str, safe: str) -> str:
    """`text` with every character outside the unreserved set and `safe` percent-encoded as
    its UTF-8 bytes (what urllib.parse.quote does)."""
    allowed = _URL_UNRESERVED.union(safe)
    if all(c in allowed for c in text):
        return text
    out: List[str] = []
    for char in text:
        if char in allowed:
            out.append(char)
        else:
            out.extend("%%%02X" % b for b in char.encode("utf-8"))
    return "".join(out)


def percent_decode(raw: bytes) -> bytes:
    """`%XX` escapes decoded; anything else (a lone `%`) kept as is."""
    if b"%" not in raw:
        return raw
    return _URL_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)


def query_pairs(query: str) -> List[Tuple[str, str]]:
    """`a=1&b&c=x+y` -> [("a", "1"), ("b", ""), ("c", "x y")]; UnicodeDecodeError when an
    escape is not UTF-8. Only `&` separates (as urllib.parse does since Python 3.9.2)."""
    pairs: List[Tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((_form_decode(key), _form_decode(value)))
    return pairs


def _form_decode(text: str) -> str:
    return percent_decode(text.replace("+", " ").encode("latin-1")).decode("utf-8")
