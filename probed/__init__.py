"""probed: a Kubernetes probe daemon for LLM inference servers.

The package is the source; `probed.py` at the top of the repository is generated from it by
`python3 -m probed.bundle` and is what users copy into their images.

This module comes first in that file, so it also keeps `ssl` unloaded there: asyncio imports
ssl eagerly when it can (about 4 MB of RSS), and probed needs it only for https URLs. Run as
the single file (`__name__ == "__main__"`), ssl is marked unavailable before asyncio loads;
`import_ssl()` lifts the mark when a check really uses https. Imported as a package, nothing
is blocked, so embedding programs and tests keep their ssl.
"""

import sys
from types import ModuleType

__version__ = "0.1.0"

SSL_DEFERRED = __name__ == "__main__" and "ssl" not in sys.modules
if SSL_DEFERRED:
    sys.modules["ssl"] = None  # type: ignore[assignment]


def import_ssl() -> ModuleType:
    """Import ssl for real (the https client calls this), undoing the single file's block."""
    if SSL_DEFERRED and "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]  # our own mark; a None put there by anyone else stays
    import ssl

    return ssl
