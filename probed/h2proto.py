"""HTTP/2 (RFC 9113) server connection state machine over bytes: no sockets, no asyncio.

The server feeds `receive()` what it read (and the time) and writes out what `data_to_send()`
returns; `receive()` returns events (a request's headers, its data, a reset, the end). The layer
above answers through `send_headers`/`send_data`, which keep to the client's flow-control
windows and queue what they cannot send yet. A protocol violation ends the connection with
GOAWAY and its error code, or one stream with RST_STREAM. Like HTTP/1.1's, every limit is a
named constant below and time bounds what a slow client can hold (`next_deadline`, `expire`).
"""

from typing import Dict, List, Optional

from .h2frames import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    H2_PREFACE,
    HEADERS,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTING_ENABLE_PUSH,
    SETTING_MAX_CONCURRENT_STREAMS,
    SETTING_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    ConnectionEnded,
    DataReceived,
    H2ConnectionError,
    H2Event,
    H2StreamError,
    RequestReceived,
    StreamReset,
    build_frame,
    request_fields_valid,
)
from .h2output import H2Output, H2Stream
from .hpack import HEADER_LIST_LIMIT, HPACKDecoder, HPACKError

FRAME_SIZE_LIMIT = 16384  # SETTINGS_MAX_FRAME_SIZE we accept (the minimum); more: FRAME_SIZE_ERROR
HEADER_BLOCK_LIMIT = 16 * 1024  # bytes of HEADERS + CONTINUATIONs (and 9 per CONTINUATION)
STREAMS_AT_ONCE = 16  # SETTINGS_MAX_CONCURRENT_STREAMS; one more gets RST_STREAM REFUSED_STREAM
STREAMS_PER_CONNECTION = 1000  # then GOAWAY NO_ERROR and the client reconnects (rapid reset)
PING_STRIKES = 10  # PINGs and SETTINGS closer than PING_STRIKE_SECONDS, with nothing sent
PING_STRIKE_SECONDS = 1.0  # between them; one more: GOAWAY ENHANCE_YOUR_CALM
FRAMES_PER_TURN = 64  # frames handled per receive(); the rest wait, so others get their turn


