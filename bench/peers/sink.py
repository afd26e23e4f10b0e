"""Backends for probed's checks in bench/run.py, one listening socket on loopback.

--mode close: accepts and closes at once (target of a passing `tcp` check).
--mode hang:  accepts, reads and drops input, never answers (target of an `http` check that
              must time out); holds at most MAX_HELD connections, closes each when its client does.

Usage: python3 sink.py PORT MODE MAX_SECONDS
"""

import selectors
import socket
import sys
import time

from lifeline import start_lifeline

MAX_HELD = 256
TICK = 0.5


def serve(port: int, mode: str, max_seconds: float) -> None:
    """Run until max_seconds pass (the lifeline also ends it when the parent goes)."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(128)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    held = []
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(TICK):
            if key.fileobj is lsock:
                conn, _ = lsock.accept()
                if mode == "close" or len(held) >= MAX_HELD:
                    conn.close()
                    continue
                conn.setblocking(False)
                held.append(conn)
                sel.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn)
                held.remove(conn)
                conn.close()


if __name__ == "__main__":
    start_lifeline(float(sys.argv[3]))
    serve(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))
