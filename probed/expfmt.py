"""Prometheus text and OpenMetrics bodies: series selection (whole or streamed) and full parses.

Sans-I/O: bytes in, samples out; no sockets, files, clocks or logging here. Bad input raises only
ExpositionError (a ValueError starting "line N: "); a bad selector or aggregation, ValueError.
The grammar and the rules of one line live in exprules.py. OpenMetrics is assumed when the last
line is `# EOF` (or the caller says so); CRLF is accepted; timestamps come out in seconds.

Validation: every line's syntax is checked, so a broken line anywhere (lost line break, open
quote, cut-off body, HTML) rejects the body. Rules that need a decoded or an earlier line (label
names, le/quantile, value ranges, exemplars, HELP/TYPE/UNIT, OpenMetrics order) cover every line
in parse_samples but only the selected families (`x_bucket` -> `x` and all its names) in
selection: a rule broken elsewhere cannot change a selected value, and selection never rejects
what parse_samples accepts. Agreement between the samples of one histogram is never checked: a
probe reads series, not distributions.

`SeriesSelector` takes a body in pieces as it arrives (the scrape path): it keeps only the
partial last line and the selected series, both capped, so a 16 MiB body costs kilobytes. Fed a
whole body, `select_series` reports the first problem exactly as `parse_samples` does; streamed,
framing problems (no final LF, no `# EOF`) are found at the end, after any bad line.
"""

import functools
import re
from typing import Dict, FrozenSet, Iterator, List, Optional, Pattern, Sequence, Set, Tuple

from .exprules import (_EXPFMT_BAD_LINE_RE, _EXPFMT_SUFFIXES, ExpositionError, ExpositionSample,
                       ExpositionTooBig, _expfmt_line, _ExpfmtFamilies)
from .promselector import (AGGREGATIONS, Selector, aggregate, parse_selector,  # re-exported
                           prom_excerpt)

EXPFMT_MAX_LINE_BYTES = 64 << 10  # a streamed line longer than this is refused (bounds the
# partial line held between pieces)
EXPFMT_MAX_SERIES = 1000  # distinct series one selector keeps; past it the body is refused
EXPFMT_MAX_KEPT_CHARS = 1 << 20  # characters of kept sample lines, all selectors together
_EXPFMT_PLAN_CACHE = 64  # selector name sets whose line finder stays compiled

SelectedSeries = List[Tuple[Dict[str, str], float]]


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
            raise _expfmt_no_final_lf(text.count("\n") + 1, text[cut:])
        return text[:cut], False
    if has_eof:
        return end[:-5], True
    early = ("\n" + text).find("\n# EOF\n")
    if early >= 0:
        raise ExpositionError(text.count("\n", 0, early) + 2, "text after '# EOF'")
    raise _expfmt_no_eof(end.count("\n") + 1)


def _expfmt_no_final_lf(lineno: int, tail: str) -> ExpositionError:
    return ExpositionError(lineno, "last line has no line feed (body cut short?): %s"
                           % prom_excerpt(tail))


def _expfmt_no_eof(lineno: int) -> ExpositionError:
    return ExpositionError(lineno, "missing '# EOF' at the end of the OpenMetrics body (cut "
                           "short?)")


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


class _ExpfmtReader:
    """One format's reading of a body: the state of its rules, its first problem, its `# EOF`."""

    __slots__ = ("om", "state", "error", "eof")

    def __init__(self, om: bool, families: FrozenSet[str]) -> None:
        self.om = om
        self.state = _ExpfmtFamilies(om, families)
        self.error: Optional[ExpositionError] = None
        self.eof = 0  # line number of the `# EOF` line once seen (OpenMetrics)

    def fail(self, error: ExpositionError) -> None:
        """Keep the first problem; after `# EOF` any further line is the problem."""
        if self.error is None:
            self.error = ExpositionError(self.eof + 1, "text after '# EOF'") if self.eof else error


