"""Reaping orphans when probed is PID 1 (the distroless image's exec-form ENTRYPOINT).

The kernel hands every orphan of the container to PID 1; a script an `exec` check runs may
leave children that outlive it (`sleep 60 &`), and as zombies they would pile up forever. Every
REAP_INTERVAL the reaper looks for zombie children in /proc and reaps those that are not an exec
check's own child (asyncio reaps those, and must find their status). Nothing runs unless probed
is PID 1.
"""

import asyncio
import os
from typing import List, Optional, Set

REAP_INTERVAL = 2.0  # seconds between looks; a zombie costs a process-table slot, not CPU
REAP_MAX_SCAN = 4096  # /proc entries looked at per round: a container has far fewer


def zombie_children(parent: int, proc: str = "/proc") -> List[int]:
    """PIDs of `parent`'s children that have exited and not been reaped."""
    found: List[int] = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for entry in entries[:REAP_MAX_SCAN]:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "stat"), "rb") as handle:
                stat = handle.read(512)
        except OSError:
            continue  # gone between listing and reading
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after it
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 2 and fields[0] == b"Z" and int(fields[1]) == parent:
            found.append(int(entry))
    return found


class OrphanReaper:
    """Reaps zombie children that no exec check owns (`owned`: PIDs asyncio is waiting for)."""

    def __init__(self, owned: Set[int]) -> None:
        self.owned = owned
        self.reaped = 0
        self._timer: Optional[asyncio.TimerHandle] = None

    def start(self) -> None:
        """Start reaping, only when this process is PID 1 (inside the running loop)."""
        if os.getpid() == 1:
            self._timer = asyncio.get_running_loop().call_later(REAP_INTERVAL, self._round)

    def stop(self) -> None:
        """Stop reaping."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _round(self) -> None:
        for pid in zombie_children(os.getpid()):
            if pid in self.owned:
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    self.reaped += 1
            except ChildProcessError:
                pass  # reaped by someone else meanwhile
        self._timer = asyncio.get_running_loop().call_later(REAP_INTERVAL, self._round)
