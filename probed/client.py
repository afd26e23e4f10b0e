"""Async HTTP/1.1 client for the background pollers: one request, one connection, one deadline.

One deadline bounds the whole call (DNS to last body byte), so a backend that accepts and never
answers, or drips a byte a second, fails at it; urllib's per-socket timeouts bound neither.
Raw non-blocking sockets, TLS through `ssl.MemoryBIO`: closing is a synchronous socket.close()
on every path, so no transport is left for the GC to warn about.
Must never: import ssl at module import, reuse a connection, put request headers or bodies
(bearer tokens) into an error message or a repr.
"""

import asyncio
import errno
import json
import os
import re
import socket
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import import_ssl
from .blocking import Resolver
from .clientproto import (  # CLIENT_USER_AGENT is re-exported for callers
    _CLIENT_LINE_END,
    CLIENT_MAX_LINE_BYTES,
    CLIENT_USER_AGENT,
    FetchError,
    _client_build_request,
    _client_parse_fields,
    _client_parse_status_line,
    split_url,
)
from .files import read_small_file

CLIENT_MAX_HEAD_BYTES = 64 * 1024  # the header fields of one response (and chunked trailers)
CLIENT_RECV_BYTES = 64 * 1024  # one read from the socket
CLIENT_MAX_TOKEN_BYTES = 64 * 1024  # a bearer-token file bigger than this is a wrong path

_CLIENT_FIELDS_END = re.compile(rb"\A\r?\n|\r?\n\r?\n")  # no fields, or the blank line
_CLIENT_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;.*)?\Z")
_CLIENT_CONTENT_LENGTH = re.compile(r"[0-9]+\Z")


