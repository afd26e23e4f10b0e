"""The exposition formats' grammar and the rules a line must keep: Prometheus text (0.0.4) and
OpenMetrics, one line at a time.

Sans-I/O: strings in, samples or ExpositionError (a ValueError starting "line N: ") out; no
sockets, files, clocks or logging here. expfmt.py frames bodies and selects series with these.

The text format follows prometheus/common (blanks around tokens, trailing commas, integer-ms
timestamps, escapes \\\\ \\" \\n only, quoted UTF-8 names); OpenMetrics is strict (single spaces,
`# EOF` last, exemplars, timestamps in seconds).

Every pattern here is matched against one line at a time, and the number grammar has one way to
match each number, so no input costs more than linear time: a whole-body pattern once
backtracked across lines, exponentially in their count (`x 1` lines, then one bad line).
Must never: match a pattern across a line break, or keep per-series state without a cap.
"""

import re
from typing import Dict, FrozenSet, Match, Optional, Pattern, Set, Tuple

from .promselector import (PROM_LABEL_PATTERN, PROM_NAME_PATTERN, PROM_NAME_RE, prom_excerpt,
                           prom_unescape)

_EXPFMT_MAX_EXEMPLAR_CHARS = 128  # OpenMetrics: exemplar label names + values, in code points
_EXPFMT_MAX_TS_DIGITS = 19  # text-format timestamps are int64 milliseconds
# Series of the selected families kept for OpenMetrics' order rules (one block per family,
# timestamps never going back) while selecting; past it the body is refused as too big.
EXPFMT_MAX_TRACKED_SERIES = 5000

ExpositionSample = Tuple[str, Dict[str, str], float, Optional[float]]
_ExpfmtSeriesKey = Tuple[str, Tuple[Tuple[str, str], ...]]

# One way to match each number: `[0-9]+\.?[0-9]*` could split "123" three ways, and a line that
# failed later retried every split (quadratic in the digits of one number).
_EXPFMT_FLOAT = (r"(?:[-+]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
                 r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)|[nN][aA][nN])")
_EXPFMT_REAL = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_EXPFMT_OM_TYPES = "counter|gauge|histogram|gaugehistogram|stateset|info|summary|unknown"
_EXPFMT_TEXT_TYPES = _EXPFMT_OM_TYPES + "|untyped|gauge_histogram"


def _expfmt_text_grammar() -> Tuple[str, str, str]:
    """Comment, sample and label-set patterns of the Prometheus text format."""
    q = r'"[^"\\\n]*(?:"|(?:\\[\\"n][^"\\\n]*)+")'
    pair = r"(?:%s|%s)[ \t]*=[ \t]*%s" % (PROM_LABEL_PATTERN, q, q)
    pairs = r"[ \t]*(?:%s(?:[ \t]*,[ \t]*%s)*[ \t]*(?:,[ \t]*)?)?" % (pair, pair)
    qpairs = r"[ \t]*(?:%s[ \t]*,[ \t]*)*%s[ \t]*(?:,%s)?" % (pair, q, pairs)
    name = "(?:%s|%s)" % (PROM_NAME_PATTERN, q)
    comment = (r"[ \t]*\#(?:[ \t]*HELP(?:[ \t]+(?P<hname>%s)(?:[ \t]+(?P<help>[^\n]*))?)?[ \t]*"
               r"|[ \t]*TYPE(?:[ \t]+(?P<tname>%s)(?:[ \t]+(?P<type>(?i:%s)))?)?[ \t]*"
               r"|(?![ \t]*(?:HELP|TYPE)(?![^ \t\n]))[^\n]*)") % (name, name, _EXPFMT_TEXT_TYPES)
    sample = (r"[ \t]*(?:(?P<name>%s)(?:[ \t]*\{(?P<lab>%s)\}[ \t]*|[ \t]+)|\{(?P<qlab>%s)\}[ \t]*)"
              r"(?P<val>%s)(?:[ \t]+(?P<ts>[-+]?[0-9]+))?[ \t]*"
              ) % (PROM_NAME_PATTERN, pairs, qpairs, _EXPFMT_FLOAT)
    return comment, sample, r"\{(?:%s|%s)\}" % (pairs, qpairs)


