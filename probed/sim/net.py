"""Sockets of the vLLM simulator (probed/sim/vllm.py): a port that listens or merely holds.

A `SimListener` owns one TCP port. Open, it accepts on the event loop, reads one request, hands
it to an async dispatch function and writes uvicorn-style response bytes. Closed, it keeps a
bound socket that does not listen, so connects are refused (as while vLLM loads its model) and
nobody else takes the port; closing also ends every open connection, as a process exit does.
Must never route: what to answer is the dispatch function's business.
"""

import asyncio
import socket
import time
from typing import Any, Awaitable, Callable, List, Optional, Set, Tuple

from ..httpproto import REASONS, HTTPError, Request, http_date, parse_request

SIM_BACKLOG = 128
SIM_ACCEPTS_PER_WAKEUP = 64  # bounded so one busy port cannot starve the loop
SIM_RECV_BYTES = 65536
SIM_MAX_BODY = 1 << 20
SIM_READ_TIMEOUT = 10.0  # a client that sends no complete request in this long is dropped
SIM_JSON_TYPE = "application/json"

SimReply = Tuple[int, bytes, Optional[str], List[Tuple[str, str]]]


def sim_reply(status: int, body: bytes = b"", ctype: Optional[str] = SIM_JSON_TYPE,
              extra: Optional[List[Tuple[str, str]]] = None) -> SimReply:
    """A reply; an empty body goes out without a content-type, as Starlette's bare Response."""
    return status, body, (ctype if body else None), list(extra or [])


def sim_wire(reply: SimReply) -> bytes:
    """uvicorn-style response bytes (lower-case names), always `connection: close`."""
    status, body, ctype, extra = reply
    head = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Unknown")),
            "date: " + http_date(time.time()).decode("ascii"), "server: uvicorn",
            "content-length: %d" % len(body)]
    if ctype:
        head.append("content-type: " + ctype)
    head.extend("%s: %s" % kv for kv in extra)
    head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _sim_bind(host: str, port: int) -> socket.socket:
    """A bound, not listening, non-blocking socket: connects to it are refused."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SimListener:
    """One port: listening (serves) or merely bound (refuses), with its open connections."""

    def __init__(self, host: str, port: int,
                 dispatch: Callable[[Request], Awaitable[SimReply]]) -> None:
        self.sock = _sim_bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.listening = False
        self.dispatch = dispatch
        self.tasks: Set["asyncio.Task[Any]"] = set()

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start listening on the bound socket."""
        if not self.listening:
            self.sock.listen(SIM_BACKLOG)
            loop.add_reader(self.sock.fileno(), self._accept, loop)
            self.listening = True

    def close(self, loop: asyncio.AbstractEventLoop, rebind: bool = True) -> None:
        """Stop listening and end every connection; the port stays bound unless `rebind` is off."""
        if self.listening:
            loop.remove_reader(self.sock.fileno())
            self.sock.close()  # a listening socket cannot stop listening: replace it
            self.listening = False
            if rebind:
                self.sock = _sim_bind(self.host, self.port)
        elif not rebind:
            self.sock.close()
        for task in list(self.tasks):
            task.cancel()

    def _accept(self, loop: asyncio.AbstractEventLoop) -> None:
        for _ in range(SIM_ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = self.sock.accept()
            except OSError:  # BlockingIOError: nothing more to accept now
                return
            conn.setblocking(False)
            task = loop.create_task(self._serve(loop, conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _serve(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        try:
            try:
                request = await asyncio.wait_for(_sim_read(loop, conn), SIM_READ_TIMEOUT)
                if request is None:
                    return
                reply = await self.dispatch(request)
            except HTTPError as exc:
                reply = sim_reply(exc.status, b"Invalid HTTP request received.",
                                  "text/plain; charset=utf-8")
            except Exception:  # what uvicorn answers when an app raises
                reply = sim_reply(500, b"Internal Server Error", "text/plain; charset=utf-8")
            await loop.sock_sendall(conn, sim_wire(reply))
        except (asyncio.TimeoutError, OSError):
            pass
        finally:
            conn.close()


async def _sim_read(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> Optional[Request]:
    """One request from `conn`, or None when the peer closes first."""
    buf = b""
    while True:
        data = await loop.sock_recv(conn, SIM_RECV_BYTES)
        if not data:
            return None
        buf += data
        request, _ = parse_request(buf, max_body=SIM_MAX_BODY)
        if request is not None:
            return request
