"""What an HTTP/2 server sends: its streams' reply queues, framed and kept within the client's
flow-control windows and frame size, and the settings of the client that shape them. No I/O.

h2proto.py's connection machine owns one `H2Output` and calls it; nothing here reads input.
"""

from typing import Dict, List, Tuple

from .h2frames import (
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    HEADERS,
    MAX_WINDOW,
    PROTOCOL_ERROR,
    SETTING_HEADER_TABLE_SIZE,
    SETTING_INITIAL_WINDOW_SIZE,
    SETTING_MAX_FRAME_SIZE,
    H2ConnectionError,
    build_frame,
)
from .hpack import DYNAMIC_TABLE_LIMIT, encode_table_size_update

PENDING_SEND_LIMIT = 16 * 1024  # reply bytes one stream may queue for flow-control window
MIN_FRAME_SIZE = 16384  # the smallest SETTINGS_MAX_FRAME_SIZE a peer may ask for


class H2Stream:
    """One request/response exchange on the connection."""

    __slots__ = ("id", "opened", "remote_done", "local_done", "send_window", "recv_window",
                 "pending", "pending_bytes")

    def __init__(self, stream_id: int, now: float, send_window: int) -> None:
        self.id = stream_id
        self.opened = now  # the client has the read timeout to finish its request
        self.remote_done = False  # END_STREAM received
        self.local_done = False  # END_STREAM queued by us
        self.send_window = send_window
        self.recv_window = DEFAULT_WINDOW
        # (is_data, payload, end_stream) waiting for flow-control window, in order
        self.pending: List[Tuple[bool, bytes, bool]] = []
        self.pending_bytes = 0


class H2Output:
    """Frames queued for the socket, and the client's windows and settings for our replies."""

    def __init__(self, first: bytes) -> None:
        self.frames: List[bytes] = [first]
        self.window = DEFAULT_WINDOW  # the client's connection window for our DATA
        self.initial_window = DEFAULT_WINDOW  # SETTINGS_INITIAL_WINDOW_SIZE of new streams
        self.max_frame = MIN_FRAME_SIZE
        self.table_size = DYNAMIC_TABLE_LIMIT  # our HPACK table's size as the client knows it
        self.table_update = -1  # >= 0: our next header block first tells the client this size

    def frame(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        """Queue one frame."""
        self.frames.append(build_frame(kind, flags, stream_id, payload))

    def take(self) -> bytes:
        """Everything queued, once."""
        frames, self.frames = self.frames, []
        return b"".join(frames)

    def queue(self, stream: H2Stream, is_data: bool, payload: bytes, end: bool) -> bool:
        """Add to a stream's queue; False (nothing queued) past PENDING_SEND_LIMIT."""
        if is_data:
            if stream.pending_bytes + len(payload) > PENDING_SEND_LIMIT:
                return False
            stream.pending_bytes += len(payload)
        stream.pending.append((is_data, payload, end))
        stream.local_done = end
        return True

    def flush(self, stream: H2Stream) -> bool:
        """Send what the windows allow of a stream's queue, in order; True once it has all
        gone and ended the stream."""
        pending = stream.pending
        while pending:
            is_data, payload, end = pending[0]
            if is_data:
                room = min(self.window, stream.send_window, self.max_frame)
                if payload and room <= 0:
                    return False
                if len(payload) > room:  # what fits goes; the rest waits for a window
                    pending[0] = (True, payload[room:], end)
                    self._data(stream, payload[:room], False)
                    continue
                self._data(stream, payload, end)
            else:
                self._headers(stream.id, payload, end)
            pending.pop(0)
        return stream.local_done

    def _data(self, stream: H2Stream, data: bytes, end: bool) -> None:
        size = len(data)
        self.window -= size
        stream.send_window -= size
        stream.pending_bytes -= size
        self.frame(DATA, END_STREAM if end else 0, stream.id, data)

    def _headers(self, stream_id: int, block: bytes, end: bool) -> None:
        if self.table_update >= 0:  # the first block after the client shrank our table
            block, self.table_update = encode_table_size_update(self.table_update) + block, -1
        size = self.max_frame
        first, rest = block[:size], block[size:]
        self.frame(HEADERS, (END_STREAM if end else 0) | (0 if rest else END_HEADERS),
                   stream_id, first)
        while rest:
            first, rest = rest[:size], rest[size:]
            self.frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, first)

    def open_window(self, increment: int) -> None:
        """A connection WINDOW_UPDATE (the caller flushes the streams)."""
        self.window += increment
        if self.window > MAX_WINDOW:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "connection window over 2^31-1")

    def setting(self, key: int, value: int, streams: Dict[int, H2Stream]) -> None:
        """Apply one of the client's settings that shapes what we send."""
        if key == SETTING_HEADER_TABLE_SIZE and value < self.table_size:
            self.table_size = self.table_update = value  # signalled in our next block
        elif key == SETTING_INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise H2ConnectionError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE %d" % value)
            delta, self.initial_window = value - self.initial_window, value
            for stream in streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, "stream window over 2^31-1")
        elif key == SETTING_MAX_FRAME_SIZE:
            if not MIN_FRAME_SIZE <= value < 1 << 24:
                raise H2ConnectionError(PROTOCOL_ERROR, "MAX_FRAME_SIZE %d" % value)
            self.max_frame = value
