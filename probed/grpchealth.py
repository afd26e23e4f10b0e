"""The gRPC health service (grpc.health.v1.Health) on the HTTP/2 machine: no sockets, no clocks.

`Check` answers a service name's status from the daemon's verdicts (only SERVING passes the
kubelet's grpc probe); `Watch` sends the status, then each change as it happens. The verdicts
come through one narrow function, `lookup(service) -> True/False, or None for an unknown name`,
and the daemon calls `changed()` when a verdict may have changed. Messages are hand-encoded
protobuf (one field each); framing, status codes and trailers follow gRPC's PROTOCOL-HTTP2.md.
"""

from typing import Callable, Dict, List, Optional, Tuple

from .h2frames import ConnectionEnded, DataReceived, H2Event, RequestReceived
from .h2proto import H2Connection
from .hpack import encode_headers

GRPC_MESSAGE_LIMIT = 4096  # bytes of one request message; larger -> RESOURCE_EXHAUSTED
WATCHERS_LIMIT = 100  # Watch streams at once, all connections; one more -> RESOURCE_EXHAUSTED
GRPC_SHOWN_PATH = 200  # bytes of an unknown method's path quoted back in grpc-message

GRPC_OK, GRPC_INVALID_ARGUMENT, GRPC_NOT_FOUND, GRPC_RESOURCE_EXHAUSTED, GRPC_UNIMPLEMENTED, \
    GRPC_INTERNAL = 0, 3, 5, 8, 12, 13
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3  # HealthCheckResponse.ServingStatus
# Labels of probed_grpc_requests_total: a call's first answer, a bounded set whatever clients send.
STATUS_NAMES = {SERVING: "SERVING", NOT_SERVING: "NOT_SERVING",
                SERVICE_UNKNOWN: "SERVICE_UNKNOWN"}
CODE_NAMES = {GRPC_INVALID_ARGUMENT: "INVALID_ARGUMENT", GRPC_NOT_FOUND: "NOT_FOUND",
              GRPC_RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED", GRPC_UNIMPLEMENTED: "UNIMPLEMENTED",
              GRPC_INTERNAL: "INTERNAL"}
HEALTH_PREFIX = b"/grpc.health.v1.Health/"
HEALTH_METHODS = {HEALTH_PREFIX + b"Check": False, HEALTH_PREFIX + b"Watch": True}  # streams?
# Service names -> the group whose verdict they report; any other name is a check's own verdict.
# "" is the whole server, by gRPC's convention: for a router, "can take traffic" (ready).
SERVICE_GROUPS = {"": "ready", "liveness": "live", "livez": "live", "readiness": "ready",
                  "readyz": "ready", "startup": "started", "startupz": "started"}

Lookup = Callable[[str], Optional[bool]]
CountCall = Callable[[str, str], None]  # (method, answer): one call answered
REPLY_HEADERS = encode_headers(((b":status", b"200"), (b"content-type", b"application/grpc")))
OK_TRAILERS = encode_headers(((b"grpc-status", b"0"),))


class GrpcError(Exception):
    """A call that ends with a non-OK grpc-status (and `http_status` when not gRPC at all)."""

    def __init__(self, code: int, message: str, http_status: bytes = b"200") -> None:
        super().__init__(message)
        self.code, self.message, self.http_status = code, message, http_status


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed message, uncompressed."""
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def health_response(status: int) -> bytes:
    """HealthCheckResponse{status = 1}, framed."""
    return grpc_message(bytes((0x08, status)))


def read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    """A protobuf varint at data[pos]: (value, next pos)."""
    value = shift = 0
    while shift < 70:
        if pos >= len(data):
            raise GrpcError(GRPC_INTERNAL, "grpc: error unmarshalling request: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise GrpcError(GRPC_INTERNAL, "grpc: error unmarshalling request: varint over 10 bytes")


def decode_health_request(message: bytes) -> str:
    """HealthCheckRequest{string service = 1}; unknown fields are skipped, as protobuf does."""
    pos, end, service = 0, len(message), b""
    while pos < end:
        key, pos = read_varint(message, pos)
        field, wire = key >> 3, key & 7
        if wire == 2 and field:
            length, pos = read_varint(message, pos)
            if field == 1:
                service = message[pos:pos + length]
            pos += length
        elif field == 1 or wire not in (0, 1, 5) or not field:
            raise GrpcError(GRPC_INTERNAL, "grpc: error unmarshalling request: field %d has "
                            "wire type %d" % (field, wire))
        elif wire == 0:
            pos = read_varint(message, pos)[1]
        else:
            pos += 8 if wire == 1 else 4
        if pos > end:
            raise GrpcError(GRPC_INTERNAL, "grpc: error unmarshalling request: truncated")
    try:
        return service.decode("utf-8")
    except UnicodeDecodeError:
        raise GrpcError(GRPC_INTERNAL, "grpc: error unmarshalling request: service name is "
                        "not UTF-8") from None


def percent_encode(text: bytes) -> bytes:
    """grpc-message's encoding: printable ASCII but '%' as is, every other byte as %XX."""
    return b"".join(bytes((b,)) if 0x20 <= b < 0x7F and b != 0x25 else b"%%%02X" % b
                    for b in text)


