"""aiohttp peer for bench/run.py: GET /readyz -> 200 "ok\n", no access log.

Usage: VENV/bin/python aiohttp_peer.py PORT MAX_SECONDS
"""

import sys

from aiohttp import web

from lifeline import start_lifeline


async def readyz(_request: web.Request) -> web.Response:
    """The probe answer."""
    return web.Response(text="ok\n")


if __name__ == "__main__":
    start_lifeline(float(sys.argv[2]))
    app = web.Application()
    app.router.add_get("/readyz", readyz)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