class Response:
    """A complete HTTP response; header names are lower-case, repeated ones joined by ", "."""

    __slots__ = ("status", "reason", "headers", "body", "elapsed")

    def __init__(self, status: int, reason: str, headers: Dict[str, str], body: bytes,
                 elapsed: float) -> None:
        self.status, self.reason, self.headers, self.body = status, reason, headers, body
        self.elapsed = elapsed

    def json(self) -> Any:
        """The body parsed as JSON; ValueError when it is not JSON."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        return "<Response %d %s, %d bytes, %.3fs>" % (
            self.status, self.reason, len(self.body), self.elapsed)


class TLSOptions:
    """How https is verified: system CAs (default), `ca_file`, or not at all (`insecure`)."""

    __slots__ = ("ca_file", "insecure", "_context")

    def __init__(self, ca_file: Optional[str] = None, insecure: bool = False) -> None:
        self.ca_file = ca_file
        self.insecure = insecure
        self._context = None  # type: Any

    def context(self) -> Any:
        """The `ssl.SSLContext`, built (and ssl imported) on first use; FetchError("tls")."""
        if self._context is not None:
            return self._context
        try:
            ssl = import_ssl()
        except ImportError:
            raise FetchError("tls", "https needs the ssl module; this Python has none") from None
        if self.insecure:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            try:
                context = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ValueError) as exc:
                raise FetchError("tls", "cannot load CA file %r: %s" % (
                    self.ca_file, getattr(exc, "strerror", None) or exc)) from None
        self._context = context
        return context


_CLIENT_DEFAULT_TLS = TLSOptions()


def read_bearer_token(token_file: Optional[str], env_names: Sequence[str] = ()) -> Optional[str]:
    """The bearer token: the stripped file content, else the first non-empty env var, else None.

    The file is read on every call so a rotated Kubernetes Secret is picked up. An unreadable
    file raises OSError (files.FileRefusedError for a FIFO, a device or a file over
    CLIENT_MAX_TOKEN_BYTES), so a broken mount is reported instead of polling without
    credentials.
    """
    if token_file:
        data = read_small_file(token_file, CLIENT_MAX_TOKEN_BYTES, "token file")
        try:
            token = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ValueError("token file %r is not UTF-8 text" % token_file) from None
        if token:
            return token
    for name in env_names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class _ClientChannel:
    """One connected non-blocking socket (optionally TLS over memory BIOs) plus a read buffer."""

    __slots__ = ("_loop", "_sock", "_tls", "_tls_in", "_tls_out", "_tcp_eof", "buf")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._tls = self._tls_in = self._tls_out = None  # type: Any
        self._tcp_eof = False
        self.buf = bytearray()

    def close(self) -> None:
        self._sock.close()

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
        import ssl
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._tls_in, self._tls_out, server_hostname=server_hostname)
        await self._tls_call("handshake", self._tls.do_handshake)

    async def send(self, data: bytes) -> None:
        if self._tls is None:
            await self._loop.sock_sendall(self._sock, data)
            return
        view = memoryview(data)
        while view:
            view = view[await self._tls_call("write", self._tls.write, view):]

    async def _fill(self) -> bool:
        """Append one read to the buffer; False at end of stream."""
        if self._tls is None:
            data = await self._loop.sock_recv(self._sock, CLIENT_RECV_BYTES)
        else:
            data = await self._tls_call("read", self._tls.read, CLIENT_RECV_BYTES)
        self.buf += data
        return bool(data)

    async def read_until(self, end: Any, limit: int, what: str) -> bytes:
        """Bytes before the next match of `end` (consumed too); FetchError past `limit` or EOF."""
        while True:
            match = end.search(self.buf)
            if match and match.start() <= limit:
                data = bytes(self.buf[:match.start()])
                del self.buf[:match.end()]
                return data
            if len(self.buf) > limit:
                raise FetchError("protocol", "%s over %d bytes" % (what, limit))
            if not await self._fill():
                where = "in the middle of" if self.buf else "before"
                raise FetchError("closed", "connection closed %s the %s" % (where, what))

    async def read_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            if not await self._fill():
                raise FetchError("closed", "connection closed after %d of %d body bytes"
                                 % (len(self.buf), size))
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def read_to_eof(self, max_body: int) -> bytes:
        while len(self.buf) <= max_body:
            if not await self._fill():
                return bytes(self.buf)
        raise FetchError("too-large", "body over %d bytes" % max_body)


async def _client_read_fields(chan: _ClientChannel, what: str) -> Dict[str, str]:
    block = await chan.read_until(_CLIENT_FIELDS_END, CLIENT_MAX_HEAD_BYTES, what)
    return _client_parse_fields(block) if block else {}


async def _client_read_head(chan: _ClientChannel) -> Tuple[int, str, Dict[str, str]]:
    """The final response head; a non-HTTP peer (an SSH banner) fails at its first line."""
    while True:
        line = await chan.read_until(_CLIENT_LINE_END, CLIENT_MAX_LINE_BYTES, "status line")
        if not line:  # RFC 7230 3.5: empty lines before a status line are ignored
            continue
        status, reason = _client_parse_status_line(line)
        headers = await _client_read_fields(chan, "response header block")
        if status == 101:
            raise FetchError("protocol", "unexpected 101 Switching Protocols")
        if status >= 200:  # 100 Continue, 103 Early Hints: interim, a final one follows
            return status, reason, headers


async def _client_read_chunked(chan: _ClientChannel, max_body: int) -> bytes:
    """A chunked body; trailers are checked for syntax and size, then dropped."""
    body = bytearray()
    while True:
        line = await chan.read_until(_CLIENT_LINE_END, CLIENT_MAX_LINE_BYTES,
                                     "chunk size line")
        match = _CLIENT_CHUNK_SIZE.match(line)
        if not match:
            raise FetchError("protocol", "bad chunk size line %r" % line[:32].decode("latin-1"))
        size = int(match.group(1), 16)
        if size == 0:
            break
        if len(body) + size > max_body:
            raise FetchError("too-large", "body over %d bytes" % max_body)
        body += await chan.read_exact(size)
        if await chan.read_until(_CLIENT_LINE_END, CLIENT_MAX_LINE_BYTES, "chunk"):
            raise FetchError("protocol", "chunk data longer than its size line says")
    await _client_read_fields(chan, "trailer block")
    return bytes(body)


async def _client_read_body(chan: _ClientChannel, method: str, status: int,
                            headers: Dict[str, str], max_body: int) -> bytes:
    """The response body, framed as RFC 7230 section 3.3.3 says."""
    if method == "HEAD" or status in (204, 304):
        return b""
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if [c.strip().lower() for c in coding.split(",") if c.strip()] != ["chunked"]:
            raise FetchError("protocol", "unsupported transfer-encoding %r" % coding[:40])
        return await _client_read_chunked(chan, max_body)
    length = headers.get("content-length")
    if length is None:
        return await chan.read_to_eof(max_body)
    values = {v.strip() for v in length.split(",")}
    if len(values) != 1 or not _CLIENT_CONTENT_LENGTH.match(next(iter(values))):
        raise FetchError("protocol", "bad content-length %r" % length[:40])
    size = int(values.pop())
    if size > max_body:
        raise FetchError("too-large", "body over %d bytes (content-length %d)" % (max_body, size))
    return await chan.read_exact(size)


async def _client_resolve(loop: asyncio.AbstractEventLoop, host: str, port: int,
                          resolver: Optional[Resolver]) -> List[Any]:
    """getaddrinfo results; IP literals never touch a resolver thread."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        pass
    try:
        if resolver is not None:
            infos = await resolver.resolve(host, port)
        else:  # callers outside the daemon: asyncio's default executor
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError("dns", "cannot resolve host %r: %s" % (
            host, getattr(exc, "strerror", None) or exc)) from None
    if not infos:
        raise FetchError("dns", "cannot resolve host %r: no addresses" % host)
    return list(infos)


