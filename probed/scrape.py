"""One `/metrics` scrape shared by every check that reads the same URL, selected as it arrives.

A vLLM preset reads queue depth, KV cache, sleep state, progress and the process start time
from one endpoint. Each check registers as a reader of its source with the selectors it reads;
one scrape selects the union, streaming the body through a `SeriesSelector` (it is never held
whole: a 16 MiB body costs what the selector keeps), and a reading younger than
SCRAPE_REUSE_SHARE of the fastest reader's pace serves every reader. A reader's pace is its
interval, or how often it really asks when that is faster (the engine's start pace until
ready), and a reader that went quiet (a dormant check) stops setting it. So the checks of one
source cost one scrape per that pace, whatever their count and jitter. A reader may ask for a
reading taken after it asked (max_age=0: the drain's in-flight count).
"""

import asyncio
import time
from typing import (Any, Callable, Dict, FrozenSet, Hashable, List, Mapping, Optional, Sequence,
                    Tuple)

from .blocking import Resolver
from .client import BodySink, FetchError, TLSOptions, fetch
from .expfmt import ExpositionError, ExpositionTooBig, Selector, SelectedSeries, SeriesSelector

SCRAPE_MAX_BODY = 16 << 20  # a busy multi-engine vLLM body is a few hundred KB
SCRAPE_REUSE_SHARE = 0.9  # of the fastest reader's pace: a reading younger than that is reused
SCRAPE_FAST_PACE = 0.8  # a reader asking faster than this share of its interval (the engine's
# start pace) sets the pace by its asks; slower, its interval does (asks jitter +-10% around it)
SCRAPE_HEAD_BYTES = 16  # body bytes kept to tell an empty or `null` body


def is_openmetrics(headers: Mapping[str, str]) -> Optional[bool]:
    """How a Content-Type says to parse: True for OpenMetrics; False for `text/plain` with a
    version (the text format, as Prometheus decides); otherwise None, so the parser looks for
    a final `# EOF` (some servers label OpenMetrics bodies a bare text/plain)."""
    ctype = headers.get("content-type", "").lower()
    if "openmetrics" in ctype:
        return True
    media, _, params = ctype.partition(";")
    return False if media.strip() == "text/plain" and "version=" in params else None


class MetricsReading:
    """What one scrape said: each registered selector's series (by its text), or why not."""

    __slots__ = ("taken_at", "keys", "error", "refused", "status", "location", "empty", "series",
                 "headers")

    def __init__(self, taken_at: float, keys: FrozenSet[str]) -> None:
        self.taken_at = taken_at  # monotonic seconds when its request started
        self.keys = keys  # the selectors it selected
        self.error = ""  # no usable answer: the fetch failed or the body is malformed
        self.refused = False  # the connection was refused
        self.status = 0
        self.location = ""  # a redirect's Location
        self.empty = False  # the body was empty or `null`
        self.series: Dict[str, SelectedSeries] = {}
        self.headers: Dict[str, str] = {}  # the reply's (llama-server names its process there)


class _MetricsSink(BodySink):
    """Streams a 2xx body through a SeriesSelector; remembers the body's first bytes."""

    def __init__(self, selectors: Sequence[Selector]) -> None:
        self.selectors = selectors
        self.status = 0
        self.location = ""
        self.headers: Dict[str, str] = {}
        self.selector: Optional[SeriesSelector] = None
        self.head = b""
        self.blank_after_head = True

    def start(self, status: int, headers: Dict[str, str]) -> bool:
        self.status, self.location, self.headers = status, headers.get("location", ""), headers
        if not 200 <= status < 300 or status == 204:
            return False
        self.selector = SeriesSelector(self.selectors, is_openmetrics(headers))
        return True

    def feed(self, data: bytes) -> bool:
        room = SCRAPE_HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]
        self.blank_after_head = self.blank_after_head and not data[max(room, 0):].strip()
        assert self.selector is not None
        return self.selector.feed(data)

    def finish(self, reading: MetricsReading, keys: Sequence[str]) -> None:
        """Fill in what the body said; `keys` name the selectors, in order."""
        reading.status, reading.location, reading.headers = self.status, self.location, self.headers
        if self.selector is None:
            return
        if self.blank_after_head and self.head.strip() in (b"", b"null"):
            reading.empty = True  # the LLM Healthchecker treats these as healthy
            reading.series = {k: [] for k in keys}
            return
        try:
            reading.series = dict(zip(keys, self.selector.close()))
        except ExpositionTooBig as exc:
            reading.error = "metrics too big to read: %s" % exc
        except ExpositionError as exc:
            reading.error = "malformed metrics: %s" % exc


class _MetricsReader:
    """A check that reads a source: its selectors, and the pace at which it asks."""

    __slots__ = ("keys", "interval", "pace", "asked")

    def __init__(self, keys: FrozenSet[str], interval: float) -> None:
        self.keys = keys
        self.interval = interval
        self.pace = interval  # its interval, or the gap between its last two asks if faster
        self.asked = float("-inf")

    def note(self, now: float) -> None:
        """It asks now."""
        gap = now - self.asked
        self.pace = gap if gap < SCRAPE_FAST_PACE * self.interval else self.interval
        self.asked = now


