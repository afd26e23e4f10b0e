"""Blocking calls kept off the event loop, on threads the daemon owns: DNS lookups and heartbeat
file scans, each kind with its own small cap.

asyncio's default executor is one shared pool with a queue: a resolver that never answers filled
it with lookups, heartbeat scans queued behind them, and /livez failed. Here each kind has its own
`BlockingRunner`; a call past the cap fails at once instead of queueing, and each call runs on a
daemon thread of its own, so a call that never returns holds one slot (never a queue behind it)
and never holds up the process's exit. The daemon makes one runner per kind (CheckResources).
"""

import asyncio
import socket
import threading
from typing import Any, Callable, List, Optional, TypeVar

from .clientproto import FetchError

BLOCKING_DNS_LOOKUPS = 4  # DNS lookups in flight at once; past it a fetch fails with kind "dns"
BLOCKING_SCANS = 4  # heartbeat directory scans in flight at once (each check runs one at a time)

_BlockingResult = TypeVar("_BlockingResult")


class BlockingBusy(Exception):
    """Every slot of a BlockingRunner is taken by a call still running."""


class BlockingRunner:
    """Runs blocking calls on daemon threads, at most `limit` at once; no queue."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.running = 0  # changed on the loop's thread only

    async def run(self, fn: Callable[..., _BlockingResult], *args: Any) -> _BlockingResult:
        """`fn(*args)` on a thread of its own; BlockingBusy when `limit` calls are running.
        Cancelling the wait leaves the call running: it holds its slot until it returns."""
        if self.running >= self.limit:
            raise BlockingBusy("%d %s calls are still running (the limit)"
                               % (self.limit, self.name))
        loop = asyncio.get_running_loop()
        future = loop.create_future()  # type: asyncio.Future[Any]

        def settle(result: Any, error: Optional[BaseException]) -> None:
            self.running -= 1
            if future.done():
                return  # the caller gave up waiting
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def work() -> None:
            try:
                result, error = fn(*args), None  # type: Any, Optional[BaseException]
            except BaseException as exc:  # handed to the waiter, never lost in the thread
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:
                pass  # the loop closed while the call ran

        self.running += 1
        try:
            threading.Thread(target=work, name="probed-" + self.name, daemon=True).start()
        except BaseException:
            self.running -= 1
            raise
        return await future


class Resolver:
    """getaddrinfo for the HTTP client on its own runner (BLOCKING_DNS_LOOKUPS at once)."""

    def __init__(self, limit: int = BLOCKING_DNS_LOOKUPS) -> None:
        self.runner = BlockingRunner("dns", limit)

    async def resolve(self, host: str, port: int) -> List[Any]:
        """Addresses for a TCP connection; FetchError("dns") when every lookup slot is taken
        (lookups hang when DNS does not answer), socket.gaierror when the name does not resolve."""
        try:
            name = host.encode("ascii") if host.isascii() else host  # no idna codec (0.3 MB)
            return await self.runner.run(socket.getaddrinfo, name, port, 0, socket.SOCK_STREAM)
        except BlockingBusy:
            raise FetchError("dns", "cannot resolve host %r: %d lookups are already waiting for "
                             "the resolver (is DNS answering?)" % (host, self.runner.limit)
                             ) from None
