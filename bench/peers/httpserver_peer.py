"""Python's http.server peer for bench/run.py: ThreadingHTTPServer (what `python3 -m
http.server` runs), every GET -> 200 "ok\n", nothing logged.

Usage: python3 httpserver_peer.py PORT MAX_SECONDS
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lifeline import start_lifeline

BODY = b"ok\n"


class ProbeHandler(BaseHTTPRequestHandler):
    """Answers every path; HTTP/1.0, so the connection closes after the reply."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *_args: object) -> None:
        pass


if __name__ == "__main__":
    start_lifeline(float(sys.argv[2]))
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), ProbeHandler).serve_forever()