async def _client_connect(loop: asyncio.AbstractEventLoop, infos: List[Any]) -> socket.socket:
    """A socket connected to the first address that accepts; the last error otherwise."""
    last = OSError(errno.ECONNREFUSED, "no address to connect to")  # type: OSError
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:  # cancelled by the deadline: still release the descriptor
            sock.close()
            raise
    raise last


def _client_os_error(exc: OSError, phase: str) -> FetchError:
    if isinstance(exc, ConnectionRefusedError):
        return FetchError("refused", "connection refused")
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return FetchError("reset", "connection reset by peer while %s" % phase)
    if exc.errno == errno.ETIMEDOUT:
        return FetchError("timeout", "timed out (by the OS) while %s" % phase)
    if phase == "connecting":
        return FetchError("refused", "cannot connect: %s" % (exc.strerror or exc))
    return FetchError("reset", "%s while %s" % (exc.strerror or exc, phase))


async def _client_exchange(host: str, port: int, request: bytes, method: str, context: Any,
                           max_body: int, phase: List[str],
                           resolver: Optional[Resolver]) -> Tuple[int, str, Dict[str, str], bytes]:
    """One request on one new connection; `phase[0]` says what it is doing, for timeouts."""
    loop = asyncio.get_running_loop()
    phase[0] = "resolving %s" % host
    infos = await _client_resolve(loop, host, port, resolver)
    chan = None
    try:
        phase[0] = "connecting"
        chan = _ClientChannel(loop, await _client_connect(loop, infos))
        if context is not None:
            phase[0] = "in the TLS handshake"
            await chan.start_tls(context, host)
        phase[0] = "sending the request"
        await chan.send(request)
        phase[0] = "waiting for the response headers"
        status, reason, headers = await _client_read_head(chan)
        phase[0] = "reading the body"
        body = await _client_read_body(chan, method, status, headers, max_body)
        return status, reason, headers, body
    except OSError as exc:
        raise _client_os_error(exc, phase[0]) from None
    finally:
        if chan is not None:
            chan.close()


async def fetch(url: str, *, method: str = "GET", headers: Optional[Mapping[str, str]] = None,
                body: Optional[bytes] = None, timeout: float = 1.0, max_body: int = 1 << 20,
                tls: Optional[TLSOptions] = None,
                resolver: Optional[Resolver] = None) -> Response:
    """Make one HTTP/1.1 request on a new connection and return the whole response.

    `timeout` bounds everything (DNS to the last body byte). Any status is a Response; no
    response at all (or a body over `max_body`) is a FetchError. `headers` may replace Host,
    User-Agent and Accept, never Connection or Content-Length. `resolver` looks up host names
    on threads of its own (the daemon's); without one, asyncio's default executor does.
    ValueError for a bad URL, method, header or timeout.
    """
    scheme, host, port, target = split_url(url)
    if not timeout > 0:
        raise ValueError("timeout must be > 0 seconds, got %r" % timeout)
    method = method.upper()
    request = _client_build_request(method, scheme, host, port, target, headers, body)
    context = (tls or _CLIENT_DEFAULT_TLS).context() if scheme == "https" else None
    phase = ["starting"]
    started = time.monotonic()
    try:
        status, reason, fields, data = await asyncio.wait_for(
            _client_exchange(host, port, request, method, context, max_body, phase, resolver),
            timeout)
    except asyncio.TimeoutError:
        raise FetchError("timeout", "timed out after %gs while %s" % (timeout, phase[0])) from None
    return Response(status, reason, fields, data, time.monotonic() - started)
