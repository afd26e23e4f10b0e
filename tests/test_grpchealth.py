"""The gRPC health layer without sockets: protobuf against the real generated classes, status
codes, trailers, and Watch bookkeeping, driven through a real H2Connection."""

from typing import Dict, List, Optional, Tuple

import pytest
from grpc_health.v1 import health_pb2
from test_h2proto import Client, request_block

from probed.grpchealth import (
    GRPC_MESSAGE_LIMIT,
    NOT_SERVING,
    SERVICE_GROUPS,
    SERVICE_UNKNOWN,
    SERVING,
    GrpcError,
    GrpcHealthService,
    HealthCalls,
    decode_health_request,
    health_response,
    percent_encode,
)
from probed.h2frames import DATA, END_HEADERS, END_STREAM, HEADERS, RST_STREAM, build_frame
from probed.connection import ServerStats
from probed.hpack import HPACKDecoder


def request_message(service: str) -> bytes:
    payload = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def test_requests_encoded_by_protobuf_decode() -> None:
    for name in ("", "readiness", "vllm-queue", "ü" * 300):
        message = health_pb2.HealthCheckRequest(service=name).SerializeToString()
        assert decode_health_request(message) == name


def test_our_responses_decode_with_protobuf() -> None:
    for status in (SERVING, NOT_SERVING, SERVICE_UNKNOWN):
        framed = health_response(status)
        assert framed[:5] == b"\0" + (len(framed) - 5).to_bytes(4, "big")
        assert health_pb2.HealthCheckResponse.FromString(framed[5:]).status == status


def test_unknown_fields_are_skipped_and_the_last_service_wins() -> None:
    message = (b"\x10\x96\x01" + b"\x19" + b"8bytes!!" + b"\x25" + b"4byt" +
               b"\x2a\x03abc" + b"\x0a\x01a" + b"\x0a\x02bc")
    assert decode_health_request(message) == "bc"


@pytest.mark.parametrize("message", [
    b"\x08\x01",  # field 1 as a varint
    b"\x0a\x05ab",  # truncated string
    b"\x0a\x02\xff\xfe",  # not UTF-8
    b"\x0b",  # a group
    b"\x10" + b"\xff" * 11,  # a varint of 11 bytes
    b"\x02\x00",  # field 0
])
def test_malformed_requests_are_internal_errors(message: bytes) -> None:
    with pytest.raises(GrpcError) as caught:
        decode_health_request(message)
    assert caught.value.code == 13


def test_grpc_message_is_percent_encoded() -> None:
    assert percent_encode(b"unknown service a%b\n\xc3\xbc") == b"unknown service a%25b%0A%C3%BC"


# --- the service -----------------------------------------------------------------------------

class Verdicts:
    """A lookup the daemon would give: names -> True/False; others unknown."""

    def __init__(self, **known: bool) -> None:
        self.known: Dict[str, bool] = dict(known)

    def __call__(self, service: str) -> Optional[bool]:
        return self.known.get(service)


def test_status_and_watch_notifications_follow_the_lookup() -> None:
    verdicts = Verdicts(readiness=True)
    service = GrpcHealthService(verdicts, limit=2)
    assert [service.status(n) for n in ("readiness", "nope")] == [SERVING, SERVICE_UNKNOWN]
    got: List[Tuple[str, int]] = []
    first = service.watch("readiness", lambda s: got.append(("a", s)))
    second = service.watch("nope", lambda s: got.append(("b", s)))
    assert service.watch("readiness", lambda s: None) is None  # at the limit
    service.changed()
    assert got == [("a", SERVING), ("b", SERVICE_UNKNOWN)]  # nothing changed, nothing sent
    verdicts.known.update(readiness=False, nope=True)
    service.changed()
    assert got[2:] == [("a", NOT_SERVING), ("b", SERVING)]
    assert first is not None and second is not None
    service.unwatch(first)
    verdicts.known["readiness"] = True
    service.changed()
    assert len(got) == 4
    assert service.watch("readiness", lambda s: None) is not None  # room again


