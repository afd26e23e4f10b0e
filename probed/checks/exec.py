"""Check kind `exec`: runs a command; exit 0 within the timeout passes.

For legacy probe scripts (an `/ask` liveness.py). No shell unless the command names one. The
command runs in its own process group, and the whole group is killed when the deadline ends
the poll, so a script's children cannot pile up.
"""

import asyncio
import os
import shlex
import signal
from typing import Any, List

from .base import Check, Observation, Param, register_check

EXEC_OUTPUT_CAP = 64 * 1024  # bytes of output kept; the rest is read and dropped


def parse_command(text: str) -> List[str]:
    """Split a command line the way a POSIX shell would, without running a shell."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError("expected a command line: %s" % exc) from None
    if not argv:
        raise ValueError("expected a command")
    return argv


async def _read_capped(stream: Any) -> bytes:
    kept = b""
    while True:
        chunk = await stream.read(8192)
        if not chunk:
            return kept
        if len(kept) < EXEC_OUTPUT_CAP:
            kept += chunk[:EXEC_OUTPUT_CAP - len(kept)]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@register_check
class ExecCheck(Check):
    """Exit status 0 passes; the last line of output explains a failure."""

    kind = "exec"
    params = {"cmd": Param(parse_command, required=True, help="command line (no shell)")}

    def target(self) -> str:
        return " ".join(shlex.quote(a) for a in self.config["cmd"])

    async def observe(self) -> Observation:
        argv = self.config["cmd"]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return Observation(False, "cannot run %s: %s" % (argv[0], exc.strerror or exc))
        try:
            output = await _read_capped(proc.stdout)
            code = await proc.wait()
        except asyncio.CancelledError:
            _kill_group(proc.pid)  # the deadline ended the poll: take the children too
            raise
        _kill_group(proc.pid)  # leftovers of a script that exited but left children behind
        lines = output.decode("utf-8", "replace").strip().splitlines()
        last = lines[-1][:200] if lines else ""
        if code == 0:
            return Observation(True, last or "exit 0", 0.0)
        return Observation(False, "exit %d%s" % (code, (": " + last) if last else ""), float(code))
