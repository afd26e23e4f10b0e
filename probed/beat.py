"""`probed beat NAME`: one worker heartbeat, for shell and non-Python workers.

`--dir DIR` touches DIR/NAME (its mtime is the beat); `--admin URL` POSTs /heartbeat/NAME to the
admin listener; `--remove` takes a worker that stops on purpose out. Exit 0 done, 1 failed,
2 usage. Must never: retry, write anything into the file, print the token.
"""

import argparse
import asyncio
import os
import sys
from typing import Dict, Optional, Sequence

from .beatregistry import parse_beat_name
from .client import FetchError
from .pushbeat import push_beat
from .values import parse_duration

BEAT_EXIT_OK, BEAT_EXIT_FAILED, BEAT_EXIT_USAGE = 0, 1, 2
BEAT_DEFAULT_TIMEOUT = 2.0
BEAT_ENV_DIR = "PROBED_BEAT_DIR"
BEAT_ENV_ADMIN = "PROBED_BEAT_ADMIN"
BEAT_ENV_TOKEN_FILE = "PROBED_ADMIN_TOKEN_FILE"  # the same variable the daemon reads


def _name_arg(text: str) -> str:
    try:
        return parse_beat_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("%r: %s" % (text, exc)) from None


def _timeout_arg(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("expected a duration above 0, got %r" % text)
    return value


def admin_base_url(text: str) -> str:
    """`http://host:9090`, `host:9090` or `:9090` (loopback) -> a base URL without a slash."""
    value = text.strip().rstrip("/")
    if "://" not in value:
        value = "http://" + ("127.0.0.1" + value if value.startswith(":") else value)
    return value


def build_beat_parser() -> argparse.ArgumentParser:
    """The `probed beat` argument parser."""
    parser = argparse.ArgumentParser(
        prog="probed beat", description="Send one worker heartbeat: touch DIR/NAME, or POST "
        "/heartbeat/NAME to probed's admin listener. Exit 0 done, 1 failed, 2 usage error.")
    parser.add_argument("name", type=_name_arg, help="worker name: letters, digits, . _ -")
    parser.add_argument("--dir", help="touch DIR/NAME (env %s)" % BEAT_ENV_DIR)
    parser.add_argument("--admin", metavar="URL", help="POST to the admin listener, e.g. :9090 "
                        "or http://127.0.0.1:9090 (env %s)" % BEAT_ENV_ADMIN)
    parser.add_argument("--admin-token-file", metavar="FILE",
                        help="Bearer token for the admin listener (env %s)" % BEAT_ENV_TOKEN_FILE)
    parser.add_argument("--timeout", type=_timeout_arg, default=BEAT_DEFAULT_TIMEOUT,
                        metavar="DURATION", help="deadline of an admin call (default 2s)")
    parser.add_argument("--remove", action="store_true",
                        help="the worker leaves: delete its file, or DELETE its name")
    return parser


def touch_beat(directory: str, name: str, remove: bool = False) -> None:
    """Set DIR/NAME's mtime to now (creating it), or delete it; OSError on failure."""
    if not os.path.isdir(directory):
        raise OSError("%s: no such directory (is the shared volume mounted?)" % directory)
    path = os.path.join(directory, name)
    if remove:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass  # already gone: the outcome the caller wants
        return
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
    os.utime(path, None)


def beat_main(argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> int:
    """Command line of `probed beat`; returns the exit code (argparse exits 2 on bad usage)."""
    environ = dict(os.environ) if env is None else env
    parser = build_beat_parser()
    args = parser.parse_args(list(argv))
    directory = args.dir or ("" if args.admin else environ.get(BEAT_ENV_DIR, ""))
    admin = args.admin or ("" if args.dir else environ.get(BEAT_ENV_ADMIN, ""))
    if bool(directory) == bool(admin):
        print("probed beat: error: give exactly one of --dir DIR (env %s) or --admin URL "
              "(env %s)" % (BEAT_ENV_DIR, BEAT_ENV_ADMIN), file=sys.stderr)
        return BEAT_EXIT_USAGE
    try:
        if directory:
            touch_beat(directory, args.name, args.remove)
        else:
            token_file = args.admin_token_file or environ.get(BEAT_ENV_TOKEN_FILE)
            asyncio.run(push_beat(admin_base_url(admin), args.name, token_file, args.timeout,
                                  args.remove))
    except ValueError as exc:  # a malformed --admin URL
        print("probed beat: error: %s" % exc, file=sys.stderr)
        return BEAT_EXIT_USAGE
    except (OSError, FetchError, RuntimeError) as exc:
        print("probed beat: %s" % exc, file=sys.stderr)
        return BEAT_EXIT_FAILED
    return BEAT_EXIT_OK
