"""probed: a Kubernetes probe daemon for LLM inference servers.

The package is the source; `probed.py` at the top of the repository is generated from it by
`python3 -m probed.bundle` and is what users copy into their images.

It also keeps `ssl` unloaded in that file: asyncio imports ssl eagerly when it can (about 4 MB of
RSS), and probed needs it only for https URLs. probed.py's loader (probed/singlefile.py) marks
ssl unavailable before asyncio loads and says so as `ssl_deferred`; `import_ssl()` lifts the mark
when a check really uses https. Imported as a package, nothing is blocked, so embedding programs
and tests keep their ssl.
"""

import sys
from types import ModuleType

__version__ = "0.1.0"

SSL_DEFERRED = bool(getattr(getattr(__spec__, "loader", None), "ssl_deferred", False))


def import_ssl() -> ModuleType:
    """Import ssl for real (the https client calls this), undoing the single file's block."""
    if SSL_DEFERRED and "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]  # the loader's mark; a None put there by anyone else stays
    import ssl

    return ssl
