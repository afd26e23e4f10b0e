"""Async HTTP/1.1 client for the background pollers: one request, one connection, one deadline.

One deadline bounds the whole call (DNS to last body byte), so a backend that accepts and never
answers, or drips a byte a second, fails at it; urllib's per-socket timeouts bound neither. The
deadline is real against a fast backend too: the client yields to the loop after every socket
read and every CLIENT_READS_PER_YIELD buffered reads (a read that finds its data buffered never
suspends), and caps interim replies and blank lines, so endless `100 Continue`s or 1-byte chunks
cannot hold the loop. A body can go to a `BodySink` piece by piece instead of into memory.
Raw non-blocking sockets, TLS through `ssl.MemoryBIO`: closing is a synchronous socket.close()
on every path, so no transport is left for the GC to warn about.
Must never: import ssl at module import, reuse a connection, put request headers or bodies
(bearer tokens) into an error message or a repr, or leave a failed call's buffers reachable from
its exception.
"""

import asyncio
import errno
import json
import os
import re
import socket
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

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
from .clientchan import BodySink, ClientChannel
from .files import read_small_file

CLIENT_MAX_HEAD_BYTES = 64 * 1024  # the header fields of one response (and chunked trailers)
CLIENT_MAX_TOKEN_BYTES = 64 * 1024  # a bearer-token file bigger than this is a wrong path
CLIENT_MAX_INTERIM = 16  # 1xx replies (100 Continue, 103 Early Hints) before the final one
CLIENT_MAX_BLANK_LINES = 16  # empty lines before a status line (RFC 9112 2.2 tolerates some)

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


async def _client_read_fields(chan: ClientChannel, what: str) -> Dict[str, str]:
    block = await chan.read_until(_CLIENT_FIELDS_END, CLIENT_MAX_HEAD_BYTES, what)
    return _client_parse_fields(block) if block else {}


async def _client_read_head(chan: ClientChannel) -> Tuple[int, str, Dict[str, str]]:
    """The final response head; a non-HTTP peer (an SSH banner) fails at its first line."""
    blank = interim = 0
    while True:
        line = await chan.read_until(_CLIENT_LINE_END, CLIENT_MAX_LINE_BYTES, "status line")
        if not line:  # RFC 9112 2.2: empty lines before a status line are ignored, a few
            blank += 1
            if blank > CLIENT_MAX_BLANK_LINES:
                raise FetchError("protocol", "over %d empty lines before the status line"
                                 % CLIENT_MAX_BLANK_LINES)
            continue
        status, reason = _client_parse_status_line(line)
        headers = await _client_read_fields(chan, "response header block")
        if status == 101:
            raise FetchError("protocol", "unexpected 101 Switching Protocols")
        if status >= 200:  # 100 Continue, 103 Early Hints: interim, a final one follows
            return status, reason, headers
        interim += 1
        if interim > CLIENT_MAX_INTERIM:
            raise FetchError("protocol", "over %d interim (1xx) responses" % CLIENT_MAX_INTERIM)


async def _client_read_chunked(chan: ClientChannel, max_body: int,
                               sink: Optional[BodySink]) -> bytes:
    """A chunked body (into `sink` when given); trailers are checked for syntax and size, then
    dropped."""
    body, total = bytearray(), 0
    while True:
        line = await chan.read_until(_CLIENT_LINE_END, CLIENT_MAX_LINE_BYTES,
                                     "chunk size line")
        match = _CLIENT_CHUNK_SIZE.match(line)
        if not match:
            raise FetchError("protocol", "bad chunk size line %r" % line[:32].decode("latin-1"))
        size = int(match.group(1), 16)
        if size == 0:
            break
        total += size
        if total > max_body:
            raise FetchError("too-large", "body over %d bytes" % max_body)
        if sink is None:
            body += await chan.read_exact(size)
        elif not await chan.pipe(sink, size, max_body):
            return b""
        if await chan.read_until(_CLIENT_LINE_END, CLIENT_MAX_LINE_BYTES, "chunk"):
            raise FetchError("protocol", "chunk data longer than its size line says")
    await _client_read_fields(chan, "trailer block")
    return bytes(body)


async def _client_read_body(chan: ClientChannel, method: str, status: int,
                            headers: Dict[str, str], max_body: int,
                            sink: Optional[BodySink]) -> bytes:
    """The response body, framed as RFC 9112 section 6.3 says (b"" when it went to `sink`)."""
    wanted = sink is None or sink.start(status, headers)  # a sink hears of every response
    if method == "HEAD" or status in (204, 304) or not wanted:
        return b""
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if [c.strip().lower() for c in coding.split(",") if c.strip()] != ["chunked"]:
            raise FetchError("protocol", "unsupported transfer-encoding %r" % coding[:40])
        return await _client_read_chunked(chan, max_body, sink)
    length = headers.get("content-length")
    size = None  # type: Optional[int]
    if length is not None:
        values = {v.strip() for v in length.split(",")}
        if len(values) != 1 or not _CLIENT_CONTENT_LENGTH.match(next(iter(values))):
            raise FetchError("protocol", "bad content-length %r" % length[:40])
        size = int(values.pop())
        if size > max_body:
            raise FetchError("too-large", "body over %d bytes (content-length %d)"
                             % (max_body, size))
    if sink is not None:
        await chan.pipe(sink, size, max_body)
        return b""
    return await (chan.read_to_eof(max_body) if size is None else chan.read_exact(size))