def trailers_only(code: int, message: str, http_status: bytes = b"200") -> bytes:
    """The single header block of a call that fails before any reply."""
    fields: List[Tuple[bytes, bytes]] = [
        (b":status", http_status), (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % code), (b"grpc-message", percent_encode(message.encode()))]
    if code == GRPC_UNIMPLEMENTED and "grpc-encoding" in message:
        fields.append((b"grpc-accept-encoding", b"identity"))
    return encode_headers(fields)


class HealthWatcher:
    """One Watch stream: the name it follows, where updates go, the status it last got."""

    __slots__ = ("service", "notify", "sent")

    def __init__(self, service: str, notify: Callable[[int], None], sent: int) -> None:
        self.service, self.notify, self.sent = service, notify, sent


class GrpcHealthService:
    """Statuses from `lookup`, and the Watch streams that follow them (at most `limit`)."""

    def __init__(self, lookup: Lookup, limit: int = WATCHERS_LIMIT,
                 count: CountCall = lambda method, answer: None) -> None:
        self.lookup = lookup
        self.limit = limit
        self.count = count  # the probe port's counters (ServerStats.count_grpc)
        self.watchers: Dict[HealthWatcher, None] = {}  # in the order they came

    def status(self, service: str) -> int:
        """SERVING, NOT_SERVING, or SERVICE_UNKNOWN for a name lookup does not know."""
        ok = self.lookup(service)
        return SERVICE_UNKNOWN if ok is None else SERVING if ok else NOT_SERVING

    def watch(self, service: str, notify: Callable[[int], None]) -> Optional[HealthWatcher]:
        """Follow `service`: `notify(status)` now and on each change; None when at the limit."""
        if len(self.watchers) >= self.limit:
            return None
        watcher = HealthWatcher(service, notify, self.status(service))
        self.watchers[watcher] = None
        notify(watcher.sent)
        return watcher

    def unwatch(self, watcher: HealthWatcher) -> None:
        """Stop following (the stream ended)."""
        self.watchers.pop(watcher, None)

    def changed(self) -> None:
        """A verdict may have changed: tell each watcher whose status did."""
        if not self.watchers:
            return
        now: Dict[str, int] = {}
        for watcher in list(self.watchers):
            status = now.get(watcher.service)
            if status is None:
                status = now[watcher.service] = self.status(watcher.service)
            if status != watcher.sent and watcher in self.watchers:
                watcher.sent = status
                watcher.notify(status)


class GrpcCall:
    """One call's progress: which method, unparsed bytes, the request once read."""

    __slots__ = ("watch", "encoding", "buf", "request", "watcher")

    def __init__(self, watch: bool, encoding: bytes) -> None:
        self.watch = watch
        self.encoding = encoding
        self.buf = bytearray()
        self.request: Optional[str] = None
        self.watcher: Optional[HealthWatcher] = None