def test_service_names_cover_each_group_and_empty_means_ready() -> None:
    assert SERVICE_GROUPS[""] == "ready"
    assert {SERVICE_GROUPS[n] for n in ("liveness", "livez")} == {"live"}
    assert {SERVICE_GROUPS[n] for n in ("readiness", "readyz")} == {"ready"}
    assert {SERVICE_GROUPS[n] for n in ("startup", "startupz")} == {"started"}


# --- calls over a connection -----------------------------------------------------------------

class Call:
    """A client and the calls layer on one connection; `replies()` decodes what came back."""

    def __init__(self, verdicts: Verdicts, limit: int = 100) -> None:
        self.client = Client()
        self.stats = ServerStats()
        self.service = GrpcHealthService(verdicts, limit, count=self.stats.count_grpc)
        self.pushes = 0
        self.calls = HealthCalls(self.service, self.client.conn, self.pushed)
        self.decoder = HPACKDecoder()

    def pushed(self) -> None:
        self.pushes += 1

    def send(self, data: bytes) -> None:
        for event in self.client.send(data):
            self.calls.handle(event)

    def start(self, stream_id: int, path: bytes = b"/grpc.health.v1.Health/Check",
              body: bytes = b"", extra: tuple = ()) -> None:
        self.send(build_frame(HEADERS, END_HEADERS, stream_id, request_block(path, extra=extra)) +
                  build_frame(DATA, END_STREAM, stream_id, body))

    def replies(self) -> List[Tuple[str, object]]:
        out: List[Tuple[str, object]] = []
        for kind, flags, _, payload in self.client.read():
            if kind == HEADERS:
                out.append(("end" if flags & END_STREAM else "headers",
                            dict(self.decoder.decode(payload))))
            elif kind == DATA:
                out.append(("status", health_pb2.HealthCheckResponse.FromString(
                    payload[5:]).status))
            elif kind == RST_STREAM:
                out.append(("reset", int.from_bytes(payload, "big")))
        return out


def test_check_replies_headers_message_and_ok_trailers() -> None:
    call = Call(Verdicts(readiness=False))
    call.start(1, body=request_message("readiness"))
    assert call.replies() == [
        ("headers", {b":status": b"200", b"content-type": b"application/grpc"}),
        ("status", NOT_SERVING), ("end", {b"grpc-status": b"0"})]
    assert call.calls.calls == {}


def trailers_only(call: Call) -> Dict[bytes, bytes]:
    replies = call.replies()
    assert replies[0][0] == "end", replies
    return replies[0][1]  # type: ignore[return-value]


@pytest.mark.parametrize("path,body,extra,status,code,message", [
    (b"/grpc.health.v1.Health/Check", request_message("nope"), (), b"200", b"5",
     b"unknown service"),
    (b"/grpc.health.v1.Health/List", b"\0\0\0\0\0", (), b"200", b"12",
     b"unknown method /grpc.health.v1.Health/List"),
    (b"/my.Service/Do", b"", (), b"200", b"12", b"unknown service /my.Service/Do"),
    (b"/grpc.health.v1.Health/Check", b"\1\0\0\0\2\x0a\0", (), b"200", b"13",
     b"grpc: compressed flag set with identity or empty encoding"),
    (b"/grpc.health.v1.Health/Check", b"\1\0\0\0\2\x0a\0", ((b"grpc-encoding", b"gzip"),),
     b"200", b"12", b"grpc: Decompressor is not installed for grpc-encoding 'gzip'"),
    (b"/grpc.health.v1.Health/Check", b"\0" + (GRPC_MESSAGE_LIMIT + 1).to_bytes(4, "big"), (),
     b"200", b"8", b"grpc: received message larger than max (4097 vs. 4096)"),
    (b"/grpc.health.v1.Health/Check", b"", (), b"200", b"13",
     b"cardinality violation: received no request message from non-client-streaming RPC"),
    (b"/grpc.health.v1.Health/Check", request_message("a") * 2, (), b"200", b"13",
     b"cardinality violation: received multiple request messages for non-client-streaming RPC"),
    (b"/grpc.health.v1.Health/Check", b"\0\0\0\0\5\x0a", (), b"200", b"13",
     b"unexpected EOF inside a message"),
    (b"/grpc.health.v1.Health/Check", b"", ((b"content-type", b"text/plain"),), b"415", b"3",
     b"invalid gRPC request content-type 'text/plain'"),  # the last one counts
])
def test_failed_calls_get_trailers_only_with_grpc_status(
        path: bytes, body: bytes, extra: tuple, status: bytes, code: bytes,
        message: bytes) -> None:
    call = Call(Verdicts(readiness=True))
    call.start(1, path, body, extra)
    fields = trailers_only(call)
    assert (fields[b":status"], fields[b"grpc-status"], fields[b"grpc-message"]) == (
        status, code, message)
    call.start(3, body=request_message("readiness"))  # the connection still serves
    assert ("status", SERVING) in call.replies()


