"""Prometheus text (0.0.4) and OpenMetrics exposition parsing: series selection and aggregation.

Sans-I/O: bytes in, samples out; no sockets, files, clocks or logging here. Bad input raises only
ExpositionError (a ValueError starting "line N: "); a bad selector or aggregation, ValueError.

The text format follows prometheus/common (blanks around tokens, trailing commas, integer-ms
timestamps, escapes \\\\ \\" \\n only, quoted UTF-8 names); OpenMetrics is strict (single spaces,
`# EOF` last, exemplars, timestamps in seconds) and is assumed when the last line is `# EOF`.
CRLF is accepted; timestamps come out in seconds.

Validation: one compiled expression checks the syntax of every line first, so a broken line
anywhere (lost line break, open quote, cut-off body, HTML) rejects the body. Rules that need a
decoded or an earlier line (label names, le/quantile, value ranges, exemplars, HELP/TYPE/UNIT,
OpenMetrics order) cover every line in parse_samples but only the selected families (`x_bucket`
-> `x` and all its names) in select_series: a rule broken elsewhere cannot change a selected
value, and select_series never rejects what parse_samples accepts. Agreement between the samples
of one histogram is never checked: a probe reads series, not distributions.
"""

import functools
import re
from typing import Dict, FrozenSet, Iterator, List, Match, Optional, Pattern, Sequence, Set, Tuple

from .promselector import (AGGREGATIONS, PROM_LABEL_PATTERN, PROM_NAME_PATTERN, PROM_NAME_RE,
                           Selector, aggregate, parse_selector, prom_excerpt, prom_unescape)

_EXPFMT_MAX_EXEMPLAR_CHARS = 128  # OpenMetrics: exemplar label names + values, in code points
_EXPFMT_MAX_TS_DIGITS = 19  # text-format timestamps are int64 milliseconds
_EXPFMT_PLAN_CACHE = 64  # selector name sets whose line finder stays compiled

ExpositionSample = Tuple[str, Dict[str, str], float, Optional[float]]
_ExpfmtSeriesKey = Tuple[str, Tuple[Tuple[str, str], ...]]

_EXPFMT_FLOAT = (r"(?:[-+]?(?:[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?"
                 r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)|[nN][aA][nN])")
_EXPFMT_REAL = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
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
    """Compile one format: comment line, sample line, label set, and the whole-body check."""
    comment, sample, labelset = _expfmt_om_grammar() if om else _expfmt_text_grammar()
    line = r"(?:(?=[ \t]*\#)%s|%s%s)" % (comment, sample, "" if om else r"|[ \t]*")
    body = re.sub(r"\(\?P<\w+>", "(?:", r"(?:%s\n)*" % line)
    return re.compile(comment), re.compile(sample), re.compile(labelset), re.compile(body)


