"""Listening sockets: bind one with an error that names the flag, and back off when out of fds.

Kept apart from the server so the server holds only the connection logic; the daemon, the
admin listener and the gated ports all bind through `bind_listener`.
"""

import asyncio
import errno
import socket
from typing import Any, Callable, Dict, Optional

from .values import ConfigError

ACCEPT_PAUSE = 0.1  # seconds a listener is not watched after accept ran out of descriptors


def bind_listener(host: str, port: int, flag: str) -> socket.socket:
    """A non-blocking listening socket; an empty host means dual-stack all interfaces."""
    where = "%s %s" % (flag, ("[%s]:%d" if ":" in host else "%s:%d") % (host, port))
    families = [socket.AF_INET6, socket.AF_INET] if not host else [
        socket.AF_INET6 if ":" in host else socket.AF_INET]
    last: Optional[OSError] = None
    for family in families:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and not host:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                break
    assert last is not None
    if last.errno == errno.EADDRINUSE:
        raise ConfigError("%s: port %d is already in use" % (where, port))
    if last.errno == errno.EACCES:
        raise ConfigError("%s: permission denied (ports below 1024 need privileges)" % where)
    raise ConfigError("%s: cannot listen: %s" % (where, last.strerror or last))


def pause_accepting(loop: asyncio.AbstractEventLoop, lsock: socket.socket, exc: OSError,
                    listeners: Dict[int, socket.socket],
                    on_accept: Callable[[socket.socket], Any]) -> None:
    """Out of file descriptors (or kernel memory): stop watching the listener for
    ACCEPT_PAUSE rather than spin on it; it is watched again if it is still listening."""
    if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
        return
    fd = lsock.fileno()
    loop.remove_reader(fd)

    def resume() -> None:
        if listeners.get(fd) is lsock:
            loop.add_reader(fd, on_accept, lsock)

    loop.call_later(ACCEPT_PAUSE, resume)
