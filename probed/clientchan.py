"""One client connection's bytes: a non-blocking socket, TLS over memory BIOs when asked, a read
buffer, and reads paced so that a fast peer never holds the event loop.

A read that finds its data already buffered (or a socket that always has data) never suspends,
so the caller's deadline could not fire: every socket read yields to the loop, and so does every
CLIENT_READS_PER_YIELD-th read served from the buffer. A search for a line end resumes where the
last one stopped, so a line arriving a byte at a time costs linear time.
Must never: keep a buffer after close() (a failed call's exception may outlive it).
"""

import asyncio
import socket
from typing import Any, Callable, Dict, Optional, Pattern

from .clientproto import FetchError

CLIENT_RECV_BYTES = 64 * 1024  # one read from the socket
CLIENT_READS_PER_YIELD = 32  # reads served from the buffer between two yields to the loop
CLIENT_SINK_SLICE_BYTES = 16 * 1024  # body bytes a sink takes between two yields to the loop


class BodySink:
    """Takes a response body piece by piece instead of the client holding it (fetch's `sink`).

    The default keeps nothing; subclasses override. Both methods run on the loop, between reads.
    """

    def start(self, status: int, headers: Dict[str, str]) -> bool:
        """The final response head arrived; False: the body is not wanted (it is not read)."""
        return True

    def feed(self, data: bytes) -> bool:
        """The next piece of the body (at most CLIENT_SINK_SLICE_BYTES); False: enough, stop."""
        return True


class ClientChannel:
    """One connected non-blocking socket (optionally TLS over memory BIOs) plus a read buffer."""

    __slots__ = ("_loop", "_sock", "_tls", "_tls_in", "_tls_out", "_tcp_eof", "buf", "_reads")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._tls = self._tls_in = self._tls_out = None  # type: Any
        self._tcp_eof = False
        self.buf = bytearray()
        self._reads = 0  # buffered reads since the last yield

    def close(self) -> None:
        """Close the socket and drop the buffer."""
        self._sock.close()
        self.buf = bytearray()

    async def _tls_call(self, what: str, op: Callable[..., Any], *args: Any) -> Any:
        """Run one SSLObject call, moving TLS records between the memory BIOs and the socket."""
        import ssl
        while True:
            try:
                result = op(*args)
            except ssl.SSLWantReadError:
                if self._tcp_eof:
                    raise FetchError("closed", "connection closed in the TLS %s" % what) from None
                await self._tls_flush()
                data = await self._loop.sock_recv(self._sock, CLIENT_RECV_BYTES)
                self._tcp_eof = not data
                if data:
                    self._tls_in.write(data)
                else:
                    self._tls_in.write_eof()
                continue
            except ssl.SSLError as exc:
                if self._tcp_eof and what == "read":  # EOF without close_notify: just the end
                    return b""
                detail = getattr(exc, "verify_message", None) or exc.reason or exc
                raise FetchError("tls", "TLS %s failed: %s" % (what, detail)) from None
            await self._tls_flush()
            return result

    async def _tls_flush(self) -> None:
        data = self._tls_out.read()
        if data:
            await self._loop.sock_sendall(self._sock, data)

    async def start_tls(self, context: Any, server_hostname: str) -> None:
        """The TLS handshake over the connected socket."""
        import ssl
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._tls_in, self._tls_out, server_hostname=server_hostname)
        await self._tls_call("handshake", self._tls.do_handshake)

    async def send(self, data: bytes) -> None:
        """Send all of `data`."""
        if self._tls is None:
            await self._loop.sock_sendall(self._sock, data)
            return
        view = memoryview(data)
        while view:
            view = view[await self._tls_call("write", self._tls.write, view):]

    async def _fill(self) -> bool:
        """Append one read to the buffer, then yield to the loop; False at end of stream."""
        if self._tls is None:
            data = await self._loop.sock_recv(self._sock, CLIENT_RECV_BYTES)
        else:
            data = await self._tls_call("read", self._tls.read, CLIENT_RECV_BYTES)
        self.buf += data
        await asyncio.sleep(0)  # sock_recv returns without suspending when data is waiting
        return bool(data)

    async def _pace(self) -> None:
        """Count a read served from the buffer; yield to the loop every CLIENT_READS_PER_YIELD."""
        self._reads += 1
        if self._reads >= CLIENT_READS_PER_YIELD:
            self._reads = 0
            await asyncio.sleep(0)

    async def read_until(self, end: "Pattern[bytes]", limit: int, what: str) -> bytes:
        """Bytes before the next match of `end` (consumed too); FetchError past `limit` or EOF.
        `end` must match at most 4 bytes, so a search resumes 3 bytes before the last one's end."""
        await self._pace()
        scanned = 0
        while True:
            match = end.search(self.buf, max(0, scanned - 3))
            if match and match.start() <= limit:
                data = bytes(self.buf[:match.start()])
                del self.buf[:match.end()]
                return data
            if len(self.buf) > limit:
                raise FetchError("protocol", "%s over %d bytes" % (what, limit))
            scanned = len(self.buf)
            if not await self._fill():
                where = "in the middle of" if self.buf else "before"
                raise FetchError("closed", "connection closed %s the %s" % (where, what))

    async def read_exact(self, size: int) -> bytes:
        """Exactly `size` bytes; FetchError("closed") when the stream ends first."""
        await self._pace()
        while len(self.buf) < size:
            if not await self._fill():
                raise FetchError("closed", "connection closed after %d of %d body bytes"
                                 % (len(self.buf), size))
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def read_to_eof(self, max_body: int) -> bytes:
        """Everything up to the end of the stream; FetchError("too-large") past `max_body`."""
        while len(self.buf) <= max_body:
            if not await self._fill():
                return bytes(self.buf)
        self.buf = bytearray()
        raise FetchError("too-large", "body over %d bytes" % max_body)

    async def pipe(self, sink: BodySink, size: Optional[int], max_body: int) -> bool:
        """Hand `size` bytes (None: all up to the end of the stream, at most `max_body`) to the
        sink in slices, yielding between them; False when the sink wanted no more."""
        left = max_body + 1 if size is None else size  # to EOF: one byte past the cap is too many
        while left:
            if not self.buf and not await self._fill():
                if size is None:
                    return True
                raise FetchError("closed", "connection closed with %d body bytes missing" % left)
            n = min(len(self.buf), left, CLIENT_SINK_SLICE_BYTES)
            if size is None and n == left:
                self.buf = bytearray()
                raise FetchError("too-large", "body over %d bytes" % max_body)
            piece = bytes(self.buf[:n])
            del self.buf[:n]
            left -= n
            if not sink.feed(piece):
                return False
            await asyncio.sleep(0)  # the sink worked on one slice: let the loop run
        return True