def _expfmt_om_grammar() -> Tuple[str, str, str]:
    """Comment, sample and label-set patterns of OpenMetrics 1.0 (plus quoted UTF-8 names)."""
    q = r'"[^"\\\n]*(?:"|(?:\\[^\n][^"\\\n]*)+")'
    pair = "(?:%s|%s)=%s" % (PROM_LABEL_PATTERN, q, q)
    pairs = "(?:%s(?:,%s)*)?" % (pair, pair)
    qpairs = "(?:%s,)*%s(?:,%s)*" % (pair, q, pair)
    name = "(?:%s|%s)" % (PROM_NAME_PATTERN, q)
    comment = (r"\# (?:HELP (?P<hname>%s) (?P<help>[^\n]*)|TYPE (?P<tname>%s) (?P<type>%s)"
               r"|UNIT (?P<uname>%s) (?P<unit>[a-zA-Z0-9_:]*))"
               ) % (name, name, _EXPFMT_OM_TYPES, name)
    exemplar = r"(?: \# \{(?P<exl>%s)\} %s(?: %s)?)?" % (pairs, _EXPFMT_FLOAT, _EXPFMT_REAL)
    sample = (r"(?:(?P<name>%s)(?:\{(?P<lab>%s)\})?|\{(?P<qlab>%s)\}) (?P<val>%s)(?: (?P<ts>%s))?%s"
              ) % (PROM_NAME_PATTERN, pairs, qpairs, _EXPFMT_FLOAT, _EXPFMT_REAL, exemplar)
    return comment, sample, r"\{(?:%s|%s)\}" % (pairs, qpairs)


def _expfmt_compile(om: bool) -> Tuple[Pattern[str], ...]:
    """Compile one format: comment line, sample line, label set, and the bad-line finder."""
    comment, sample, labelset = _expfmt_om_grammar() if om else _expfmt_text_grammar()
    line = r"(?:(?=[ \t]*\#)%s|%s%s)" % (comment, sample, "" if om else r"|[ \t]*")
    # Searched over "\n" + lines: the LF before the first line the grammar rejects. Each line is
    # tried in a lookahead of its own, so a failure never backtracks into the lines before it
    # (as the old `(?:line\n)*` did, exponentially), and no state is kept per line.
    bad = re.sub(r"\(\?P<\w+>", "(?:", r"\n(?!%s\n|\Z)" % line)
    return re.compile(comment), re.compile(sample), re.compile(labelset), re.compile(bad)


# Each is a pair indexed by `om` (False: Prometheus text, True: OpenMetrics).
_EXPFMT_COMMENT_RE, _EXPFMT_SAMPLE_RE, _EXPFMT_LABELSET_RE, _EXPFMT_BAD_LINE_RE = zip(
    _expfmt_compile(False), _expfmt_compile(True))
_EXPFMT_FLOAT_RE = re.compile(_EXPFMT_FLOAT)
_EXPFMT_REAL_RE = re.compile(_EXPFMT_REAL)
_EXPFMT_TS_RE = (re.compile("[-+]?[0-9]+"), _EXPFMT_REAL_RE)  # by `om`
_EXPFMT_ITEM_RE = re.compile(r'(?:(%s)|"([^"\\]*(?:\\.[^"\\]*)*)")[ \t]*'
                             r'(?:=[ \t]*"([^"\\]*(?:\\.[^"\\]*)*)")?' % PROM_LABEL_PATTERN)
_EXPFMT_ROUGH_RE = re.compile(r'[ \t]*([^ \t{]*)[ \t]*(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\}|\{.*)?'
                              r'[ \t]*([^ \t]*)[ \t]*([^ \t]*)')

# Suffixes each type owns. In OpenMetrics only _EXPFMT_BARE_OK types also use the bare name.
_EXPFMT_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info")
_EXPFMT_OWNED = {"counter": ("_total", "_created"), "gauge": (), "unknown": (), "stateset": (),
                 "info": ("_info",), "summary": ("_count", "_sum", "_created"),
                 "histogram": ("_bucket", "_count", "_sum", "_created"),
                 "gaugehistogram": ("_bucket", "_gcount", "_gsum")}
