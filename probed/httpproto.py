"""HTTP/1.1 request parsing and response building over bytes: no sockets, no clocks, no asyncio.

The server hands this module its receive buffer and gets back a `Request` (or "need more
bytes", or an `HTTPError` carrying the status to answer with). Responses are built as two byte
strings around the Date header so the server can splice in a per-second cached date without
re-rendering anything. Every limit is a named constant below; h11 is the model.
"""

import re
import time
from typing import Dict, Iterable, List, Optional, Tuple

from .urlcodec import percent_decode, query_pairs

MAX_REQUEST_LINE = 8 * 1024  # longer -> 414
MAX_HEADER_BYTES = 32 * 1024  # header block beyond the request line; longer -> 431
MAX_HEADER_FIELDS = 100  # more -> 431
MAX_BODY = 64 * 1024  # Content-Length beyond the route's cap -> 413
MAX_LEADING_BLANK = 64  # CR/LF bytes tolerated before a request line; more -> 400
# The end of a head is looked for only this far from its start: a longer head is over a limit
# above anyway, and a pipelined buffer is never scanned past the request being parsed.
MAX_HEAD_BYTES = MAX_LEADING_BLANK + MAX_REQUEST_LINE + MAX_HEADER_BYTES + 8
CACHED_REQUESTS = 32  # distinct request heads RequestParser remembers; then it starts afresh
CACHED_HEAD_BYTES = 1024  # longer heads are parsed every time, never remembered

REASONS = {
    200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

# RFC 9110 token (method, header name) and field-value: visible chars, SP and HTAB only.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)\Z")
_ABSOLUTE_FORM = re.compile(rb"https?://[^/?#]*", re.IGNORECASE)
_TARGET_CHARS = re.compile(rb"[\x21-\x7e]+\Z")
_COMMON_METHODS = frozenset((b"GET", b"HEAD", b"POST"))
# Every field line: token ":" field-value, lines ending in LF with an optional CR before it.
_HEADER_BLOCK = re.compile(
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\x20\x09\x21-\x7e\x80-\xff]*\r?\n)*\Z")
_DIGITS = re.compile(r"[0-9]{1,18}\Z")
_LEADING_BLANK = re.compile(rb"[\r\n]{0,%d}" % (MAX_LEADING_BLANK + 1))
_CR_LF = (13, 10)


