"""Replays captured real-server replies (tests/fixtures/real-servers) on a loopback port, with
their captured status and headers, so fast tests see exactly what the real server sent.

A capture is NAME (the body) plus, where kept, a `.headers` file beside it: first line
`HTTP <status>`, then `name: value` lines. Routes map a path to a capture and can be switched
while the server runs (a server that changes state between two polls). Loopback only.
"""

import http.server
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real-servers"
Reply = Tuple[int, List[Tuple[str, str]], bytes]
SKIPPED_HEADERS = ("content-length", "connection", "date", "keep-alive", "transfer-encoding")


def captured(name: str, status: int = 200) -> Reply:
    """The capture `name` (relative to CAPTURES): its status, headers and body."""
    body = (CAPTURES / name).read_bytes()
    headers: List[Tuple[str, str]] = []
    for candidate in (CAPTURES / (name + ".headers"),
                      CAPTURES / (name.rsplit(".", 1)[0] + ".headers")):
        if candidate.is_file():
            lines = candidate.read_text().splitlines()
            if lines and lines[0].startswith("HTTP "):
                status = int(lines[0].split()[1])
                lines = lines[1:]
            for line in lines:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() not in SKIPPED_HEADERS:
                    headers.append((key.strip(), value.strip()))
            break
    return status, headers, body


class Replay:
    """A loopback HTTP server answering each routed path with its capture (404 otherwise)."""

    def __init__(self, routes: Optional[Dict[str, Reply]] = None) -> None:
        self.routes: Dict[str, Reply] = dict(routes or {})
        self.seen: List[Tuple[str, Optional[str]]] = []  # (path, Authorization header)
        replay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                replay.seen.append((path, self.headers.get("Authorization")))
                status, headers, body = replay.routes.get(path, (404, [], b'{"detail":"Not Found"}'))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Replay":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