_EXPFMT_BARE_OK = ("gauge", "unknown", "stateset", "summary")
_EXPFMT_TYPE_ALIASES = {"untyped": "unknown", "gauge_histogram": "gaugehistogram"}
# OpenMetrics: the samples that are counts (never negative or NaN); the only ones with exemplars.
_EXPFMT_COUNTS = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                  "gaugehistogram": ("_bucket", "_gcount"), "summary": ("_count", "_sum")}
_EXPFMT_EXEMPLAR_OK = {"counter": ("_total",), "histogram": ("_bucket",),
                       "gaugehistogram": ("_bucket",)}


class ExpositionError(ValueError):
    """A malformed exposition body; `lineno` is the 1-based line of the first problem found."""

    def __init__(self, lineno: int, message: str) -> None:
        super().__init__("line %d: %s" % (lineno, message))
        self.lineno = lineno


class ExpositionTooBig(ExpositionError):
    """A body past a limit of what is read (a line, or the series kept): not malformed, refused."""


# ---- rules that need a decoded line or the lines before it --------------------------------------

def _expfmt_labels(body: Optional[str], lineno: int) -> Tuple[Optional[str], Dict[str, str]]:
    """Decode a label set the grammar accepted; also returns the quoted metric name in it."""
    name, labels = None, {}  # type: Optional[str], Dict[str, str]
    for item in _EXPFMT_ITEM_RE.finditer(body or ""):
        bare, quoted, value = item.groups()
        key = bare if bare is not None else prom_unescape(quoted)
        if value is None:
            name = key
        elif key in labels or key == "__name__":
            raise ExpositionError(lineno, "label name %r is %s"
                                  % (key, "repeated" if key in labels else "reserved"))
        else:
            labels[key] = prom_unescape(value)
    return name, labels


def _expfmt_text_problem(ftype: str, suffix: str, labels: Dict[str, str],
                         value: float) -> Optional[str]:
    """prometheus/common's per-sample rules for histograms and summaries."""
    le, quantile = labels.get("le"), labels.get("quantile")
    if ftype in ("histogram", "gaugehistogram") and suffix in ("_bucket", "_count"):
        if suffix == "_bucket" and le is not None and not _EXPFMT_FLOAT_RE.fullmatch(le):
            return "expected a number as 'le' label, got %r" % le
        if value < 0:
            return "negative %s in a histogram: %r" % (suffix[1:], value)
    if ftype == "summary" and not suffix and quantile is not None and (
            not _EXPFMT_FLOAT_RE.fullmatch(quantile)):
        return "expected a number as 'quantile' label, got %r" % quantile
    return None


def _expfmt_om_problem(family: str, ftype: str, suffix: str, labels: Dict[str, str],
                       value: float, exemplar: Optional[Dict[str, str]]) -> Optional[str]:
    """OpenMetrics rules that one sample can break on its own."""
    le, quantile = labels.get("le"), labels.get("quantile")
    if not suffix and ftype not in _EXPFMT_BARE_OK:
        return "a sample of %s family %r needs one of the suffixes %s" % (
            ftype, family, ", ".join(_EXPFMT_OWNED[ftype]))
    if (suffix in _EXPFMT_COUNTS.get(ftype, ()) and not value >= 0) or (
            suffix == "_gsum" and value != value):
        return "value %r is not allowed for %s of a %s" % (value, suffix, ftype)
    if suffix == "_bucket" and (le is None or not (le == "+Inf" or _EXPFMT_REAL_RE.fullmatch(le))):
        return "a bucket needs an 'le' label holding a number or +Inf, got %r" % le
    if ftype == "summary" and not suffix and (
            quantile is None or not _EXPFMT_REAL_RE.fullmatch(quantile)
            or not 0 <= float(quantile) <= 1 or value < 0):
        return "a quantile needs a 'quantile' label from 0 to 1 and a value >= 0, got %r, %r" % (
            quantile, value)
    if ftype == "info" and value != 1:
        return "an info sample must have the value 1, got %r" % value
    if ftype == "stateset" and (family not in labels or value not in (0, 1)):
        return "a stateset sample needs the label %r and the value 0 or 1" % family
    if exemplar is not None and suffix not in _EXPFMT_EXEMPLAR_OK.get(ftype, ()):
        return "exemplars are only allowed on counter _total and histogram _bucket samples"
    size = sum(len(k) + len(v) for k, v in (exemplar or {}).items())
    if size > _EXPFMT_MAX_EXEMPLAR_CHARS:
        return "exemplar labels hold %d characters, more than %d" % (
            size, _EXPFMT_MAX_EXEMPLAR_CHARS)
    return None