class MetricsSource:
    """The latest reading of one URL and the readers it is taken for."""

    def __init__(self, url: str, headers: Optional[Mapping[str, str]] = None,
                 tls: Optional[TLSOptions] = None) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.tls = tls
        self.selectors: Dict[str, Selector] = {}  # the union, by text
        self.readers: Dict[Hashable, _MetricsReader] = {}
        self.reading: Optional[MetricsReading] = None
        self.forgotten_at = float("-inf")
        self._inflight: Optional["asyncio.Future[None]"] = None

    def add_reader(self, reader: Hashable, selectors: Sequence[Selector], interval: float) -> None:
        """Register `reader` (a check; again: more selectors) reading `selectors` about every
        `interval` seconds."""
        keys = frozenset(str(s) for s in selectors)
        for key, sel in zip(map(str, selectors), selectors):
            self.selectors.setdefault(key, sel)
        known = self.readers.get(reader)
        if known is None:
            self.readers[reader] = _MetricsReader(keys, interval)
        else:
            known.keys |= keys

    def forget(self) -> None:
        """The backend restarted: a reading whose request began before now (even one still in
        flight) speaks of the old process, and no reader gets it."""
        self.reading, self.forgotten_at = None, time.monotonic()

    def reuse_window(self, now: float) -> float:
        """How old a reading may be: SCRAPE_REUSE_SHARE of the fastest reader's pace. A reader
        silent for longer than its pace (a dormant check) no longer sets the pace."""
        paces = [max(r.pace, now - r.asked) for r in self.readers.values()]
        return SCRAPE_REUSE_SHARE * min(paces) if paces else 0.0

    async def read(self, reader: Hashable, timeout: float,
                   headers: Callable[[], Mapping[str, str]], max_age: Optional[float] = None,
                   resolver: Optional[Resolver] = None) -> MetricsReading:
        """A reading with `reader`'s selectors whose request started at most `max_age` seconds
        ago: by default the reuse window, and the ask counts toward the pace; a reader that
        asks with its own `max_age` (0: started after this call) never sets the pace.
        `headers()` (a fresh token) is called only when a scrape starts."""
        now = time.monotonic()
        wanted = self.readers[reader].keys
        if max_age is None:
            self.readers[reader].note(now)
            max_age = self.reuse_window(now)
        oldest = max(now - max_age, self.forgotten_at)
        while True:  # at most twice: one in flight that is too old or lacks selectors, then ours
            reading = self.reading
            if reading is not None and reading.taken_at >= oldest and wanted <= reading.keys:
                return reading
            if self._inflight is None or self._inflight.done():
                self._inflight = asyncio.ensure_future(self._scrape(
                    frozenset(self.selectors), timeout, headers() or self.headers, resolver))
            await asyncio.shield(self._inflight)

    async def _scrape(self, keys: FrozenSet[str], timeout: float, headers: Mapping[str, str],
                      resolver: Optional[Resolver]) -> None:
        ordered = sorted(keys)
        sink = _MetricsSink([self.selectors[k] for k in ordered])
        reading = MetricsReading(time.monotonic(), keys)  # the data is at least this old
        try:
            await fetch(self.url, headers=headers, timeout=timeout, max_body=SCRAPE_MAX_BODY,
                        tls=self.tls, sink=sink, resolver=resolver)
        except FetchError as exc:
            reading.error, reading.refused = str(exc), exc.kind == "refused"
        else:
            sink.finish(reading, ordered)
        self.reading = reading


SourceKey = Tuple[Any, ...]  # everything that changes the request: URL, headers, token, TLS


class ScrapeHub:
    """The daemon's shared scrapes: one `MetricsSource` per distinct request, so checks of one
    backend share a scrape while checks that authenticate or verify TLS differently never do."""

    def __init__(self) -> None:
        self.sources: Dict[SourceKey, MetricsSource] = {}

    def source(self, url: str, key: SourceKey, headers: Optional[Mapping[str, str]] = None,
               tls: Optional[TLSOptions] = None) -> MetricsSource:
        """The source for `url` requested as `key` says (see HTTPRequestSettings.identity)."""
        full = (url,) + tuple(key)
        source = self.sources.get(full)
        if source is None:
            source = self.sources[full] = MetricsSource(url, headers, tls)
        return source

    def forget(self) -> None:
        """The backend restarted: no check may read a body of the old process."""
        for source in self.sources.values():
            source.forget()


class ProgressBoard:
    """When the work counter behind each metrics URL last rose: progress checks write it, the
    inference check reads it (`idle-only`: no synthetic request while real tokens flow)."""

    def __init__(self) -> None:
        self.rose_at: Dict[str, float] = {}

    def note(self, url: str, when: float) -> None:
        """The counter behind `url` rose at `when` (monotonic seconds)."""
        self.rose_at[url] = when

    def last(self, url: str) -> float:
        """When the counter behind `url` last rose, or -inf when never seen."""
        return self.rose_at.get(url, float("-inf"))


def selected(reading: MetricsReading, selectors: Sequence[Selector]) -> List[SelectedSeries]:
    """Each selector's series in a reading that covers them."""
    return [reading.series[str(s)] for s in selectors]
