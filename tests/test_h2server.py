"""The HTTP/2 connection handler in-process, over socketpairs on a real event loop: Check,
Watch pushes, and a client that never reads (the connection stops being read, then closes)."""

import asyncio
import socket
from typing import Dict, Optional, Tuple

from test_h2proto import parse_frames, request_block, settings

from probed.grpchealth import GrpcHealthService
from probed.h2frames import DATA, END_HEADERS, END_STREAM, H2_PREFACE, HEADERS, build_frame
from probed.h2server import H2_OUTPUT_LIMIT, H2Server
from probed.httpproto import build_response
from probed.listeners import bind_listener
from probed.server import ProbeServer

CHECK = b"\0\0\0\0\x06\x0a\x04flag"
SERVING_REPLY = b"\0\0\0\0\2\x08\x01"  # HealthCheckResponse{status: SERVING}, framed


def pair() -> Tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


def test_check_and_watch_pushes_reach_the_socket() -> None:
    verdicts: Dict[str, Optional[bool]] = {"flag": True}

    async def run() -> bytes:
        service = GrpcHealthService(verdicts.get)
        server = H2Server(service)
        ours, theirs = pair()
        server.adopt(ours, H2_PREFACE[:10])  # the rest of the preface comes later
        theirs.sendall(H2_PREFACE[10:] + settings() +
                       build_frame(HEADERS, END_HEADERS, 1, request_block()) +
                       build_frame(DATA, END_STREAM, 1, CHECK) +
                       build_frame(HEADERS, END_HEADERS, 3, request_block(
                           b"/grpc.health.v1.Health/Watch")) +
                       build_frame(DATA, END_STREAM, 3, CHECK))
        await asyncio.sleep(0.1)
        verdicts["flag"] = False
        service.changed()  # pushed to the socket at once, no read needed to flush it
        await asyncio.sleep(0.1)
        theirs.setblocking(False)
        data = theirs.recv(65536)
        assert server.open == 1 and len(service.watchers) == 1
        theirs.close()
        await asyncio.sleep(0.1)
        assert server.open == 0 and not service.watchers  # EOF: closed, watcher dropped
        server.close()
        return data

    frames = parse_frames(asyncio.run(run()))
    statuses = [(sid, p) for k, _, sid, p in frames if k == DATA]
    assert statuses == [(1, b"\0\0\0\0\2\x08\x01"), (3, b"\0\0\0\0\2\x08\x01"),
                        (3, b"\0\0\0\0\2\x08\x02")]


def test_a_client_that_never_reads_stops_being_read_then_is_closed() -> None:
    async def run() -> None:
        server = H2Server(GrpcHealthService(lambda name: True), write_timeout=0.5)
        ours, theirs = pair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.adopt(ours, H2_PREFACE + settings())
        link = server.links[ours.fileno()]
        # unknown methods are answered with their (long) path quoted back: much output
        path = b"/x/" + b"y" * 300
        theirs.setblocking(False)
        for n in range(400):
            try:
                theirs.send(build_frame(HEADERS, END_HEADERS | END_STREAM, 2 * n + 1,
                                        request_block(path, huffman=False)))
            except BlockingIOError:
                break  # the server stopped reading us: our sends back up
            await asyncio.sleep(0)
        assert len(link.out) > H2_OUTPUT_LIMIT and not link.reading
        await asyncio.sleep(1.0)  # write timeout 0.5 s, sweeps every 0.25 s
        assert link.closed and server.open == 0
        theirs.close()
        server.close()

    asyncio.run(run())


def test_the_probe_server_builds_its_http2_server_at_the_first_preface_only() -> None:
    """Issue 18 (idle RSS): HTTP/1.1 connections never build the HTTP/2 stack; the first client
    sending the preface does, once, and later ones share it."""
    built = []

    def make_h2() -> H2Server:
        built.append(H2Server(GrpcHealthService(lambda name: True)))
        return built[-1]

    async def run() -> Tuple[bytes, bytes]:
        server = ProbeServer(lambda request: build_response(200, b"ok\n"), make_h2=make_h2)
        listener = bind_listener("127.0.0.1", 0, "--addr")
        server.add_listener(listener)

        async def exchange(data: bytes, want: bytes) -> bytes:
            """Send `data`, read until some reply holding `want` is in (or 5 s pass)."""
            reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            writer.write(data)
            reply = b""
            while not reply or want not in reply:
                chunk = await asyncio.wait_for(reader.read(65536), 5.0)
                if not chunk:
                    break
                reply += chunk
            writer.close()
            return reply

        http1 = await exchange(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                               b"ok\n")
        assert built == [] and server.h2 is None
        first = await exchange(H2_PREFACE + settings() +
                               build_frame(HEADERS, END_HEADERS, 1, request_block()) +
                               build_frame(DATA, END_STREAM, 1, CHECK), SERVING_REPLY)
        again = await exchange(H2_PREFACE + settings(), b"")
        assert len(built) == 1 and server.h2 is built[0] and again
        server.close()
        return http1, first

    http1, first = asyncio.run(run())
    assert http1.startswith(b"HTTP/1.1 200")
    assert any(k == DATA and p == SERVING_REPLY for k, _, _, p in parse_frames(first))
