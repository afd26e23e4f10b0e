"""One `/metrics` scrape shared by every check that reads the same URL.

A vLLM preset reads queue depth, KV cache, sleep state, progress and the process start time
from one endpoint; scraping a 50 KB body once per poll round instead of once per check keeps
probed's load on the server flat. Callers in the same round share one in-flight request; a
body younger than `max_age` is served from memory.
"""

import asyncio
import time
from typing import Any, Dict, Mapping, Optional, Tuple

from .client import FetchError, Response, TLSOptions, fetch

SCRAPE_MAX_BODY = 16 << 20  # a busy multi-engine vLLM body is a few hundred KB


class MetricsSource:
    """The latest scrape of one URL: body, when it was taken, or why it failed."""

    def __init__(self, url: str, headers: Optional[Mapping[str, str]] = None,
                 tls: Optional[TLSOptions] = None) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.tls = tls
        self.response: Optional[Response] = None
        self.error: Optional[FetchError] = None
        self.taken_at = float("-inf")
        self._inflight: Optional["asyncio.Future[None]"] = None

    async def scrape(self, timeout: float, max_age: float,
                     headers: Optional[Mapping[str, str]] = None) -> Response:
        """A response no older than `max_age`; raises FetchError when the scrape failed.
        `headers` (with a freshly read token) go with the request this call starts."""
        if time.monotonic() - self.taken_at > max_age:
            if self._inflight is None or self._inflight.done():
                self._inflight = asyncio.ensure_future(self._fetch(timeout, headers))
            await asyncio.shield(self._inflight)
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response

    def forget(self) -> None:
        """The backend restarted: a body taken before now speaks of the old process."""
        self.response, self.error, self.taken_at = None, None, float("-inf")

    async def _fetch(self, timeout: float, headers: Optional[Mapping[str, str]]) -> None:
        started = time.monotonic()
        try:
            self.response = await fetch(self.url, headers=headers or self.headers,
                                        timeout=timeout, max_body=SCRAPE_MAX_BODY, tls=self.tls)
            self.error = None
        except FetchError as exc:
            self.response, self.error = None, exc
        self.taken_at = started  # a body is as old as the request that asked for it


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


def is_openmetrics(response: Response) -> Optional[bool]:
    """True for an OpenMetrics Content-Type; otherwise None, so the parser looks for `# EOF`
    (servers label OpenMetrics bodies text/plain often enough that the header cannot decide)."""
    return True if "openmetrics" in response.headers.get("content-type", "") else None


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