class SeriesSelector:
    """Select series from an exposition body fed in pieces, holding only the partial last line and
    what it keeps: `feed()` each piece as it arrives, then `close()` for the series.

    Without `openmetrics` the format is known only at the end (`# EOF` last), so both grammars
    read the body until one fails. Limits: EXPFMT_MAX_LINE_BYTES per line, EXPFMT_MAX_SERIES per
    selector and EXPFMT_MAX_KEPT_CHARS in all; past one the body is refused (ExpositionTooBig).
    """

    def __init__(self, selectors: Sequence[Selector], openmetrics: Optional[bool] = None) -> None:
        self.selectors = [s if isinstance(s, Selector) else parse_selector(s) for s in selectors]
        families: FrozenSet[str] = frozenset()
        self._finder: Optional[Pattern[str]] = None
        self._wanted = self._meta = families
        if self.selectors:
            self._finder, self._wanted, self._meta, families = _expfmt_plan(
                frozenset(s.name for s in self.selectors))
        formats = (False, True) if openmetrics is None else (openmetrics,)
        self._readers = [_ExpfmtReader(om, families) for om in formats]
        self._found: List[Dict[Tuple[Tuple[str, str], ...], Tuple[Dict[str, str], float]]] = [
            {} for _ in self.selectors]
        self._kept = 0  # characters of the kept sample lines
        self._pending = bytearray()  # the partial last line
        self._lines = 0  # complete lines read
        self._offset = 0  # bytes of complete lines read
        self._last_eof = False  # the last complete line was `# EOF`

    @property
    def settled(self) -> bool:
        """True once the body is refused whatever follows: no need to feed the rest."""
        return all(r.error is not None for r in self._readers)

    def feed(self, data: bytes) -> bool:
        """Read the complete lines of the next piece; False once `settled`."""
        view = memoryview(data)
        for start in range(0, len(view), EXPFMT_MAX_LINE_BYTES):
            if self.settled:
                break
            held = len(self._pending)
            self._pending += view[start:start + EXPFMT_MAX_LINE_BYTES]
            # Only the line held from earlier pieces can pass the cap (no piece is longer).
            end = self._pending.find(b"\n", held)
            if (end if end >= 0 else len(self._pending)) > EXPFMT_MAX_LINE_BYTES:
                self._fail_all(ExpositionTooBig(self._lines + 1, "line longer than %d bytes"
                                                % EXPFMT_MAX_LINE_BYTES))
                break
            cut = self._pending.rfind(b"\n") + 1
            if cut:
                block = bytes(self._pending[:cut])
                del self._pending[:cut]
                self._read_block(block)
        return not self.settled

    def close(self) -> List[SelectedSeries]:
        """The end of the body: each selector's (labels, value) series, in the order they first
        appeared; ExpositionError for a malformed body (or ExpositionTooBig)."""
        tail = bytes(self._pending)
        has_eof = tail == b"# EOF" or (not tail and self._last_eof)
        reader = self._readers[-1 if has_eof else 0]  # (text, OpenMetrics) when undecided
        if reader.om and (tail and reader.eof or not has_eof):
            reader.fail(_expfmt_no_eof(self._lines + (1 if tail else 0) or 1))
        elif not reader.om and tail.strip(b" \t"):
            try:
                line = tail.decode("utf-8")
            except UnicodeDecodeError as exc:
                reader.fail(ExpositionError(self._lines + 1, "invalid UTF-8 at byte %d"
                                            % (self._offset + exc.start)))
            else:
                reader.fail(_expfmt_no_final_lf(self._lines + 1, line))
        return self._result(reader)

    def _result(self, reader: _ExpfmtReader) -> List[SelectedSeries]:
        if reader.error is not None:
            raise reader.error
        return [list(found.values()) for found in self._found]

    def _fail_all(self, error: ExpositionError) -> None:
        for reader in self._readers:
            reader.fail(error)

    def _read_block(self, block: bytes) -> None:
        """Complete lines as bytes: decoded, and invalid UTF-8 reported after the lines before."""
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as exc:
            good = block.rfind(b"\n", 0, exc.start) + 1
            self._read_block(block[:good])
            self._fail_all(ExpositionError(self._lines + 1, "invalid UTF-8 at byte %d"
                                           % (self._offset + exc.start - good)))
            return
        self._offset += len(block)
        text = text.replace("\r\n", "\n") if "\r" in text else text
        self._last_eof = text.endswith("\n# EOF\n") or text == "# EOF\n"
        self.read_text(text)

    def read_text(self, text: str) -> None:
        """Read decoded complete lines (each ending in LF, no CR before it)."""
        first, padded = self._lines, "\n" + text
        self._lines += text.count("\n")
        stops = []  # per reader: where its first line the grammar rejects starts
        for reader in self._readers:
            if reader.eof and text:  # (fail() says "text after '# EOF'")
                reader.fail(ExpositionError(reader.eof + 1, ""))
            bad = None if reader.error else _EXPFMT_BAD_LINE_RE[reader.om].search(padded)
            stops.append(-1 if reader.error else bad.start() if bad else len(padded))
        if self._finder is not None and max(stops) > 0:
            self._read_candidates(self._finder, padded, first, stops)
        for reader, stop in zip(self._readers, stops):
            if reader.error is None and stop < len(padded):
                lineno = first + padded.count("\n", 0, stop + 1)
                end = padded.find("\n", stop + 1)
                self._reject(reader, padded[stop + 1:end], lineno, end + 1 < len(padded))

    def _read_candidates(self, finder: Pattern[str], padded: str, first: int,
                         stops: List[int]) -> None:
        """The lines the finder picks (selected families, metadata, indented lines), each read
        by every format still reading at that line; kept when one of them returns a sample."""
        lineno, counted = first, 0
        for m in finder.finditer(padded, 0, max(stops)):
            lineno += padded.count("\n", counted, m.start() + 1)
            counted = m.start() + 1
            line, sample = m.group(1), None
            for reader, stop in zip(self._readers, stops):
                if reader.error is not None or m.start() >= stop:
                    continue
                try:
                    sample = _expfmt_line(reader.state, line, lineno, self._wanted,
                                          self._meta) or sample
                except ExpositionError as exc:
                    reader.fail(exc)
            if sample is not None:
                self._keep(sample, lineno, len(line))
            if self.settled:
                return

    def _reject(self, reader: _ExpfmtReader, line: str, lineno: int, more: bool) -> None:
        """The first line the grammar rejected: `# EOF` ends OpenMetrics, anything else fails."""
        if reader.om and line == "# EOF":
            reader.eof = lineno
            if more:
                reader.fail(ExpositionError(lineno + 1, "text after '# EOF'"))
            return
        try:  # says what is wrong; the no-op names make it check syntax only
            _expfmt_line(reader.state, line, lineno, frozenset(), frozenset())
        except ExpositionError as exc:
            reader.fail(exc)
        else:  # the line and body grammars disagree: a bug, but still no silent pass
            reader.fail(ExpositionError(lineno, "malformed line %s" % prom_excerpt(line)))

    def _keep(self, sample: ExpositionSample, lineno: int, size: int) -> None:
        name, labels, value, _ = sample
        for i, sel in enumerate(self.selectors):
            if sel.name != name or not sel.matches(labels):
                continue
            key, found = tuple(sorted(labels.items())), self._found[i]
            if key not in found:
                self._kept += size
                if len(found) >= EXPFMT_MAX_SERIES:
                    return self._fail_all(ExpositionTooBig(lineno, "%s matches more than %d "
                                                           "series; narrow it with labels"
                                                           % (sel, EXPFMT_MAX_SERIES)))
                if self._kept > EXPFMT_MAX_KEPT_CHARS:
                    return self._fail_all(ExpositionTooBig(
                        lineno, "the selected series hold more than %d characters"
                        % EXPFMT_MAX_KEPT_CHARS))
            found[key] = (dict(labels), value)


# ---- whole bodies ---------------------------------------------------------------------------

def parse_samples(body: bytes, openmetrics: Optional[bool] = None) -> Iterator[ExpositionSample]:
    """Every sample as (name, labels, value, timestamp in seconds or None), in body order.

    The whole body is checked first; a malformed one raises ExpositionError at its first bad line.
    """
    text, om = _expfmt_prepare(body, openmetrics)
    state = _ExpfmtFamilies(om)
    samples = (_expfmt_line(state, line, n) for n, line in enumerate(text.split("\n")[:-1], 1))
    return iter([sample for sample in samples if sample is not None])


def select_series(body: bytes, selectors: Sequence[Selector], openmetrics: Optional[bool] = None
                  ) -> List[SelectedSeries]:
    """For each selector, the (labels, value) of every series whose name and labels match.

    A repeated series counts once, with its last value, where it first appeared. Selectors may
    be text. Raises ExpositionError on a malformed body (see the module docstring).
    """
    text, om = _expfmt_prepare(body, openmetrics)
    selector = SeriesSelector(selectors, om)
    selector.read_text(text)
    return selector._result(selector._readers[0])
