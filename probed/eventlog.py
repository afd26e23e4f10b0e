"""One-line event logs (logfmt or JSON) for state changes and start-up; never per probe.

Only transitions and lifecycle events are logged, so a healthy daemon is silent after its
start-up line. The sink is any writable text stream, written at once (tests capture it that
way), or stderr by default, written by a thread of its own: a stderr pipe nobody reads must
never stop the event loop, so lines queue (at most LOG_QUEUE_LINES), the overflow is dropped
and counted, and the count is logged once the pipe drains.
"""

import json
import queue
import sys
import threading
import time
from typing import Any, Optional, TextIO

from .values import format_timestamp, printable

LOG_FORMATS = ("text", "json")
LOG_QUEUE_LINES = 1000  # lines waiting for a stderr nobody reads; more are dropped and counted
LOG_FIELD_CHARS = 2000  # of one field's text: a backend's words never make a line huge
LOG_CLOSE_SECONDS = 1.0  # at exit, how long queued lines may take to go out


def _logfmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = "%.3f" % value
    else:
        text = printable(str(value), LOG_FIELD_CHARS)  # CR, LF, ESC never reach a terminal
    if text and not any(c in text for c in ' ="\\\t'):
        return text
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


class StderrWriter:
    """Lines to stderr from a thread: `put` never blocks; what overflows is counted."""

    def __init__(self, max_lines: int = LOG_QUEUE_LINES) -> None:
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue(max_lines)
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name="probed-log", daemon=True)
        self.thread.start()

    def put(self, line: str) -> None:
        """Queue one line; drop it (counted) when the queue is full."""
        try:
            self.lines.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            line = self.lines.get()
            if line is None:
                return
            dropped, self.dropped = self.dropped, 0
            try:
                if dropped:
                    sys.stderr.write("time=%s level=warn msg=\"log lines dropped\" count=%d "
                                     "reason=\"stderr was not read\"\n" % (
                                         format_timestamp(time.time(), millis=True), dropped))
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # a closed log pipe must never take the prober down

    def close(self, timeout: float = LOG_CLOSE_SECONDS) -> None:
        """Let queued lines go out, waiting at most `timeout`."""
        try:
            self.lines.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)


class EventLog:
    """Writes one line per event: `time=... level=... msg=... key=value ...` or a JSON object."""

    def __init__(self, fmt: str = "text", stream: Optional[TextIO] = None) -> None:
        self.fmt = fmt
        self.stream = stream
        self.writer: Optional[StderrWriter] = None  # made on the first line to stderr

    def emit(self, level: str, msg: str, **fields: Any) -> None:
        """Write one event line; fields keep their order."""
        wall = time.time()
        if self.fmt == "json":  # json.dumps escapes control characters itself
            record = {"time": format_timestamp(wall, millis=True), "level": level, "msg": msg}
            record.update((k, printable(v, LOG_FIELD_CHARS) if isinstance(v, str) else v)
                          for k, v in fields.items())
            line = json.dumps(record, default=str)
        else:
            parts = ["time=" + format_timestamp(wall, millis=True), "level=" + level,
                     "msg=" + _logfmt_value(msg)]
            parts.extend("%s=%s" % (k, _logfmt_value(v)) for k, v in fields.items())
            line = " ".join(parts)
        if self.stream is None:
            if self.writer is None:
                self.writer = StderrWriter()
            self.writer.put(line + "\n")
            return
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log pipe must never take the prober down

    def info(self, msg: str, **fields: Any) -> None:
        """An informational event."""
        self.emit("info", msg, **fields)

    def warn(self, msg: str, **fields: Any) -> None:
        """Something the operator should look at."""
        self.emit("warn", msg, **fields)

    def close(self) -> None:
        """Let queued stderr lines go out (bounded wait)."""
        if self.writer is not None:
            self.writer.close()