def host_bytes(host: str) -> Any:
    """An ASCII host as bytes for getaddrinfo, which otherwise encodes every str host with the
    idna codec (importing it, and unicodedata, costs about 0.3 MB for nothing)."""
    return host.encode("ascii") if host.isascii() else host


async def _client_resolve(loop: asyncio.AbstractEventLoop, host: str, port: int,
                          resolver: Optional[Resolver]) -> List[Any]:
    """getaddrinfo results; IP literals never touch a resolver thread."""
    try:
        return socket.getaddrinfo(host_bytes(host), port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        pass
    try:
        if resolver is not None:
            infos = await resolver.resolve(host, port)
        else:  # callers outside the daemon: asyncio's default executor
            infos = await loop.getaddrinfo(host_bytes(host), port, type=socket.SOCK_STREAM)
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


class _ClientCall:
    """One request's settings between fetch() and the exchange, and what it is doing now."""

    __slots__ = ("host", "port", "request", "method", "context", "max_body", "sink", "resolver",
                 "phase")

    def __init__(self, host: str, port: int, request: bytes, method: str, context: Any,
                 max_body: int, sink: Optional[BodySink], resolver: Optional[Resolver]) -> None:
        self.host, self.port, self.request, self.method = host, port, request, method
        self.context, self.max_body, self.sink, self.resolver = context, max_body, sink, resolver
        self.phase = "starting"  # for the timeout message


async def _client_exchange(call: _ClientCall) -> Tuple[int, str, Dict[str, str], bytes]:
    """One request on one new connection."""
    loop = asyncio.get_running_loop()
    call.phase = "resolving %s" % call.host
    infos = await _client_resolve(loop, call.host, call.port, call.resolver)
    chan = None
    try:
        call.phase = "connecting"
        chan = ClientChannel(loop, await _client_connect(loop, infos))
        if call.context is not None:
            call.phase = "in the TLS handshake"
            await chan.start_tls(call.context, call.host)
        call.phase = "sending the request"
        await chan.send(call.request)
        call.phase = "waiting for the response headers"
        status, reason, headers = await _client_read_head(chan)
        call.phase = "reading the body"
        body = await _client_read_body(chan, call.method, status, headers, call.max_body,
                                       call.sink)
        return status, reason, headers, body
    except OSError as exc:
        raise _client_os_error(exc, call.phase) from None
    finally:
        if chan is not None:
            chan.close()


def _client_drop_frames(exc: BaseException) -> None:
    """Clear the finished frames an exception's traceback holds. Through them it reaches the
    exchange's buffers, and through asyncio's wait_for frame (its inner task holds the exception)
    it forms a cycle that only a full GC frees: 16 MiB per failed over-cap scrape."""
    tb = exc.__traceback__
    while tb is not None:
        try:
            tb.tb_frame.clear()
        except RuntimeError:  # a frame still running (fetch's own) cannot be cleared
            pass
        tb = tb.tb_next
    exc.__traceback__ = None


async def fetch(url: str, *, method: str = "GET", headers: Optional[Mapping[str, str]] = None,
                body: Optional[bytes] = None, timeout: float = 1.0, max_body: int = 1 << 20,
                tls: Optional[TLSOptions] = None, sink: Optional[BodySink] = None,
                resolver: Optional[Resolver] = None) -> Response:
    """Make one HTTP/1.1 request on a new connection and return the whole response.

    `timeout` bounds everything (DNS to the last body byte). Any status is a Response; no
    response at all (or a body over `max_body`) is a FetchError. `headers` may replace Host,
    User-Agent and Accept, never Connection or Content-Length. With `sink` the body goes to it
    piece by piece and the Response's body is empty. `resolver` looks up host names on threads
    of its own (the daemon's); without one, asyncio's default executor does. ValueError for a
    bad URL, method, header or timeout.
    """
    scheme, host, port, target = split_url(url)
    if not timeout > 0:
        raise ValueError("timeout must be > 0 seconds, got %r" % timeout)
    method = method.upper()
    request = _client_build_request(method, scheme, host, port, target, headers, body)
    context = (tls or _CLIENT_DEFAULT_TLS).context() if scheme == "https" else None
    call = _ClientCall(host, port, request, method, context, max_body, sink, resolver)
    started = time.monotonic()
    try:
        status, reason, fields, data = await asyncio.wait_for(_client_exchange(call), timeout)
    except asyncio.TimeoutError as exc:
        _client_drop_frames(exc)
        raise FetchError("timeout", "timed out after %gs while %s" % (timeout, call.phase)
                         ) from None
    except FetchError as exc:
        _client_drop_frames(exc)
        raise exc  # (not a bare raise: 3.8 would restore the old traceback)
    return Response(status, reason, fields, data, time.monotonic() - started)