class HealthCalls:
    """The gRPC calls of one HTTP/2 connection: reads its events, answers through it.
    `pushed()` is called after a Watch update was queued outside of `handle` (to flush it)."""

    def __init__(self, service: GrpcHealthService, conn: H2Connection,
                 pushed: Callable[[], None]) -> None:
        self.service = service
        self.conn = conn
        self.pushed = pushed
        self.calls: Dict[int, GrpcCall] = {}

    def handle(self, event: H2Event) -> None:
        """React to one event of the connection."""
        sid = getattr(event, "stream_id", 0)
        try:
            if isinstance(event, RequestReceived):
                self._start(sid, event.headers, event.end_stream)
            elif isinstance(event, DataReceived):
                self._data(sid, event.data, event.end_stream)
            elif isinstance(event, ConnectionEnded):
                self.close()
            else:  # StreamReset
                self._drop(sid)
        except GrpcError as err:
            call = self.calls.get(sid)
            self.service.count("other" if call is None else "Watch" if call.watch else "Check",
                               CODE_NAMES.get(err.code, "INTERNAL"))
            self._drop(sid)
            self.conn.send_headers(sid, trailers_only(err.code, err.message, err.http_status),
                                   True)

    def _start(self, sid: int, headers: List[Tuple[bytes, bytes]], end: bool) -> None:
        fields = dict(headers)
        ctype = fields.get(b"content-type", b"")
        if ctype != b"application/grpc" and not ctype.startswith((b"application/grpc+proto",
                                                                  b"application/grpc;")):
            raise GrpcError(GRPC_INVALID_ARGUMENT, "invalid gRPC request content-type %r" %
                            ctype.decode("latin-1"), b"415")
        if fields[b":method"] != b"POST":
            raise GrpcError(GRPC_INTERNAL, "gRPC requests are POST", b"405")
        path = fields[b":path"]
        watch = HEALTH_METHODS.get(path)
        if watch is None:
            shown = path[:GRPC_SHOWN_PATH].decode("latin-1")
            raise GrpcError(GRPC_UNIMPLEMENTED, "unknown method %s" % shown
                            if path.startswith(HEALTH_PREFIX) else "unknown service %s" % shown)
        self.calls[sid] = GrpcCall(watch, fields.get(b"grpc-encoding", b"identity"))
        if end:
            self._finish(sid)

    def _data(self, sid: int, data: bytes, end: bool) -> None:
        call = self.calls.get(sid)
        if call is None:
            return  # answered already (an error): the rest is dropped
        call.buf += data
        while len(call.buf) >= 5:
            length = int.from_bytes(call.buf[1:5], "big")
            if length > GRPC_MESSAGE_LIMIT:
                raise GrpcError(GRPC_RESOURCE_EXHAUSTED, "grpc: received message larger than "
                                "max (%d vs. %d)" % (length, GRPC_MESSAGE_LIMIT))
            if len(call.buf) < 5 + length:
                break
            self._message(call, call.buf[0], bytes(call.buf[5:5 + length]))
            del call.buf[:5 + length]
        if end:
            self._finish(sid)

    def _message(self, call: GrpcCall, flag: int, payload: bytes) -> None:
        if flag == 1:
            if call.encoding in (b"", b"identity"):
                raise GrpcError(GRPC_INTERNAL, "grpc: compressed flag set with identity or "
                                "empty encoding")
            raise GrpcError(GRPC_UNIMPLEMENTED, "grpc: Decompressor is not installed for "
                            "grpc-encoding %r" % call.encoding.decode("latin-1"))
        if flag:
            raise GrpcError(GRPC_INTERNAL, "grpc: received unexpected payload format %d" % flag)
        if call.request is not None:
            raise GrpcError(GRPC_INTERNAL, "cardinality violation: received multiple request "
                            "messages for non-client-streaming RPC")
        call.request = decode_health_request(payload)

    def _finish(self, sid: int) -> None:
        call = self.calls[sid]
        if call.buf:
            raise GrpcError(GRPC_INTERNAL, "unexpected EOF inside a message")
        if call.request is None:
            raise GrpcError(GRPC_INTERNAL, "cardinality violation: received no request message "
                            "from non-client-streaming RPC")
        if not call.watch:
            status = self.service.status(call.request)
            if status == SERVICE_UNKNOWN:
                raise GrpcError(GRPC_NOT_FOUND, "unknown service")
            self.service.count("Check", STATUS_NAMES[status])
            del self.calls[sid]
            conn = self.conn
            conn.send_headers(sid, REPLY_HEADERS)
            conn.send_data(sid, health_response(status))
            conn.send_headers(sid, OK_TRAILERS, True)
            return
        if len(self.service.watchers) >= self.service.limit:
            raise GrpcError(GRPC_RESOURCE_EXHAUSTED, "%d Watch streams already; try later" %
                            self.service.limit)
        self.conn.send_headers(sid, REPLY_HEADERS)
        call.watcher = self.service.watch(call.request, lambda status: self._push(sid, status))
        if call.watcher is not None:
            self.service.count("Watch", STATUS_NAMES[call.watcher.sent])
        if self.calls.get(sid) is not call and call.watcher is not None:
            self.service.unwatch(call.watcher)  # the first update found the stream gone

    def _push(self, sid: int, status: int) -> None:
        if not self.conn.send_data(sid, health_response(status)):
            self._drop(sid)  # the stream is gone (or its client reads nothing)
        self.pushed()

    def _drop(self, sid: int) -> None:
        call = self.calls.pop(sid, None)
        if call is not None and call.watcher is not None:
            self.service.unwatch(call.watcher)

    def close(self) -> None:
        """The connection is gone: stop every Watch it had."""
        for sid in list(self.calls):
            self._drop(sid)