class HTTPError(Exception):
    """A request we answer with an error status and then close the connection."""

    def __init__(self, status: int, message: str, allow: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


class Request:
    """One parsed request. `path` is percent-decoded; `query` is the raw query string.

    `body_pending`: body bytes not received yet, for a request answered from its head (it
    asked `Expect: 100-continue`); such a request is never keep-alive, since the server closes
    rather than read a body nobody wants."""

    __slots__ = ("method", "target", "path", "query", "version", "headers", "keep_alive", "body",
                 "body_pending")

    def __init__(self, method: str, target: str, path: str, query: str, version: str,
                 headers: Dict[str, str], keep_alive: bool, body: bytes,
                 body_pending: int = 0) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body
        self.body_pending = body_pending

    def query_pairs(self) -> List[Tuple[str, str]]:
        """Decoded `key=value` pairs in order; a bare key has the value ''."""
        if not self.query:
            return []
        try:
            return query_pairs(self.query)
        except UnicodeDecodeError:
            raise HTTPError(400, "query is not valid UTF-8 after percent-decoding") from None


def _find_head_end(buf: bytes, start: int) -> Tuple[int, int]:
    """Return (end of header block, index after the blank line), or (-1, -1).

    Both searches stop at MAX_HEAD_BYTES from `start` (and the bare-LF one at the CRLF end):
    the work is bounded by one head, whatever follows it in a pipelined buffer."""
    limit = start + MAX_HEAD_BYTES
    crlf = buf.find(b"\n\r\n", start, limit)
    lf = buf.find(b"\n\n", start, crlf + 1 if crlf >= 0 else limit)
    if lf >= 0:
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 3
    return -1, -1


def _skip_blank_lines(buf: bytes, start: int) -> int:
    """Index of the first byte after the CR/LF bytes at `start` (RFC 9112 section 2.2)."""
    end = _LEADING_BLANK.match(buf, start).end()  # type: ignore[union-attr]
    if end - start > MAX_LEADING_BLANK:
        raise HTTPError(400, "more than %d bytes of empty lines before the request" %
                        MAX_LEADING_BLANK)
    return end


def _check_incomplete(buf: bytes, start: int) -> None:
    """Raise the right limit error for a head that is not complete yet but already too big."""
    line_end = buf.find(b"\n", start, start + MAX_REQUEST_LINE + 2)
    if line_end < 0:
        if len(buf) - start > MAX_REQUEST_LINE + 1:
            raise HTTPError(414, "request line longer than %d bytes" % MAX_REQUEST_LINE)
    elif len(buf) - line_end - 1 > MAX_HEADER_BYTES + 2:
        raise HTTPError(431, "header block larger than %d bytes" % MAX_HEADER_BYTES)


def parse_request(buf: bytes, max_body: int = MAX_BODY,
                  start: int = 0) -> Tuple[Optional[Request], int]:
    """Parse one request from `buf`, beginning at offset `start`.

    Returns (request, offset just past it), or (None, start) when more bytes are needed.
    Raises HTTPError for anything malformed or over a limit. Pipelined requests: call again
    from the returned offset; the work per call is bounded by one request, not by `buf`.
    A request that carries `Expect: 100-continue` and whose body has not arrived is returned
    from its head alone, with `body_pending` set (see Request).
    """
    n, begin = len(buf), start
    if start < n and buf[start] in _CR_LF:
        start = _skip_blank_lines(buf, start)
    head_end, body_start = _find_head_end(buf, start)
    if head_end < 0:
        _check_incomplete(buf, start)
        return None, begin
    lines = buf[start:head_end].split(b"\n")
    request_line = lines[0].rstrip(b"\r")
    if len(request_line) > MAX_REQUEST_LINE:
        raise HTTPError(414, "request line longer than %d bytes" % MAX_REQUEST_LINE)
    if head_end - start - len(lines[0]) > MAX_HEADER_BYTES:
        raise HTTPError(431, "header block larger than %d bytes" % MAX_HEADER_BYTES)
    if len(lines) - 1 > MAX_HEADER_FIELDS:
        raise HTTPError(431, "more than %d header fields" % MAX_HEADER_FIELDS)
    method, target, version = _parse_request_line(request_line)
    headers = _parse_headers(lines)
    keep_alive = _keep_alive(version, headers.get("connection", ""))
    length = _body_length(headers, max_body)
    path, query = _split_target(target)
    if n < body_start + length:
        if not _expects_continue(version, headers):
            return None, begin
        # The client waits for a go-ahead before it sends the body: answer from the head
        # (no route here reads a body) and close, since the body is never read.
        return (Request(method, target.decode("ascii"), path, query, version, headers, False,
                        b"", length - (n - body_start)), n)
    body = bytes(buf[body_start:body_start + length])
    return (Request(method, target.decode("ascii"), path, query, version, headers, keep_alive,
                    body), body_start + length)


def _expects_continue(version: str, headers: Dict[str, str]) -> bool:
    return version == "1.1" and headers.get("expect", "").lower() == "100-continue"


class RequestParser:
    """`parse_request` with a memory of recent heads, for one server.

    A kubelet sends byte-for-byte the same request for every probe of a container, so a head
    seen before maps straight to its parsed Request (parsing is a pure function of the head's
    bytes). Only short heads without a body are remembered, at most CACHED_REQUESTS of them;
    the returned Request may be shared between calls and must be treated as read-only.
    """

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self.max_body = max_body
        self._heads: Dict[bytes, Request] = {}

    def parse(self, buf: bytes, start: int = 0) -> Tuple[Optional[Request], int]:
        """As parse_request(buf, max_body, start)."""
        end = buf.find(b"\r\n\r\n", start, start + CACHED_HEAD_BYTES) + 4
        key = b""
        if end >= 4:
            key = buf if start == 0 and end == len(buf) else buf[start:end]
            known = self._heads.get(key)
            if known is not None:
                return known, end
        request, used = parse_request(buf, self.max_body, start)
        if (key and request is not None and used == end and "expect" not in request.headers
                and "content-length" not in request.headers):
            if len(self._heads) >= CACHED_REQUESTS:
                self._heads.clear()  # bounded; a client sending ever-new heads gains nothing
            self._heads[key] = request
        return request, used


def is_head_request(buf: bytes, start: int = 0) -> bool:
    """Whether the request starting at `start` is a HEAD (its error reply has no body)."""
    end = _LEADING_BLANK.match(buf, start).end()  # type: ignore[union-attr]
    return buf.startswith(b"HEAD ", end)


def _parse_request_line(line: bytes) -> Tuple[str, bytes, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HTTPError(400, "malformed request line")
    method, target, version = parts
    if method not in _COMMON_METHODS and not _TOKEN.match(method):
        raise HTTPError(400, "malformed method")
    if version == b"HTTP/1.1":
        minor = "1.1"
    else:
        m = _VERSION.match(version)
        if not m:
            raise HTTPError(400, "malformed HTTP version")
        if m.group(1) != b"1":
            raise HTTPError(505, "only HTTP/1.x is supported")
        minor = "1.1" if m.group(2) != b"0" else "1.0"
    if not _TARGET_CHARS.match(target):
        raise HTTPError(400, "malformed request target")
    return method.decode("ascii"), target, minor


def _parse_headers(lines: List[bytes]) -> Dict[str, str]:
    # One regex over the whole block validates every field (the common case); only a bad
    # block is walked line by line, to say which rule it broke.
    fields = lines[1:]
    if fields and not _HEADER_BLOCK.match(b"\n".join(fields) + b"\n"):
        _explain_bad_header(fields)
    headers: Dict[str, str] = {}
    for line in fields:
        name, _, value = line.partition(b":")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t\r").decode("latin-1")
        if key in headers:
            if key == "content-length" and headers[key] != text:
                raise HTTPError(400, "conflicting Content-Length headers")
            if key == "host":
                raise HTTPError(400, "more than one Host header")
            if key != "content-length":
                headers[key] = headers[key] + ", " + text
            continue
        headers[key] = text
    return headers


def _explain_bad_header(fields: List[bytes]) -> None:
    for raw in fields:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line or line[0] in (32, 9):
            raise HTTPError(400, "obsolete header line folding is not allowed")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise HTTPError(400, "malformed header field")
        if _BAD_VALUE_CHAR.search(value):
            raise HTTPError(400, "control character in header %s" % name.decode("ascii"))
    raise HTTPError(400, "malformed header block")


def _keep_alive(version: str, connection: str) -> bool:
    tokens = connection.lower()
    if version == "1.1":
        return "close" not in [t.strip() for t in tokens.split(",")] if tokens else True
    return "keep-alive" in [t.strip() for t in tokens.split(",")] if tokens else False


def _body_length(headers: Dict[str, str], max_body: int) -> int:
    if "transfer-encoding" in headers:
        if "content-length" in headers:
            raise HTTPError(400, "both Transfer-Encoding and Content-Length")
        raise HTTPError(501, "request bodies with Transfer-Encoding are not supported")
    text = headers.get("content-length")
    if text is None:
        return 0
    if not _DIGITS.match(text):
        raise HTTPError(400, "malformed Content-Length")
    length = int(text)
    if length > max_body:
        raise HTTPError(413, "body of %d bytes is over the %d byte limit" % (length, max_body))
    return length


def _split_target(target: bytes) -> Tuple[str, str]:
    if target[:1] != b"/":
        m = _ABSOLUTE_FORM.match(target)
        if m is None:
            if target == b"*":
                return "*", ""
            raise HTTPError(400, "request target must start with /")
        target = target[m.end():] or b"/"
        if target[:1] == b"?":
            target = b"/" + target
    raw_path, _, query = target.partition(b"?")
    raw_path = raw_path.partition(b"#")[0]
    if b"%" in raw_path:
        try:
            path = percent_decode(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "path is not valid UTF-8 after percent-decoding") from None
    else:
        path = raw_path.decode("ascii")
    return path, query.partition(b"#")[0].decode("ascii")


# --- responses --------------------------------------------------------------------------------

CONN_KEEP = 0  # HTTP/1.1 keep-alive: no Connection header needed
CONN_CLOSE = 1
CONN_KEEP_10 = 2  # HTTP/1.0 keep-alive must be confirmed explicitly

_CONNECTION_LINES = (b"", b"Connection: close\r\n", b"Connection: keep-alive\r\n")


def connection_mode(request: Request) -> int:
    """Which Connection header a reply to `request` carries."""
    if not request.keep_alive:
        return CONN_CLOSE
    return CONN_KEEP if request.version == "1.1" else CONN_KEEP_10


class PreparedResponse:
    """A response split around its Date value: `before + date + after` is the wire bytes."""

    __slots__ = ("status", "before", "after", "close", "_date", "_wire")

    def __init__(self, status: int, before: bytes, after: bytes, close: bool) -> None:
        self.status = status
        self.before = before
        self.after = after
        self.close = close
        self._date: Optional[bytes] = None
        self._wire = b""

    def wire(self, date: bytes) -> bytes:
        """The bytes to send with this Date value. A cached reply is sent many times a second
        with one date, so the bytes for the last date object given are kept."""
        if date is not self._date:
            self._date, self._wire = date, self.before + date + self.after
        return self._wire


def build_response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                   head: bool = False, mode: int = CONN_KEEP,
                   extra_headers: Iterable[Tuple[str, str]] = ()) -> PreparedResponse:
    """Render a full response; HEAD keeps Content-Length of the body it leaves out."""
    extra = "".join("%s: %s\r\n" % kv for kv in extra_headers).encode("latin-1")
    before = ("HTTP/1.1 %d %s\r\nDate: " % (status, REASONS.get(status, "Unknown"))).encode("ascii")
    after = b"".join((
        b"\r\nContent-Type: ", content_type.encode("ascii"),
        b"\r\nContent-Length: ", str(len(body)).encode("ascii"),
        b"\r\nCache-Control: no-store\r\n", extra, _CONNECTION_LINES[mode], b"\r\n",
        b"" if head else body,
    ))
    return PreparedResponse(status, before, after, mode == CONN_CLOSE)


def build_error_response(error: HTTPError, head: bool = False) -> PreparedResponse:
    """The reply to a protocol or routing error: plain text, and the connection closes."""
    extra = (("Allow", error.allow),) if error.allow else ()
    body = ("%d %s: %s\n" % (error.status, REASONS.get(error.status, "Error"), error.message))
    return build_response(error.status, body.encode("utf-8"), head=head, mode=CONN_CLOSE,
                          extra_headers=extra)


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class DateCache:
    """The Date value for a given second, formatted once per second: the one bytes object per
    second that PreparedResponse.wire recognises by identity."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def at(self, epoch_seconds: float) -> bytes:
        """IMF-fixdate of `epoch_seconds`, the same object all through one second."""
        second = int(epoch_seconds)
        if second != self._second:
            self._second, self._value = second, http_date(second)
        return self._value


def http_date(epoch_seconds: float) -> bytes:
    """IMF-fixdate for the Date header (RFC 9110 §5.6.7), independent of the C locale."""
    t = time.gmtime(epoch_seconds)
    return ("%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _WEEKDAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year,
        t.tm_hour, t.tm_min, t.tm_sec)).encode("ascii")
