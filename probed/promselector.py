"""PromQL-style series selectors (`name{label="v",other=~"a|b"}`) and aggregation, and the name
syntax selectors share with the exposition formats (expfmt re-exports what it offers from here).

Pure functions; no I/O here. A bad selector or aggregation raises ValueError saying what is wrong.
"""

import re
from typing import Dict, List, Optional, Pattern, Sequence, Tuple, cast

AGGREGATIONS = ("sum", "max", "min", "avg", "count")
PROM_NAME_PATTERN = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
PROM_LABEL_PATTERN = r"[a-zA-Z_][a-zA-Z0-9_]*"
PROM_NAME_RE = re.compile(PROM_NAME_PATTERN)
PROM_TEXT_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}  # all the text exposition format knows
PROM_EXCERPT_CHARS = 60  # how much of a bad line or selector an error message quotes

_PROMSEL_ESCAPES = dict(PROM_TEXT_ESCAPES, **{"'": "'", "t": "\t"})
_PROMSEL_OPS = ("=", "!=", "=~", "!~")
_PROMSEL_LABEL_RE = re.compile(PROM_LABEL_PATTERN)
_PROMSEL_ESCAPE_RE = re.compile(r"\\(.)")
_PROMSEL_HEAD_RE = re.compile(r"\s*(%s)?\s*" % PROM_NAME_PATTERN)
_PROMSEL_CLOSE_RE = re.compile(r"\s*\}\s*")
_PROMSEL_ITEM_RE = re.compile(
    r"""\s*(?:(%s)|"((?:[^"\\]|\\.)*)")\s*(?:(=~|!~|!=|=)\s*"""
    r"""(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'))?\s*(?:,|(?=\s*\}))""" % PROM_LABEL_PATTERN,
    re.S)


def prom_unescape(text: str, table: Dict[str, str] = PROM_TEXT_ESCAPES) -> str:
    """Resolve backslash escapes; an escape not in `table` stays as written."""
    if "\\" not in text:
        return text
    return _PROMSEL_ESCAPE_RE.sub(lambda m: table.get(m.group(1), m.group(0)), text)


def prom_excerpt(text: str) -> str:
    """`text` quoted for an error message, cut after PROM_EXCERPT_CHARS characters."""
    return repr(text if len(text) <= PROM_EXCERPT_CHARS else text[:PROM_EXCERPT_CHARS] + "...")


def _promsel_quote(text: str) -> str:
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Selector:
    """A metric name and label matchers, PromQL style: `name{label="v",other=~"a|b"}`."""

    __slots__ = ("name", "matchers", "_tests")

    def __init__(self, name: str, matchers: Sequence[Tuple[str, str, str]] = ()) -> None:
        if not name:
            raise ValueError("a selector needs a metric name")
        self.name = name
        self.matchers = tuple((label, op, value) for label, op, value in matchers)
        tests = []
        for label, op, value in self.matchers:
            if op not in _PROMSEL_OPS:
                raise ValueError("unknown operator %r for label %r: expected =, !=, =~ or !~"
                                 % (op, label))
            try:  # used with fullmatch: anchored at both ends like PromQL
                tests.append((label, op, re.compile(value, re.S) if "~" in op else value))
            except re.error as exc:
                raise ValueError("bad regular expression %r for label %r: %s"
                                 % (value, label, exc)) from None
        self._tests = tuple(tests)

    def matches(self, labels: Dict[str, str]) -> bool:
        """True when every matcher holds; a missing label counts as the empty string."""
        for label, op, want in self._tests:
            have = labels.get(label, "")
            if op == "=":
                ok = have == want
            elif op == "!=":
                ok = have != want
            else:
                ok = (cast(Pattern[str], want).fullmatch(have) is None) == (op == "!~")
            if not ok:
                return False
        return True

    def __str__(self) -> str:
        bare = PROM_NAME_RE.fullmatch(self.name) is not None
        parts = [] if bare else [_promsel_quote(self.name)]
        for label, op, value in self.matchers:
            shown = label if _PROMSEL_LABEL_RE.fullmatch(label) else _promsel_quote(label)
            parts.append(shown + op + _promsel_quote(value))
        return (self.name if bare else "") + ("{%s}" % ",".join(parts) if parts else "")

    def __repr__(self) -> str:
        return "parse_selector(%r)" % str(self)


def parse_selector(text: str) -> Selector:
    """Parse `name`, `name{l1="v",l2!="v",l3=~"re",l4!~"re"}` or `{"dotted.name",l="v"}`.

    Values take double or single quotes; regexes must match the whole value (PromQL anchoring);
    `__name__="x"` also names the metric. Raises ValueError saying where the syntax broke.
    """
    head = _PROMSEL_HEAD_RE.match(text)
    assert head is not None  # the head pattern matches the empty string
    name, pos = head.group(1), head.end()
    matchers = []  # type: List[Tuple[str, str, str]]
    if text.startswith("{", pos):
        pos += 1
        while not _PROMSEL_CLOSE_RE.match(text, pos):
            item = _PROMSEL_ITEM_RE.match(text, pos)
            if item is None:
                raise ValueError("selector %r: expected label=\"value\" (or !=, =~, !~) or '}' "
                                 "at position %d" % (text, pos))
            bare, quoted, op, dq, sq = item.groups()
            label = prom_unescape(quoted, _PROMSEL_ESCAPES) if bare is None else bare
            value = prom_unescape(dq if dq is not None else sq or "", _PROMSEL_ESCAPES)
            if op is None and quoted is None:
                raise ValueError("selector %r: label %r needs an operator and a quoted value"
                                 % (text, label))
            if op is None or (label == "__name__" and op == "="):
                if name:
                    raise ValueError("selector %r names more than one metric" % text)
                name = label if op is None else value
            else:
                matchers.append((label, op, value))
            pos = item.end()
        close = _PROMSEL_CLOSE_RE.match(text, pos)
        assert close is not None  # the loop above ends only where it matches
        pos = close.end()
    if pos != len(text):
        raise ValueError("selector %r: unexpected %s at position %d"
                         % (text, prom_excerpt(text[pos:]), pos))
    if not name:
        raise ValueError("selector %r has no metric name: write name{...} or {\"name\",...}" % text)
    return Selector(name, matchers)


def aggregate(values: Sequence[float], how: str) -> Optional[float]:
    """Combine values by `how` in AGGREGATIONS; None when there are none (count gives 0.0).

    max and min skip NaN unless every value is NaN (as PromQL does); sum and avg pass it on.
    """
    if how not in AGGREGATIONS:
        raise ValueError("unknown aggregation %r: expected one of %s"
                         % (how, ", ".join(AGGREGATIONS)))
    if how == "count" or not values:
        return float(len(values)) if how == "count" else None
    if how in ("sum", "avg"):
        return float(sum(values)) / (len(values) if how == "avg" else 1)
    numbers = [v for v in values if v == v] or list(values)
    return float(max(numbers) if how == "max" else min(numbers))
