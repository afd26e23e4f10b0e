"""The HTTP/2 server machine, driven with byte strings and a fake clock: no sockets."""

from typing import List, Optional, Tuple

import pytest
from test_hpack import huffman_encode

from probed.h2frames import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    H2_PREFACE,
    HEADERS,
    NO_ERROR,
    PADDED,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    ConnectionEnded,
    DataReceived,
    RequestReceived,
    StreamReset,
    build_frame,
)
from probed.h2output import PENDING_SEND_LIMIT
from probed.h2proto import (
    FRAMES_PER_TURN,
    HEADER_BLOCK_LIMIT,
    PING_STRIKES,
    STREAMS_AT_ONCE,
    STREAMS_PER_CONNECTION,
    H2Connection,
)
from probed.hpack import HEADER_LIST_LIMIT, encode_headers, encode_integer

READ, IDLE = 10.0, 120.0
Frame = Tuple[int, int, int, bytes]


def parse_frames(data: bytes) -> List[Frame]:
    frames, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        frames.append((data[pos + 3], data[pos + 4],
                       int.from_bytes(data[pos + 5:pos + 9], "big"), data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data)
    return frames


def settings(*pairs: Tuple[int, int]) -> bytes:
    return build_frame(SETTINGS, 0, 0, b"".join(
        k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs))


def request_block(path: bytes = b"/grpc.health.v1.Health/Check", huffman: bool = True,
                  extra: Tuple[Tuple[bytes, bytes], ...] = ()) -> bytes:
    """As grpc-go writes it: indexed :method POST, :scheme http, the rest Huffman-coded
    literals with incremental indexing."""
    def literal(index: int, value: bytes) -> bytes:
        coded = huffman_encode(value) if huffman else value
        return encode_integer(index, 6, 0x40) + encode_integer(
            len(coded), 7, 0x80 if huffman else 0) + coded
    block = b"\x83\x86" + literal(4, path) + literal(1, b"10.244.1.17:8080") + \
        literal(31, b"application/grpc") + literal(58, b"kube-probe/1.31 grpc-go/1.65.0")
    return block + encode_headers(((b"te", b"trailers"), (b"grpc-timeout", b"999866u")) + extra)


class Client:
    """Drives an H2Connection as a client would; `t` is the fake clock."""

    def __init__(self, *first: Tuple[int, int]) -> None:
        self.t = 0.0
        self.conn = H2Connection(self.t, READ, IDLE)
        self.events: list = []
        self.send(H2_PREFACE + settings(*first))
        assert self.read()[:2] == [(SETTINGS, 0, 0, self.read_settings_payload), (SETTINGS, ACK, 0, b"")]

    read_settings_payload = (3).to_bytes(2, "big") + STREAMS_AT_ONCE.to_bytes(4, "big") + \
        (6).to_bytes(2, "big") + HEADER_LIST_LIMIT.to_bytes(4, "big")

    def send(self, data: bytes) -> list:
        events = self.conn.receive(data, self.t)
        while self.conn.more:  # the server's next turns
            events += self.conn.receive(b"", self.t)
        self.events += events
        return events

    def read(self) -> List[Frame]:
        return parse_frames(self.conn.data_to_send())

    def request(self, stream_id: int = 1, end: bool = False, **kw: object) -> list:
        flags = END_HEADERS | (END_STREAM if end else 0)
        return self.send(build_frame(HEADERS, flags, stream_id, request_block(**kw)))  # type: ignore[arg-type]


def goaway(frames: List[Frame]) -> Optional[Tuple[int, bytes]]:
    for kind, _, _, payload in frames:
        if kind == GOAWAY:
            return int.from_bytes(payload[4:8], "big"), payload[8:]
    return None


def ended_with(client: Client, code: int) -> bytes:
    found = goaway(client.read())
    assert found is not None and found[0] == code, found
    assert client.conn.ended
    assert any(isinstance(e, ConnectionEnded) and e.code == code for e in client.events)
    return found[1]


# --- preface and settings ------------------------------------------------------------------------

def test_a_kubelet_style_request_arrives_decoded() -> None:
    client = Client((4, 65535))
    events = client.request(end=False)
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    fields = dict(events[0].headers)
    assert fields[b":path"] == b"/grpc.health.v1.Health/Check"
    assert fields[b"user-agent"] == b"kube-probe/1.31 grpc-go/1.65.0"
    assert fields[b"te"] == b"trailers" and not events[0].end_stream
    events = client.send(build_frame(DATA, END_STREAM, 1, b"\0\0\0\0\0"))
    assert isinstance(events[0], DataReceived) and events[0].end_stream
    assert events[0].data == b"\0\0\0\0\0"


def test_the_same_bytes_cut_anywhere_give_the_same_events() -> None:
    wire = H2_PREFACE + settings() + build_frame(HEADERS, END_HEADERS, 1, request_block()) + \
        build_frame(DATA, END_STREAM | PADDED, 1, b"\x03" + b"\0" * 5 + b"pad")
    whole = H2Connection(0.0, READ, IDLE)
    expected = [(type(e).__name__, vars_of(e)) for e in whole.receive(wire, 0.0)]
    assert [name for name, _ in expected] == ["RequestReceived", "DataReceived"]
    for cut in range(1, len(wire)):
        conn = H2Connection(0.0, READ, IDLE)
        got = conn.receive(wire[:cut], 0.0) + conn.receive(wire[cut:], 0.0)
        assert [(type(e).__name__, vars_of(e)) for e in got] == expected, cut


def vars_of(event: object) -> tuple:
    return tuple(getattr(event, name) for name in event.__slots__)  # type: ignore[attr-defined]


def test_a_bad_preface_is_a_protocol_error() -> None:
    conn = H2Connection(0.0, READ, IDLE)
    events = conn.receive(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", 0.0)
    assert isinstance(events[0], ConnectionEnded) and events[0].code == PROTOCOL_ERROR
    assert goaway(parse_frames(conn.data_to_send())) == (PROTOCOL_ERROR,
                                                          b"not an HTTP/2 client preface")


def test_the_preface_must_be_followed_by_settings() -> None:
    conn = H2Connection(0.0, READ, IDLE)
    events = conn.receive(H2_PREFACE + build_frame(PING, 0, 0, b"12345678"), 0.0)
    assert isinstance(events[0], ConnectionEnded) and events[0].code == PROTOCOL_ERROR


@pytest.mark.parametrize("frame,code", [
    (build_frame(SETTINGS, 0, 0, b"\0\0\0"), FRAME_SIZE_ERROR),
    (build_frame(SETTINGS, ACK, 0, b"\0" * 6), FRAME_SIZE_ERROR),
    (build_frame(SETTINGS, 0, 1, b""), PROTOCOL_ERROR),
    (settings((2, 2)), PROTOCOL_ERROR),  # ENABLE_PUSH must be 0 or 1
    (settings((5, 100)), PROTOCOL_ERROR),  # MAX_FRAME_SIZE below 16384
    (settings((4, 1 << 31)), FLOW_CONTROL_ERROR),  # INITIAL_WINDOW_SIZE over 2^31-1
    (build_frame(PING, 0, 0, b"1234"), FRAME_SIZE_ERROR),
    (build_frame(PING, 0, 3, b"12345678"), PROTOCOL_ERROR),
    (build_frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2"), PROTOCOL_ERROR),
    (build_frame(GOAWAY, 0, 1, b"\0" * 8), PROTOCOL_ERROR),
    (build_frame(RST_STREAM, 0, 0, b"\0" * 4), PROTOCOL_ERROR),
    (build_frame(RST_STREAM, 0, 5, b"\0" * 4), PROTOCOL_ERROR),  # an idle stream
    (build_frame(DATA, 0, 5, b"x"), PROTOCOL_ERROR),  # an idle stream
    (build_frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    (build_frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), PROTOCOL_ERROR),
    (build_frame(WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff"), FLOW_CONTROL_ERROR),
    (build_frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"), FRAME_SIZE_ERROR),
    (build_frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),
    (build_frame(HEADERS, END_HEADERS, 2, request_block()), PROTOCOL_ERROR),  # even id
    (build_frame(HEADERS, END_HEADERS, 1, b"\xff\xff"), COMPRESSION_ERROR),
])
def test_connection_errors_end_with_goaway(frame: bytes, code: int) -> None:
    client = Client()
    client.send(frame)
    ended_with(client, code)
    assert client.send(build_frame(PING, 0, 0, b"12345678")) == []  # nothing after the end


def test_a_frame_over_the_size_limit_is_refused_from_its_header_alone() -> None:
    client = Client()
    client.send((1 << 20).to_bytes(3, "big") + bytes((DATA, 0)) + (1).to_bytes(4, "big"))
    assert ended_with(client, FRAME_SIZE_ERROR).startswith(b"frame of 1048576 bytes")


def test_ping_is_answered_and_a_flood_of_them_ends_the_connection() -> None:
    client = Client()
    client.send(build_frame(PING, 0, 0, b"abcdefgh"))
    assert client.read() == [(PING, ACK, 0, b"abcdefgh")]
    for _ in range(20):  # one a second is fine, forever
        client.t += 1.0
        client.send(build_frame(PING, 0, 0, b"abcdefgh"))
    assert not client.conn.ended
    client.read()
    client.t += 1.0  # then one on time and PING_STRIKES fast: all answered
    client.send(build_frame(PING, 0, 0, b"abcdefgh") * (PING_STRIKES + 1))
    assert len(client.read()) == PING_STRIKES + 1 and not client.conn.ended
    client.send(build_frame(PING, 0, 0, b"abcdefgh"))
    assert ended_with(client, ENHANCE_YOUR_CALM) == b"too_many_pings"


def test_replies_reset_the_ping_strikes() -> None:
    client = Client()
    for stream_id in range(1, 2 * PING_STRIKES * 2, 2):
        client.request(stream_id, end=True)
        client.conn.send_headers(stream_id, b"\x88", True)
        client.send(build_frame(PING, 0, 0, b"abcdefgh") * 2)
    assert not client.conn.ended


# --- header blocks -------------------------------------------------------------------------------

def test_continuation_frames_complete_a_header_block() -> None:
    client = Client()
    block = request_block(huffman=False)
    client.send(build_frame(HEADERS, END_STREAM, 1, block[:7]))
    assert client.events == []
    client.send(build_frame(CONTINUATION, 0, 1, block[7:20]))
    events = client.send(build_frame(CONTINUATION, END_HEADERS, 1, block[20:]))
    assert isinstance(events[0], RequestReceived) and events[0].end_stream
    assert dict(events[0].headers)[b":authority"] == b"10.244.1.17:8080"


@pytest.mark.parametrize("second", [
    build_frame(DATA, 0, 1, b"x"),  # anything but CONTINUATION
    build_frame(CONTINUATION, END_HEADERS, 3, b""),  # another stream's
    build_frame(PING, 0, 0, b"12345678"),
])
def test_a_header_block_cannot_be_interrupted(second: bytes) -> None:
    client = Client()
    client.send(build_frame(HEADERS, 0, 1, request_block()[:5]) + second)
    ended_with(client, PROTOCOL_ERROR)


def test_a_flood_of_empty_continuations_hits_the_block_limit() -> None:
    client = Client()
    client.send(build_frame(HEADERS, 0, 1, b"\x82"))
    client.send(build_frame(CONTINUATION, 0, 1, b"") * (HEADER_BLOCK_LIMIT // 9 + 1))
    assert ended_with(client, ENHANCE_YOUR_CALM).startswith(b"header block over")


def test_an_hpack_bomb_in_headers_is_a_compression_error() -> None:
    client = Client()
    bomb = b"\x40\x01x" + encode_integer(4000, 7, 0) + b"y" * 4000 + b"\xbe" * 100
    client.send(build_frame(HEADERS, END_HEADERS, 1, bomb))
    assert ended_with(client, COMPRESSION_ERROR) == b"header list over %d bytes" % \
        HEADER_LIST_LIMIT


@pytest.mark.parametrize("fields", [
    ((b"X-Upper", b"1"),),
    ((b"connection", b"close"),),
    ((b"te", b"gzip"),),
])
def test_malformed_requests_reset_only_their_stream(fields: tuple) -> None:
    client = Client()
    client.request(1, extra=fields)
    assert client.read() == [(RST_STREAM, 0, 1, PROTOCOL_ERROR.to_bytes(4, "big"))]
    assert not any(isinstance(e, RequestReceived) for e in client.events)
    assert isinstance(client.request(3)[0], RequestReceived)  # the connection goes on


def test_a_request_without_path_is_malformed() -> None:
    client = Client()
    client.send(build_frame(HEADERS, END_HEADERS, 1, b"\x83\x86"))
    assert client.read() == [(RST_STREAM, 0, 1, PROTOCOL_ERROR.to_bytes(4, "big"))]


def test_stream_ids_must_grow() -> None:
    client = Client()
    client.request(5, end=True)
    client.request(3)
    ended_with(client, PROTOCOL_ERROR)


# --- streams -------------------------------------------------------------------------------------

def test_concurrent_streams_past_the_limit_are_refused() -> None:
    client = Client()
    for n in range(STREAMS_AT_ONCE + 1):
        client.request(2 * n + 1)
    refused = 2 * STREAMS_AT_ONCE + 1
    assert client.read() == [(RST_STREAM, 0, refused, REFUSED_STREAM.to_bytes(4, "big"))]
    assert len(client.conn.streams) == STREAMS_AT_ONCE


def test_after_the_streams_per_connection_the_client_is_told_to_reconnect() -> None:
    client = Client()
    for n in range(STREAMS_PER_CONNECTION):
        client.request(2 * n + 1, end=True)
        client.send(build_frame(RST_STREAM, 0, 2 * n + 1, CANCEL.to_bytes(4, "big")))
    found = goaway(client.read())
    assert found is not None and found[0] == NO_ERROR and client.conn.ended
    assert sum(isinstance(e, StreamReset) and e.remote for e in client.events) == \
        STREAMS_PER_CONNECTION


def test_data_after_end_stream_resets_the_stream() -> None:
    client = Client()
    client.request(1, end=True)
    client.send(build_frame(DATA, 0, 1, b"late"))
    assert client.read() == [(RST_STREAM, 0, 1, STREAM_CLOSED.to_bytes(4, "big"))]
    assert isinstance(client.events[-1], StreamReset) and not client.events[-1].remote


def test_priority_and_unknown_frames_are_ignored() -> None:
    client = Client()
    client.send(build_frame(PRIORITY, 0, 9, b"\0\0\0\0\x10") + build_frame(0xAB, 0xFF, 0, b"?"))
    assert client.read() == [] and client.events == [] and not client.conn.ended
    assert isinstance(client.request(1)[0], RequestReceived)  # PRIORITY did not open 9


def test_a_client_goaway_ends_the_connection_once_its_streams_finish() -> None:
    client = Client()
    client.request(1, end=True)
    client.send(build_frame(GOAWAY, 0, 0, b"\0\0\0\1\0\0\0\0"))
    assert not client.conn.ended
    client.conn.send_headers(1, b"\x88", True)
    assert client.conn.ended


# --- flow control --------------------------------------------------------------------------------

def test_replies_keep_to_the_clients_windows() -> None:
    client = Client((4, 0))  # INITIAL_WINDOW_SIZE 0: no DATA until a WINDOW_UPDATE
    client.request(1, end=True)
    assert client.conn.send_headers(1, b"\x88")
    assert client.conn.send_data(1, b"0123456789")
    assert client.conn.send_headers(1, b"\x40\x01a\x01b", True)  # trailers wait behind DATA
    assert client.read() == [(HEADERS, END_HEADERS, 1, b"\x88")]
    client.send(build_frame(WINDOW_UPDATE, 0, 1, (4).to_bytes(4, "big")))
    assert client.read() == [(DATA, 0, 1, b"0123")]
    client.send(build_frame(WINDOW_UPDATE, 0, 1, (100).to_bytes(4, "big")))
    assert client.read() == [(DATA, 0, 1, b"456789"),
                             (HEADERS, END_HEADERS | END_STREAM, 1, b"\x40\x01a\x01b")]
    assert 1 not in client.conn.streams


def test_a_stream_window_overflow_resets_the_stream() -> None:
    client = Client()
    client.request(1)
    client.send(build_frame(WINDOW_UPDATE, 0, 1, (0x7FFFFFFF).to_bytes(4, "big")))
    assert client.read() == [(RST_STREAM, 0, 1, FLOW_CONTROL_ERROR.to_bytes(4, "big"))]
    assert not client.conn.ended


def test_replies_waiting_for_a_window_are_bounded() -> None:
    client = Client((4, 0))
    client.request(1, end=True)
    client.conn.send_headers(1, b"\x88")
    assert client.conn.send_data(1, b"x" * PENDING_SEND_LIMIT)
    assert not client.conn.send_data(1, b"x")
    assert client.read()[-1] == (RST_STREAM, 0, 1, ENHANCE_YOUR_CALM.to_bytes(4, "big"))
    assert 1 not in client.conn.streams


def test_received_data_is_given_back_to_the_connection_window() -> None:
    client = Client()
    for stream_id in (1, 3, 5):  # half the window (32767) is passed on the third
        client.request(stream_id)
        client.send(build_frame(DATA, END_STREAM, stream_id, b"x" * 16000))
    updates = [f for f in client.read() if f[0] == WINDOW_UPDATE]
    assert updates == [(WINDOW_UPDATE, 0, 0, (48000).to_bytes(4, "big"))]


def test_data_beyond_the_connection_window_is_a_flow_control_error() -> None:
    client = Client()
    client.request(1)
    client.conn.consumed = -10 ** 9  # as if our updates were never sent
    for _ in range(5):
        client.send(build_frame(DATA, 0, 1, b"x" * 16000))
    ended_with(client, FLOW_CONTROL_ERROR)


def test_a_complete_reply_to_a_request_still_arriving_stops_it() -> None:
    client = Client()
    client.request(1)
    client.conn.send_headers(1, b"\x88", True)
    assert client.read() == [(HEADERS, END_HEADERS | END_STREAM, 1, b"\x88"),
                             (RST_STREAM, 0, 1, NO_ERROR.to_bytes(4, "big"))]


def test_a_smaller_header_table_is_signalled_in_our_next_block() -> None:
    client = Client((1, 0))
    client.request(1, end=True)
    client.conn.send_headers(1, b"\x88", True)
    assert client.read() == [(HEADERS, END_HEADERS | END_STREAM, 1, b"\x20\x88")]


def test_a_header_block_larger_than_a_frame_goes_in_continuations() -> None:
    client = Client()
    client.request(1, end=True)
    client.conn.send_headers(1, b"\x88" * 20000, True)
    frames = client.read()
    assert [(k, f, len(p)) for k, f, _, p in frames] == [
        (HEADERS, END_STREAM, 16384), (CONTINUATION, END_HEADERS, 20000 - 16384)]


# --- time and fairness ---------------------------------------------------------------------------

def test_a_half_sent_frame_gets_the_read_timeout() -> None:
    client = Client()
    client.t = 3.0
    client.send(build_frame(PING, 0, 0, b"12345678")[:10])
    assert client.conn.next_deadline() == 3.0 + READ
    assert client.conn.expire(3.0 + READ - 0.1) == []
    client.t = 3.0 + READ
    client.events += client.conn.expire(client.t)
    ended_with(client, ENHANCE_YOUR_CALM)


def test_a_request_that_never_ends_is_cancelled_and_the_connection_goes_on() -> None:
    client = Client()
    client.t = 1.0
    client.request(1)
    client.send(build_frame(DATA, 0, 1, b"\0\0\0"))
    assert client.conn.next_deadline() == 1.0 + READ
    events = client.conn.expire(1.0 + READ)
    assert isinstance(events[0], StreamReset) and events[0].code == CANCEL
    assert client.read() == [(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big"))]
    assert not client.conn.ended and client.conn.next_deadline() == 1.0 + READ + IDLE


def test_an_answered_stream_being_watched_has_no_deadline_and_idle_ones_end() -> None:
    client = Client()
    client.request(1, end=True)
    client.conn.send_headers(1, b"\x88")  # a Watch: open for as long as the client wants
    assert client.conn.next_deadline() == float("inf")
    client.send(build_frame(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big")))
    client.t = 50.0
    client.send(b"")
    assert client.conn.next_deadline() == IDLE  # idle since its last stream ended at t=0
    client.events += client.conn.expire(IDLE)
    assert ended_with(client, NO_ERROR) == b"idle"


def test_frames_beyond_a_turn_wait_for_the_next() -> None:
    client = Client()
    update = build_frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\1")
    client.conn.receive(update * (FRAMES_PER_TURN + 10) + build_frame(PING, 0, 0, b"lastping"), 0)
    assert client.conn.more and client.read() == []
    client.conn.receive(b"", 0)
    assert not client.conn.more and client.read() == [(PING, ACK, 0, b"lastping")]
