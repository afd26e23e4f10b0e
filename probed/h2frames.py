"""HTTP/2's wire vocabulary (RFC 9113): frame types, flags, error codes, settings, the frame
header, the events the connection machine emits, and what makes a request's fields malformed.

No I/O; h2proto.py holds the connection state machine that speaks it.
"""

from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # the name only: the probe server imports this module for H2_PREFACE, and
    from .hpack import HeaderList  # hpack's tables are built when a gRPC client first connects

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DEFAULT_WINDOW = 65535
MAX_WINDOW = (1 << 31) - 1

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, \
    ENHANCE_YOUR_CALM = range(12)
SETTING_HEADER_TABLE_SIZE, SETTING_ENABLE_PUSH, SETTING_MAX_CONCURRENT_STREAMS, \
    SETTING_INITIAL_WINDOW_SIZE, SETTING_MAX_FRAME_SIZE, SETTING_MAX_HEADER_LIST_SIZE = range(1, 7)
# RFC 9113 §8.2.2: fields that make a request malformed.
CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade"))
REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
REQUIRED_PSEUDO = frozenset((b":method", b":scheme", b":path"))  # CONNECT is not served


class RequestReceived:
    """A request's header fields (decoded, validated); `end_stream`: no body follows."""

    __slots__ = ("stream_id", "headers", "end_stream")

    def __init__(self, stream_id: int, headers: "HeaderList", end_stream: bool) -> None:
        self.stream_id, self.headers, self.end_stream = stream_id, headers, end_stream


class DataReceived:
    """Request body bytes; `end_stream` on the last (possibly empty, for trailers)."""

    __slots__ = ("stream_id", "data", "end_stream")

    def __init__(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.stream_id, self.data, self.end_stream = stream_id, data, end_stream


class StreamReset:
    """A stream ended abnormally: the client reset it (`remote`) or we did (error, timeout)."""

    __slots__ = ("stream_id", "code", "remote")

    def __init__(self, stream_id: int, code: int, remote: bool) -> None:
        self.stream_id, self.code, self.remote = stream_id, code, remote


class ConnectionEnded:
    """No more requests: GOAWAY sent or received and no stream left; close after sending."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


H2Event = Union[RequestReceived, DataReceived, StreamReset, ConnectionEnded]


class H2ConnectionError(Exception):
    """The client broke the protocol (or a limit): GOAWAY with `code`, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class H2StreamError(Exception):
    """One stream broke the protocol: RST_STREAM with `code`; the connection goes on."""

    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(code)
        self.stream_id, self.code = stream_id, code


def build_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: 9-byte header and payload."""
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags)) +
            stream_id.to_bytes(4, "big") + payload)


def request_fields_valid(fields: "HeaderList") -> bool:
    """RFC 9113 §8.2-8.3: pseudo-fields first, once each, the three a request needs; names in
    lower case; no connection-specific fields; `te` only as "trailers"."""
    pseudo = set()
    regular = False
    for name, value in fields:
        if name[:1] == b":":
            if regular or name not in REQUEST_PSEUDO or name in pseudo:
                return False
            pseudo.add(name)
        else:
            regular = True
            if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers") or \
                    name != name.lower():
                return False
    return REQUIRED_PSEUDO <= pseudo
