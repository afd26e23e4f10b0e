"""preStop drain: `GET /wait-for-drain?timeout=DURATION` on the admin listener, and
`probed drain --wait DURATION` for an exec preStop hook.

The call fails `ready` at once (reason `draining`), then polls the `inflight` checks every
half second and returns when the backend has nothing left in flight, or when the timeout
passes: 200 either way, the body says which, how long it took and what was left. GET,
because a kubelet preStop `httpGet` can only GET. While a wait is open, a SIGTERM to probed
does not end it: the daemon keeps serving until every wait has returned.
"""

import asyncio
import sys
import time
from typing import Any, List, Sequence, Tuple

from .checks.base import Check
from .checks.inflight import InflightCheck
from .client import FetchError, fetch
from .eventlog import EventLog
from .httpproto import HTTPError, PreparedResponse, Request, build_response
from .pod import Pod
from .scheduler import Scheduler, poll_once
from .urlcodec import percent_encode
from .values import format_duration, parse_duration

DRAIN_POLL = 0.5  # seconds between in-flight readings while draining
DRAIN_DEFAULT_TIMEOUT = 60.0
DRAIN_MAX_TIMEOUT = 3600.0


class DrainWaiter:
    """Answers /wait-for-drain; `active` counts the waits still open. Its drain is the pod's
    `prestop` source: POST /undrain ends it (and every open wait, at its next reading), and so
    does a new backend incarnation."""

    def __init__(self, pod: Pod, control: Scheduler, checks: Sequence[Check],
                 log: EventLog) -> None:
        self.pod = pod
        self.control = control
        self.log = log
        self.checks: List[InflightCheck] = [c for c in checks if isinstance(c, InflightCheck)]
        self.active = 0

    def handle(self, req: Request, head: bool, mode: int) -> "asyncio.Future[PreparedResponse]":
        """Start one wait; the server sends the reply when the future completes."""
        timeout = DRAIN_DEFAULT_TIMEOUT
        for key, value in req.query_pairs():
            if key != "timeout":
                raise HTTPError(400, "unknown query parameter %r (expected timeout)" % key)
            try:
                timeout = parse_duration(value)
            except ValueError as exc:
                raise HTTPError(400, "timeout=%s: %s" % (value, exc)) from None
            if timeout > DRAIN_MAX_TIMEOUT:
                raise HTTPError(400, "timeout=%s: at most %s" % (
                    value, format_duration(DRAIN_MAX_TIMEOUT)))
        self.active += 1
        self.control.drain("prestop")
        self.log.info("draining", timeout=format_duration(timeout), inflight_checks=len(
            self.checks))
        return asyncio.ensure_future(self._reply(timeout, head, mode))

    async def _reply(self, timeout: float, head: bool, mode: int) -> PreparedResponse:
        try:
            text = await self.wait(timeout)
        finally:
            self.active -= 1
        self.log.info("drain wait returned", result=text)
        return build_response(200, (text + "\n").encode("utf-8"), head=head, mode=mode)

    async def wait(self, timeout: float) -> str:
        """Poll in-flight requests until 0 or `timeout`; the sentence the caller gets."""
        t0 = time.monotonic()
        if not self.checks:
            return ("drained at once: no inflight check configured (use --vllm, --sglang, "
                    "--tgi or --llamacpp, or add an inflight check), so nothing to wait for")
        left, note = await self.inflight()
        while left and time.monotonic() - t0 < timeout and "prestop" in self.pod.drains:
            await asyncio.sleep(min(DRAIN_POLL, max(0.0, timeout - (time.monotonic() - t0))))
            left, note = await self.inflight()
        took = format_duration(round(time.monotonic() - t0, 1))
        if left and "prestop" not in self.pod.drains:
            return "ended after %s without draining: the drain was undone (POST /undrain) or " \
                   "the backend restarted; %s" % (took, note)
        if not left:
            return "drained after %s: nothing in flight (%s)" % (took, note)
        return "timed out after %s: %s" % (took, note)

    async def inflight(self) -> Tuple[float, str]:
        """(requests in flight, how we know); a refused backend has nothing in flight, and
        an unreadable one counts as not drained."""
        total, unknown, notes = 0.0, False, []
        for check in self.checks:
            obs, _ = await poll_once(check)
            if obs.ok and obs.value is not None:
                total += obs.value
                notes.append("%s: %s" % (check.name, obs.reason))
            elif obs.refused:
                notes.append("%s: backend gone (%s)" % (check.name, obs.reason))
            else:
                unknown = True
                notes.append("%s: unknown (%s)" % (check.name, obs.reason))
        return (max(total, 1.0) if unknown else total), "; ".join(notes)


def drain_main(argv: Sequence[str], out: Any = None) -> int:
    """`probed drain --wait 120s [--admin URL]`: exit 0 once drained or timed out, 1 on an
    error reply, 2 usage, 3 admin listener unreachable."""
    import argparse  # here, not at the top: the admin listener imports this module (RSS)

    parser = argparse.ArgumentParser(
        prog="probed drain", description="preStop drain: fail ready, then wait until the "
        "server has no request in flight (GET /wait-for-drain on the admin listener).")
    parser.add_argument("--wait", default="60s", metavar="DURATION",
                        help="longest wait (default 60s)")
    parser.add_argument("--admin", default="http://127.0.0.1:9090", metavar="URL",
                        help="admin listener URL (default http://127.0.0.1:9090)")
    parser.add_argument("--token-file", metavar="FILE", help="file with the admin token")
    args = parser.parse_args(list(argv))
    out = out or sys.stdout
    try:
        wait = parse_duration(args.wait)
    except ValueError as exc:
        parser.error("--wait %s: %s" % (args.wait, exc))
    headers = {}
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                headers["Authorization"] = "Bearer " + fh.read().strip()
        except OSError as exc:
            parser.error("--token-file %s: %s" % (args.token_file, exc.strerror or exc))
    url = "%s/wait-for-drain?timeout=%s" % (args.admin.rstrip("/"), percent_encode(args.wait, ""))
    try:
        resp = asyncio.run(fetch(url, headers=headers, timeout=wait + 10.0))
    except FetchError as exc:
        print("probed drain: %s: %s" % (args.admin, exc), file=sys.stderr)
        return 3
    except ValueError as exc:
        parser.error("--admin %s: %s" % (args.admin, exc))
    print(resp.body.decode("utf-8", "replace").rstrip(), file=out)
    return 0 if resp.status == 200 else 1
