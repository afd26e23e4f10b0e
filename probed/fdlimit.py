"""How many client connections the open-file limit (RLIMIT_NOFILE) leaves room for.

Every client connection is a file descriptor, and so is every backend poll, token-file read,
exec check pipe and log write. A connection cap above the limit lets a flood of clients take
the last descriptors, and the checks then fail with "Too many open files" and flip verdicts.
So at start the soft limit is raised toward the hard one (as Go's runtime does) and, if that
is not enough, the cap is lowered to leave FD_RESERVE descriptors for everything else.
"""

import resource
from typing import NamedTuple

FD_RESERVE = 128  # descriptors kept for pollers, the admin listener's 64, listeners and logs


class ConnectionCap(NamedTuple):
    """The cap a server uses, and how it came from the one asked for."""

    requested: int
    cap: int
    soft_limit: int  # RLIMIT_NOFILE after any raise (-1: unlimited)
    hard_limit: int
    reserve: int

    @property
    def lowered(self) -> bool:
        """Whether the open-file limit forced a cap below the one asked for."""
        return self.cap < self.requested


def fit_connection_cap(requested: int) -> ConnectionCap:
    """The connection cap that leaves FD_RESERVE descriptors free (half the limit when the
    limit is smaller than twice that), raising the soft limit first when the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = requested + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (OSError, ValueError):
                pass  # keep the limit we have and fit the cap to it
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return ConnectionCap(requested, requested, soft, hard, FD_RESERVE)
    reserve = min(FD_RESERVE, soft // 2)
    return ConnectionCap(requested, max(1, min(requested, soft - reserve)), soft, hard, reserve)
