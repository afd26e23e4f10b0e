"""One-line event logs (logfmt or JSON) for state changes and start-up; never per probe.

Only transitions and lifecycle events are logged, so a healthy daemon is silent after its
start-up line. The sink is any writable text stream (stderr by default) so tests capture it.
"""

import json
import sys
import time
from typing import Any, Optional, TextIO

from .values import format_timestamp

LOG_FORMATS = ("text", "json")


def _logfmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = "%.3f" % value
    else:
        text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t') :
        return text
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class EventLog:
    """Writes one line per event: `time=... level=... msg=... key=value ...` or a JSON object."""

    def __init__(self, fmt: str = "text", stream: Optional[TextIO] = None) -> None:
        self.fmt = fmt
        self.stream = stream

    def emit(self, level: str, msg: str, **fields: Any) -> None:
        """Write one event line; fields keep their order."""
        stream = self.stream or sys.stderr
        wall = time.time()
        if self.fmt == "json":
            record = {"time": format_timestamp(wall, millis=True), "level": level, "msg": msg}
            record.update(fields)
            line = json.dumps(record, default=str)
        else:
            parts = ["time=" + format_timestamp(wall, millis=True), "level=" + level, "msg=" + _logfmt_value(msg)]
            parts.extend("%s=%s" % (k, _logfmt_value(v)) for k, v in fields.items())
            line = " ".join(parts)
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log pipe must never take the prober down

    def info(self, msg: str, **fields: Any) -> None:
        """An informational event."""
        self.emit("info", msg, **fields)

    def warn(self, msg: str, **fields: Any) -> None:
        """Something the operator should look at."""
        self.emit("warn", msg, **fields)
