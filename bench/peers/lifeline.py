"""Keeps a bench peer from outliving bench/run.py: exit when the parent goes or time runs out.

Imported by the Python peers in this folder; never imported by probed itself.
"""

import os
import threading
import time

CHECK_EVERY = 0.5  # seconds between looks at the parent process


def start_lifeline(max_seconds: float) -> None:
    """Exit this process (at once, no cleanup) when its parent dies or after max_seconds."""
    parent = os.getppid()
    deadline = time.monotonic() + max_seconds

    def watch() -> None:
        while time.monotonic() < deadline and os.getppid() == parent:
            time.sleep(CHECK_EVERY)
        os._exit(0)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
