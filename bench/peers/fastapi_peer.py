"""FastAPI peer for bench/run.py, served by uvicorn (httptools + uvloop when installed, which
is what `pip install "uvicorn[standard]"` gives): GET /readyz -> 200 "ok\n", no access log.

Usage: VENV/bin/python fastapi_peer.py PORT MAX_SECONDS
"""

import sys

import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from lifeline import start_lifeline

app = FastAPI()


@app.get("/readyz", response_class=PlainTextResponse)
async def readyz() -> str:
    """The probe answer."""
    return "ok\n"


if __name__ == "__main__":
    start_lifeline(float(sys.argv[2]))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