# Each is a pair indexed by `om` (False: Prometheus text, True: OpenMetrics).
_EXPFMT_COMMENT_RE, _EXPFMT_SAMPLE_RE, _EXPFMT_LABELSET_RE, _EXPFMT_BODY_RE = zip(
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


def _expfmt_prepare(body: bytes, openmetrics: Optional[bool]) -> Tuple[str, bool]:
    """Decode and frame a body: its complete lines (each ending in LF), and if it is OpenMetrics."""
    try:
        text = body if isinstance(body, str) else bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExpositionError(bytes(body).count(b"\n", 0, exc.start) + 1,
                              "invalid UTF-8 at byte %d" % exc.start) from None
    if "\r" in text:  # a scan for one character is cheaper than a replace that finds nothing
        text = text.replace("\r\n", "\n")
    end = text[:-1] if text.endswith("\n") else text
    has_eof = end == "# EOF" or end.endswith("\n# EOF")
    if not (has_eof if openmetrics is None else openmetrics):
        cut = text.rfind("\n") + 1
        if text[cut:].strip(" \t"):
            raise ExpositionError(text.count("\n") + 1, "last line has no line feed (body cut "
                                  "short?): %s" % prom_excerpt(text[cut:]))
        return text[:cut], False
    if has_eof:
        return end[:-5], True
    early = ("\n" + text).find("\n# EOF\n")
    if early >= 0:
        raise ExpositionError(text.count("\n", 0, early) + 2, "text after '# EOF'")
    raise ExpositionError(end.count("\n") + 1, "missing '# EOF' at the end of the OpenMetrics "
                          "body (cut short?)")


@functools.lru_cache(maxsize=_EXPFMT_PLAN_CACHE)
def _expfmt_plan(names: FrozenSet[str]) -> Tuple[Pattern[str], FrozenSet[str], FrozenSet[str],
                                                 FrozenSet[str]]:
    """The line finder for selected names, and the sample names, metadata names and families it
    reads: every name of each family a selected name may belong to."""
    def bases(name: str) -> Set[str]:  # the names themselves and `x` for `x_bucket` etc.
        return {name} | {name[:-len(s)] for s in _EXPFMT_SUFFIXES if name.endswith(s) and name != s}
    families = set().union(*map(bases, names))
    wanted = {f + s for f in families for s in ("",) + _EXPFMT_SUFFIXES}
    meta = set().union(*map(bases, wanted))

    def alt(words: Set[str]) -> str:
        return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    finder = re.compile(r'\n((?:[ \t{]|\#[ \t]*(?:HELP|TYPE|UNIT)[ \t]+(?:"|(?:%s)(?![\w:]))'
                        r"|(?:%s)(?:%s)?(?=[ \t{]))[^\n]*)"
                        % (alt(meta), alt(families), alt(set(_EXPFMT_SUFFIXES))), re.ASCII)
    return finder, frozenset(wanted), frozenset(meta), frozenset(families)


# ---- public API ---------------------------------------------------------------------------------

def parse_samples(body: bytes, openmetrics: Optional[bool] = None) -> Iterator[ExpositionSample]:
    """Every sample as (name, labels, value, timestamp in seconds or None), in body order.

    The whole body is checked first; a malformed one raises ExpositionError at its first bad line.
    """
    text, om = _expfmt_prepare(body, openmetrics)
    state = _ExpfmtFamilies(om)
    samples = (_expfmt_line(state, line, n) for n, line in enumerate(text.split("\n")[:-1], 1))
    return iter([sample for sample in samples if sample is not None])


def select_series(body: bytes, selectors: Sequence[Selector], openmetrics: Optional[bool] = None
                  ) -> List[List[Tuple[Dict[str, str], float]]]:
    """For each selector, the (labels, value) of every series whose name and labels match.

    A repeated series counts once, with its last value, where it first appeared. Selectors may
    be text. Raises ExpositionError on a malformed body (see the module docstring).
    """
    sels = [s if isinstance(s, Selector) else parse_selector(s) for s in selectors]
    text, om = _expfmt_prepare(body, openmetrics)
    if _EXPFMT_BODY_RE[om].fullmatch(text) is None:
        list(parse_samples(body, openmetrics))  # raises at the first bad line
        raise ExpositionError(1, "malformed exposition body")
    if not sels:
        return []
    finder, wanted, meta, families = _expfmt_plan(frozenset(s.name for s in sels))
    state = _ExpfmtFamilies(om, families)
    found: List[Dict[tuple, Tuple[Dict[str, str], float]]] = [{} for _ in sels]
    padded, lineno, counted = "\n" + text, 0, 0
    for m in finder.finditer(padded):
        lineno += padded.count("\n", counted, m.start() + 1)
        counted = m.start() + 1
        sample = _expfmt_line(state, m.group(1), lineno, wanted, meta)
        if sample is None:
            continue
        for i, sel in enumerate(sels):
            if sel.name == sample[0] and sel.matches(sample[1]):
                found[i][tuple(sorted(sample[1].items()))] = (dict(sample[1]), sample[2])
    return [list(f.values()) for f in found]