def _expfmt_timestamp(token: Optional[str], om: bool, lineno: int) -> Optional[float]:
    if token is None:
        return None
    if om:
        return float(token)
    if len(token.lstrip("+-")) > _EXPFMT_MAX_TS_DIGITS or not -2 ** 63 <= int(token) < 2 ** 63:
        raise ExpositionError(lineno, "timestamp %r is outside the int64 millisecond range" % token)
    return int(token) / 1000.0


class _ExpfmtFamilies:
    """What a body declared so far, and the rules that span lines; fed its lines in order."""

    def __init__(self, om: bool, strict: Optional[FrozenSet[str]] = None) -> None:
        self.om = om
        self.strict = strict  # families whose every line is read (None: all)
        self.types: Dict[str, str] = {}
        self.declared: Set[Tuple[str, str]] = set()
        self.sampled: Set[str] = set()
        self.prev = ("", 0)  # family and line of the last sample read
        self.series: Dict[_ExpfmtSeriesKey, Optional[float]] = {}

    def family(self, name: str) -> Tuple[str, str, str]:
        """(family, type, suffix) of a sample name, given the TYPE lines seen so far."""
        if name in self.types:
            return name, self.types[name], ""
        for suffix in _EXPFMT_SUFFIXES:
            base = name[:-len(suffix)]
            if name.endswith(suffix) and suffix in _EXPFMT_OWNED.get(self.types.get(base, ""), ()):
                return base, self.types[base], suffix
        return name, "unknown", ""

    def metadata(self, lineno: int, kind: str, name: str, arg: str) -> None:
        problem = None
        if (kind, name) in self.declared:
            problem = "second %s line for metric family %r" % (kind, name)
        elif name in self.sampled and (self.om or kind == "TYPE"):
            problem = "%s line for metric family %r after its samples" % (kind, name)
        elif kind == "TYPE":
            ftype = _EXPFMT_TYPE_ALIASES.get(arg.lower(), arg.lower())
            owner, _, suffix = self.family(name)
            clash = [name + s for s in _EXPFMT_OWNED[ftype] if name + s in self.types]
            if self.om and (clash or suffix):  # OpenMetrics: a sample name has one family
                problem = "TYPE of %r clashes with metric family %r" % (name, (clash or [owner])[0])
            self.types[name] = ftype
        elif kind == "UNIT" and arg and not name.endswith("_" + arg):
            problem = "UNIT %r is not the suffix of metric family %r" % (arg, name)
        elif kind == "UNIT" and arg and self.types.get(name) in ("info", "stateset"):
            problem = "%s metric family %r cannot have a UNIT" % (self.types[name], name)
        if problem:
            raise ExpositionError(lineno, problem)
        self.declared.add((kind, name))

    def sample(self, lineno: int, m: Match[str],
               names: Optional[FrozenSet[str]]) -> Optional[ExpositionSample]:
        """Check a sample line the grammar accepted; None if its name is not in `names`."""
        name = m.group("name")
        quoted, labels = _expfmt_labels(m.group("qlab" if name is None else "lab"), lineno)
        name = quoted if name is None else name
        if not name:
            raise ExpositionError(lineno, "empty metric name")
        if names is not None and name not in names:
            return None
        value, stamp = float(m.group("val")), _expfmt_timestamp(m.group("ts"), self.om, lineno)
        family, ftype, suffix = self.family(name)
        if self.om:
            exemplar = m.group("exl")
            problem = _expfmt_om_problem(family, ftype, suffix, labels, value, None if exemplar
                                         is None else _expfmt_labels(exemplar, lineno)[1])
        else:
            problem = _expfmt_text_problem(ftype, suffix, labels, value)
        if problem:
            raise ExpositionError(lineno, "%s: %s" % (name, problem))
        if self.om:
            self._check_order(lineno, family, (name, tuple(sorted(labels.items()))), stamp)
        self.sampled.add(family)
        self.prev = (family, lineno)
        return name, labels, value, stamp

    def _check_order(self, lineno: int, family: str, series: _ExpfmtSeriesKey,
                     stamp: Optional[float]) -> None:
        """OpenMetrics: a family's samples form one block; a series' timestamps never go back."""
        if family in self.sampled and self.prev != (family, lineno - 1) and (
                self.strict is None or family in self.strict):
            raise ExpositionError(lineno, "samples of metric family %r are not in one block"
                                  % family)
        if self.strict is not None and series not in self.series and (
                len(self.series) >= EXPFMT_MAX_TRACKED_SERIES):
            raise ExpositionTooBig(lineno, "the selected metric families hold more than %d series"
                                   % EXPFMT_MAX_TRACKED_SERIES)
        before = self.series.get(series, stamp)
        if series in self.series and (before is None) != (stamp is None):
            raise ExpositionError(lineno, "series %s mixes samples with and without timestamp"
                                  % series[0])
        if stamp is not None and before is not None and stamp < before:
            raise ExpositionError(lineno, "timestamp of series %s goes backwards" % series[0])
        self.series[series] = stamp