def test_watch_sends_the_status_then_each_change_until_the_client_resets() -> None:
    verdicts = Verdicts(flag=True)
    call = Call(verdicts)
    call.start(1, b"/grpc.health.v1.Health/Watch", request_message("flag"))
    assert [r[0] for r in call.replies()] == ["headers", "status"]
    verdicts.known["flag"] = False
    call.service.changed()
    assert call.replies() == [("status", NOT_SERVING)] and call.pushes == 2
    call.send(build_frame(RST_STREAM, 0, 1, b"\0\0\0\x08"))
    assert not call.service.watchers
    verdicts.known["flag"] = True
    call.service.changed()
    assert call.replies() == []


def test_watch_of_an_unknown_name_says_so_and_waits() -> None:
    call = Call(Verdicts())
    call.start(1, b"/grpc.health.v1.Health/Watch", request_message("later"))
    assert call.replies()[1] == ("status", SERVICE_UNKNOWN)
    assert len(call.service.watchers) == 1


def test_watchers_past_the_limit_get_resource_exhausted() -> None:
    call = Call(Verdicts(flag=True), limit=1)
    call.start(1, b"/grpc.health.v1.Health/Watch", request_message("flag"))
    call.start(3, b"/grpc.health.v1.Health/Watch", request_message("flag"))
    replies = call.replies()
    assert replies[-1] == ("end", {b":status": b"200", b"content-type": b"application/grpc",
                                   b"grpc-status": b"8",
                                   b"grpc-message": b"1 Watch streams already; try later"})


def test_a_connection_that_ends_drops_its_watchers() -> None:
    call = Call(Verdicts(flag=True))
    call.start(1, b"/grpc.health.v1.Health/Watch", request_message("flag"))
    call.start(3, b"/grpc.health.v1.Health/Watch", request_message("flag"))
    assert len(call.service.watchers) == 2
    call.send(build_frame(HEADERS, END_HEADERS, 2, b""))  # an even stream id: GOAWAY
    assert not call.service.watchers


def test_calls_are_counted_by_method_and_first_answer() -> None:
    call = Call(Verdicts(readiness=True, flag=False), limit=1)
    call.start(1, body=request_message("readiness"))
    call.start(3, body=request_message("flag"))
    call.start(5, body=request_message("nope"))
    call.start(7, b"/grpc.health.v1.Health/Watch", request_message("flag"))
    call.start(9, b"/grpc.health.v1.Health/Watch", request_message("flag"))  # past the limit
    call.start(11, b"/grpc.health.v1.Health/List", b"\0\0\0\0\0")
    call.start(13, body=b"\1\0\0\0\2\x0a\0")  # compressed, no encoding
    assert call.stats.grpc_calls == {
        ("Check", "SERVING"): 1, ("Check", "NOT_SERVING"): 1, ("Check", "NOT_FOUND"): 1,
        ("Watch", "NOT_SERVING"): 1, ("Watch", "RESOURCE_EXHAUSTED"): 1,
        ("other", "UNIMPLEMENTED"): 1, ("Check", "INTERNAL"): 1}
