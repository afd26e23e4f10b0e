"""Check kind `tcp`: passes when a TCP connection to `addr` opens within the timeout."""

import asyncio
from typing import Any

from ..values import parse_host_port
from .base import Check, Observation, Param


def parse_tcp_addr(text: str) -> Any:
    """`host:port` or `[v6]:port` with a host (unlike --addr, the host is required here)."""
    host, port = parse_host_port(text)
    if not host or not port:
        raise ValueError("expected host:port")
    return (host, port)


async def tcp_connect(host: str, port: int) -> None:
    """Open and close one connection; raises OSError on failure."""
    _reader, writer = await asyncio.open_connection(host, port)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


class TCPCheck(Check):
    """Connect succeeds: the port is open (all a tcpSocket probe would learn)."""

    kind = "tcp"
    params = {"addr": Param(parse_tcp_addr, required=True, help="host:port to connect to")}

    def target(self) -> str:
        host, port = self.config["addr"]
        return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)

    async def observe(self) -> Observation:
        host, port = self.config["addr"]
        try:
            await tcp_connect(host, port)
        except ConnectionRefusedError:  # loading, or after a pass a restart, as for http
            return Observation(False, "connection refused", refused=True)
        except OSError as exc:
            return Observation(False, "connect failed: %s" % (exc.strerror or exc))
        return Observation(True, "connected")