# ---- lines and bodies ---------------------------------------------------------------------------

def _expfmt_explain(line: str, om: bool) -> str:
    """Say what is wrong with a line the grammar rejected."""
    if om and line == "# EOF":
        return "'# EOF' must be the last line"
    if line.lstrip(" \t").startswith("#"):
        return "malformed comment %s: expected %s" % (prom_excerpt(line), (
            "'# HELP name text', '# TYPE name type' or '# any comment'",
            "'# HELP name text', '# TYPE name type' or '# UNIT name unit', single spaces")[om])
    rough = _EXPFMT_ROUGH_RE.match(line)
    assert rough is not None  # every part of the rough pattern may be empty
    name, labels, value, stamp = rough.groups()
    if name and not PROM_NAME_RE.fullmatch(name):
        return "invalid metric name %s" % prom_excerpt(name)
    if labels is not None and not _EXPFMT_LABELSET_RE[om].fullmatch(labels):
        return "malformed label set %s: expected label=\"value\" pairs%s" % (
            prom_excerpt(labels), "" if om else " (escapes only \\\\, \\\" and \\n)")
    if not _EXPFMT_FLOAT_RE.fullmatch(value):
        return "expected a number as sample value, got %s" % prom_excerpt(value)
    if stamp and stamp != "#" and not _EXPFMT_TS_RE[om].fullmatch(stamp):
        return "expected a timestamp in %s, got %s" % (
            "seconds" if om else "integer ms", prom_excerpt(stamp))
    return "malformed sample line %s: expected 'name{label=\"value\",...} value [timestamp]'%s" % (
        prom_excerpt(line), " with single spaces, then maybe ' # {labels} value'" if om else "")


def _expfmt_line(state: _ExpfmtFamilies, line: str, lineno: int,
                 names: Optional[FrozenSet[str]] = None,
                 meta: Optional[FrozenSet[str]] = None) -> Optional[ExpositionSample]:
    """Read one line (no LF); return it as a sample if its name is in `names` (None: any)."""
    om = state.om
    first = line.lstrip(" \t")[:1] if line[:1] in (" ", "\t") and not om else line[:1]
    if first == "#":
        m = _EXPFMT_COMMENT_RE[om].fullmatch(line)
        if m is None:
            raise ExpositionError(lineno, _expfmt_explain(line, om))
        groups = m.groupdict()
        for kind, key in (("HELP", "h"), ("TYPE", "t"), ("UNIT", "u")):
            name, arg = groups.get(key + "name"), groups.get(kind.lower())
            # the text format ignores a HELP without text, OpenMetrics does not
            if name is not None and arg is not None and (arg or om or kind != "HELP"):
                name = prom_unescape(name[1:-1]) if name[0] == '"' else name
                if meta is None or name in meta:
                    state.metadata(lineno, kind, name, arg)
        return None
    if not first:
        if om:
            raise ExpositionError(lineno, "blank line (not allowed in OpenMetrics)")
        return None
    m = _EXPFMT_SAMPLE_RE[om].fullmatch(line)
    if m is None:
        raise ExpositionError(lineno, _expfmt_explain(line, om))
    return state.sample(lineno, m, names)