class H2Connection:
    """The server side of one HTTP/2 connection, from the client preface to the last frame."""

    def __init__(self, now: float, read_timeout: float, idle_timeout: float,
                 huffman_cache: Optional[Dict[bytes, bytes]] = None) -> None:
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.decoder = HPACKDecoder(cache=huffman_cache)
        self.streams: Dict[int, H2Stream] = {}
        self.last_stream_id = 0
        self.opened_streams = 0
        self.recv_window = DEFAULT_WINDOW
        self.consumed = 0  # DATA bytes received since our last connection WINDOW_UPDATE
        self.buf = b""
        self.preface_done = False
        self.settings_seen = False
        self.partial_since: Optional[float] = None  # a frame (or block) begun, not complete
        self.block: Optional[bytearray] = None  # a header block awaiting CONTINUATION
        self.block_cost = 0  # its bytes, plus 9 per CONTINUATION: empty ones are not free
        self.block_since = 0.0
        self.block_stream = 0
        self.block_end_stream = False
        self.now = now
        self.idle_since = now
        self.last_ping = -1e18
        self.strikes = 0
        self.going_away = False  # GOAWAY sent or received: no new streams
        self.ended = False  # nothing more to do but send what is queued and close
        self.more = False  # receive() left complete frames in the buffer (FRAMES_PER_TURN)
        self.tx = H2Output(build_frame(SETTINGS, 0, 0, b"".join(
            k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in (
                (SETTING_MAX_CONCURRENT_STREAMS, STREAMS_AT_ONCE),
                (SETTING_MAX_HEADER_LIST_SIZE, HEADER_LIST_LIMIT)))))

    # --- input ---------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> List[H2Event]:
        """Take bytes read from the client; return what they mean. Never raises."""
        events: List[H2Event] = []
        self.now = now
        if self.ended:
            return events
        buf = self.buf + data if self.buf else data
        pos, frames, limit = 0, 0, len(buf)
        try:
            if not self.preface_done:
                if not H2_PREFACE.startswith(buf[:len(H2_PREFACE)]):
                    raise H2ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                if limit < len(H2_PREFACE):
                    self.buf = buf
                    self.partial_since = self.partial_since or now
                    return events
                self.preface_done, pos = True, len(H2_PREFACE)
            while limit - pos >= 9 and frames < FRAMES_PER_TURN and not self.ended:
                length = int.from_bytes(buf[pos:pos + 3], "big")
                if length > FRAME_SIZE_LIMIT:
                    raise H2ConnectionError(FRAME_SIZE_ERROR, "frame of %d bytes over the %d "
                                            "allowed" % (length, FRAME_SIZE_LIMIT))
                end = pos + 9 + length
                if end > limit:
                    break
                kind, flags = buf[pos + 3], buf[pos + 4]
                stream_id = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
                payload = buf[pos + 9:end]
                pos, frames = end, frames + 1
                try:
                    self._frame(kind, flags, stream_id, payload, now, events)
                except H2StreamError as err:
                    self._reset(err.stream_id, err.code, events)
        except H2ConnectionError as err:
            self._go_away(err.code, err.reason, events)
            return events
        self.buf = buf[pos:]
        self.more = bool(self.buf) and frames >= FRAMES_PER_TURN
        if frames or not self.buf:
            self.partial_since = now if self.buf else None
        elif self.partial_since is None:
            self.partial_since = now
        return events

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes, now: float,
               events: List[H2Event]) -> None:
        if self.block is not None and kind != CONTINUATION:
            raise H2ConnectionError(PROTOCOL_ERROR, "frame type %d inside a header block" % kind)
        if not self.settings_seen and kind != SETTINGS:
            raise H2ConnectionError(PROTOCOL_ERROR, "the client preface must end with SETTINGS")
        if kind == DATA:
            self._on_data(flags, stream_id, payload, events)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload, now, events)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload, now, events)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload, now)
        elif kind == PING:
            self._on_ping(flags, stream_id, payload, now)
        elif kind == RST_STREAM:
            self._on_rst_stream(stream_id, payload, events)
        elif kind == GOAWAY:
            if stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            self.going_away = True  # the client opens no more streams; open ones may finish
            self._stream_gone()
        elif kind == PRIORITY:
            if not stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise H2StreamError(stream_id, FRAME_SIZE_ERROR)
        elif kind == PUSH_PROMISE:
            raise H2ConnectionError(PROTOCOL_ERROR, "clients cannot push")
        # unknown frame types are ignored (RFC 9113 §4.1)

    def _payload(self, flags: int, payload: bytes) -> bytes:
        """The payload without its padding (PADDED flag)."""
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise H2ConnectionError(PROTOCOL_ERROR, "padding as long as the frame")
        return payload[1:len(payload) - payload[0]]

    def _on_data(self, flags: int, stream_id: int, payload: bytes,
                 events: List[H2Event]) -> None:
        if not stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        self._count_received(len(payload))  # padding included, whatever becomes of the stream
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "DATA on idle stream %d" % stream_id)
            return  # a stream we closed or reset: late DATA is dropped
        if stream.remote_done:
            raise H2StreamError(stream_id, STREAM_CLOSED)
        stream.recv_window -= len(payload)
        if stream.recv_window < 0:
            raise H2StreamError(stream_id, FLOW_CONTROL_ERROR)
        data = self._payload(flags, payload)
        end = bool(flags & END_STREAM)
        if end:
            stream.remote_done = True
        events.append(DataReceived(stream_id, data, end))
        if end:
            self._close_if_done(stream)

    def _count_received(self, length: int) -> None:
        self.recv_window -= length
        if self.recv_window < 0:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.consumed += length
        if self.consumed >= DEFAULT_WINDOW // 2:  # we keep nothing back: give it all again
            self.tx.frame(WINDOW_UPDATE, 0, 0, self.consumed.to_bytes(4, "big"))
            self.recv_window += self.consumed
            self.consumed = 0

    def _on_headers(self, flags: int, stream_id: int, payload: bytes, now: float,
                    events: List[H2Event]) -> None:
        if not stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = self._payload(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        self.block, self.block_stream, self.block_since = bytearray(payload), stream_id, now
        self.block_end_stream = bool(flags & END_STREAM)
        self._grow_block(0, flags, now, events)


    def _on_continuation(self, flags: int, stream_id: int, payload: bytes, now: float,
                         events: List[H2Event]) -> None:
        if self.block is None or stream_id != self.block_stream:
            raise H2ConnectionError(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        self.block += payload
        self._grow_block(len(payload) + 9, flags, now, events)

    def _grow_block(self, cost: int, flags: int, now: float, events: List[H2Event]) -> None:
        assert self.block is not None
        self.block_cost = (self.block_cost + cost) if cost else len(self.block)
        if self.block_cost > HEADER_BLOCK_LIMIT:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "header block over %d bytes" %
                                    HEADER_BLOCK_LIMIT)
        if flags & END_HEADERS:
            self._header_block_done(now, events)

    def _header_block_done(self, now: float, events: List[H2Event]) -> None:
        assert self.block is not None
        block, self.block = bytes(self.block), None
        try:  # always decoded, even for a stream we refuse: the table must stay in step
            fields = self.decoder.decode(block)
        except HPACKError as exc:
            raise H2ConnectionError(COMPRESSION_ERROR, str(exc)) from None
        stream_id, end = self.block_stream, self.block_end_stream
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers: they must end the stream
            if stream.remote_done or not end:
                raise H2StreamError(stream_id, STREAM_CLOSED if stream.remote_done else
                                    PROTOCOL_ERROR)
            stream.remote_done = True
            events.append(DataReceived(stream_id, b"", True))
            self._close_if_done(stream)
            return
        if stream_id <= self.last_stream_id and end:
            return  # trailers of a stream we already closed or reset
        if stream_id <= self.last_stream_id or not stream_id & 1:
            raise H2ConnectionError(PROTOCOL_ERROR, "stream id %d after %d" % (
                stream_id, self.last_stream_id))
        self.last_stream_id = stream_id
        if self.going_away:
            return  # after GOAWAY, new streams are ignored (RFC 9113 §6.8)
        self.opened_streams += 1
        if self.opened_streams >= STREAMS_PER_CONNECTION:
            self._announce_goaway(NO_ERROR, "%d streams on one connection: reconnect" %
                                  STREAMS_PER_CONNECTION)
        if len(self.streams) >= STREAMS_AT_ONCE:
            raise H2StreamError(stream_id, REFUSED_STREAM)
        if not request_fields_valid(fields):
            raise H2StreamError(stream_id, PROTOCOL_ERROR)
        stream = self.streams[stream_id] = H2Stream(stream_id, now, self.tx.initial_window)
        stream.remote_done = end
        events.append(RequestReceived(stream_id, fields, end))

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of %d bytes" % len(payload))
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.tx.open_window(increment)
            for each in list(self.streams.values()):
                self._flush(each)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE on idle stream")
            return
        if not increment:
            raise H2StreamError(stream_id, PROTOCOL_ERROR)
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise H2StreamError(stream_id, FLOW_CONTROL_ERROR)
        self._flush(stream)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes, now: float) -> None:
        if stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS of %d bytes" % len(payload))
        if self.settings_seen:
            self._strike(now)
        self.settings_seen = True
        for at in range(0, len(payload), 6):
            self._setting(int.from_bytes(payload[at:at + 2], "big"),
                          int.from_bytes(payload[at + 2:at + 6], "big"))
        self.tx.frame(SETTINGS, ACK, 0)
        for stream in list(self.streams.values()):
            self._flush(stream)

    def _setting(self, key: int, value: int) -> None:
        if key == SETTING_ENABLE_PUSH and value > 1:
            raise H2ConnectionError(PROTOCOL_ERROR, "ENABLE_PUSH %d" % value)
        self.tx.setting(key, value, self.streams)  # the rest shape only what we send

    def _on_ping(self, flags: int, stream_id: int, payload: bytes, now: float) -> None:
        if stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "PING of %d bytes" % len(payload))
        if not flags & ACK:
            self._strike(now)
            self.tx.frame(PING, ACK, 0, payload)

    def _strike(self, now: float) -> None:
        """PINGs (or SETTINGS) that come fast while we have sent nothing are a flood."""
        if now - self.last_ping < PING_STRIKE_SECONDS:
            self.strikes += 1
            if self.strikes > PING_STRIKES:
                raise H2ConnectionError(ENHANCE_YOUR_CALM, "too_many_pings")
        self.last_ping = now

    def _on_rst_stream(self, stream_id: int, payload: bytes, events: List[H2Event]) -> None:
        if not stream_id:
            raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM of %d bytes" % len(payload))
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on idle stream")
            return
        events.append(StreamReset(stream_id, int.from_bytes(payload, "big"), True))
        self._stream_gone()

    # --- output --------------------------------------------------------------------------------

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> bool:
        """Queue a header block (HPACK-encoded) on an open stream; False if it is gone."""
        return self._queue(stream_id, False, block, end_stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """Queue DATA; it leaves as the client's windows allow. False if the stream is gone
        (or was just reset because PENDING_SEND_LIMIT bytes wait for a window already)."""
        return self._queue(stream_id, True, data, end_stream)

    def _queue(self, stream_id: int, is_data: bool, payload: bytes, end: bool) -> bool:
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_done or self.ended:
            return False
        if not self.tx.queue(stream, is_data, payload, end):
            self.reset(stream_id, ENHANCE_YOUR_CALM)
            return False
        self.strikes = 0  # we had something to say: pings that follow are not a flood
        self._flush(stream)
        return True

    def _flush(self, stream: H2Stream) -> None:
        if self.tx.flush(stream):
            if not stream.remote_done:  # RFC 9113 §8.1: the reply is complete; stop sending
                self.tx.frame(RST_STREAM, 0, stream.id, NO_ERROR.to_bytes(4, "big"))
            self.streams.pop(stream.id, None)
            self._stream_gone()

    def reset(self, stream_id: int, code: int) -> None:
        """End one stream now with RST_STREAM (no event: the caller knows)."""
        if self.streams.pop(stream_id, None) is not None:
            self.tx.frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))
            self._stream_gone()

    def _reset(self, stream_id: int, code: int, events: List[H2Event]) -> None:
        self.tx.frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))
        if self.streams.pop(stream_id, None) is not None:
            events.append(StreamReset(stream_id, code, False))
            self._stream_gone()

    def _close_if_done(self, stream: H2Stream) -> None:
        if stream.remote_done and stream.local_done and not stream.pending:
            self.streams.pop(stream.id, None)
            self._stream_gone()

    def _stream_gone(self) -> None:
        if not self.streams:  # (ended: the caller closes once our output is out)
            self.idle_since = self.now
            if self.going_away:
                self.ended = True

    def _announce_goaway(self, code: int, reason: str) -> None:
        """GOAWAY naming the last stream we take; those already open may finish."""
        if not self.going_away:
            self.going_away = True
            self.tx.frame(GOAWAY, 0, 0, self.last_stream_id.to_bytes(4, "big") +
                          code.to_bytes(4, "big") + reason.encode("utf-8")[:256])

    def _go_away(self, code: int, reason: str, events: List[H2Event]) -> None:
        self._announce_goaway(code, reason)
        self.going_away = self.ended = True
        self.buf, self.block, self.more = b"", None, False
        events.append(ConnectionEnded(code, reason))

    def shutdown(self, code: int, reason: str) -> List[H2Event]:
        """End the connection now (idle, server at its cap, server stopping)."""
        events: List[H2Event] = []
        if not self.ended:
            self._go_away(code, reason, events)
        return events

    def data_to_send(self) -> bytes:
        """Everything queued for the socket, once."""
        return self.tx.take()

    # --- time ----------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No stream open and nothing half-received."""
        return not self.streams and self.block is None and not self.buf

    def next_deadline(self) -> float:
        """When `expire` has something to do (monotonic seconds; inf: never)."""
        started = self.partial_since
        if self.block is not None:
            started = self.block_since if started is None else min(started, self.block_since)
        deadline = float("inf") if started is None else started + self.read_timeout
        for stream in self.streams.values():
            if not stream.remote_done:
                deadline = min(deadline, stream.opened + self.read_timeout)
        if not self.streams:
            deadline = min(deadline, self.idle_since + self.idle_timeout)
        return deadline

    def expire(self, now: float) -> List[H2Event]:
        """Apply the timeouts: a frame or block not completed, a request not ended within the
        read timeout; no stream for the idle timeout."""
        events: List[H2Event] = []
        self.now = now
        if self.ended:
            return events
        started = min(self.partial_since if self.partial_since is not None else now,
                      self.block_since if self.block is not None else now)
        if started + self.read_timeout <= now:
            self._go_away(ENHANCE_YOUR_CALM, "frame not complete within the read timeout", events)
            return events
        for stream in list(self.streams.values()):
            if not stream.remote_done and stream.opened + self.read_timeout <= now:
                self._reset(stream.id, CANCEL, events)
        if not self.streams and self.idle_since + self.idle_timeout <= now:
            self._go_away(NO_ERROR, "idle", events)
        return events
