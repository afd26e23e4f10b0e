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

from .base import Check, Observation, Param

EXEC_OUTPUT_CAP = 64 * 1024  # bytes of output kept; the rest is read and dropped
EXEC_REAP_SECONDS = 1.0  # how long to wait for output and exit after the group is killed


def parse_command(text: str) -> List[str]:
    """Split a command line the way a POSIX shell would, without running a shell."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError("expected a command line: %s" % exc) from None
    if not argv:
        raise ValueError("expected a command")
    return argv


class ExecOutput:
    """Collects a child's output from our own pipe, capped; EOF sets `done`.

    asyncio's own pipes are not used: since Python 3.12 `Process.wait()` also waits for them
    to close, so a script that exits but leaves a child holding stdout would never finish.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.kept = b""
        self.done = asyncio.Event()
        loop.add_reader(self.read_fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self.read_fd, 8192)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.done.set()
            self.loop.remove_reader(self.read_fd)
        elif len(self.kept) < EXEC_OUTPUT_CAP:
            self.kept += chunk[:EXEC_OUTPUT_CAP - len(self.kept)]

    def close(self) -> None:
        """Stop reading and close both ends (idempotent)."""
        self.loop.remove_reader(self.read_fd)
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1

    def close_write_end(self) -> None:
        """The child has its copy; ours must go so EOF can come."""
        os.close(self.write_fd)
        self.write_fd = -1


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ExecCheck(Check):
    """Exit status 0 passes; the last line of output explains a failure."""

    kind = "exec"
    params = {"cmd": Param(parse_command, required=True, help="command line (no shell)")}

    def target(self) -> str:
        return " ".join(shlex.quote(a) for a in self.config["cmd"])

    async def observe(self) -> Observation:
        argv = self.config["cmd"]
        output = ExecOutput(asyncio.get_running_loop())
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=output.write_fd,
                    stderr=output.write_fd, start_new_session=True)
            except OSError as exc:
                return Observation(False, "cannot run %s: %s" % (argv[0], exc.strerror or exc))
            output.close_write_end()
            self.resources.children.add(proc.pid)
            try:
                code = await self.wait(proc)
            finally:
                self.resources.children.discard(proc.pid)
            try:  # children killed, the pipe ends soon; do not wait on it forever
                await asyncio.wait_for(output.done.wait(), EXEC_REAP_SECONDS)
            except asyncio.TimeoutError:
                pass
            lines = output.kept.decode("utf-8", "replace").strip().splitlines()
        finally:
            output.close()
        last = lines[-1][:200] if lines else ""
        if code == 0:
            return Observation(True, last or "exit 0", 0.0)
        return Observation(False, "exit %d%s" % (code, (": " + last) if last else ""), float(code))

    async def wait(self, proc: Any) -> int:
        """The exit status; the process group is killed afterwards, or when the poll's
        deadline cancels the wait (then the child is reaped before the cancel goes on)."""
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            try:
                await asyncio.wait_for(proc.wait(), EXEC_REAP_SECONDS)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            raise
        _kill_group(proc.pid)  # children left behind (`sleep 60 &`) go with their script
        return code
