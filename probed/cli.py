"""Command line entry point: `probed [serve]` and the subcommands.

Settings are resolved in settings.py; a ConfigError anywhere ends here as one line on stderr
and exit code 2, before anything listens.
"""

import asyncio
import json
import os
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from . import __version__
from .checks.base import CheckResources
from .checkspecs import build_checks
from .daemon import Daemon
from .eventlog import EventLog
from .flags import parse_serve_args
from .settings import describe_settings, resolve_settings
from .values import ConfigError


def serve(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """`probed [serve] ...`: validate everything, then run the daemon."""
    ns = parse_serve_args(argv)
    if getattr(ns, "help", False):
        from .flaghelp import build_serve_parser  # only --help pays for argparse (RSS)

        build_serve_parser().print_help()
        return 0
    if getattr(ns, "version", False):
        print("probed " + __version__)
        return 0
    settings, raws = resolve_settings(ns, env)
    resources = CheckResources()
    checks = build_checks([r for r, _ in raws], [o for _, o in raws], resources)
    if getattr(ns, "print_config", False):
        print(json.dumps(describe_settings(settings, checks), indent=2))
        return 0
    log = EventLog(settings.log_format)
    try:
        return asyncio.run(Daemon(settings, checks, log, resources).run())
    finally:
        log.close()


# Each subcommand imports its module when it runs, not at the top of this one: the daemon
# (`probed [serve]`) would otherwise carry their code, about 0.2 MB of RSS, for nothing.
def bench_command(args: List[str]) -> int:
    """`probed bench URL`: probe latency the way the kubelet sees it."""
    from .probebench import bench_main  # only this subcommand needs it (RSS)

    return bench_main(args)


def check_command(args: List[str]) -> int:
    """`probed check URL`: one HTTP GET whose exit code is the verdict."""
    from .checkcmd import check_main  # only this subcommand needs it (RSS)

    return check_main(args)


def beat_command(args: List[str]) -> int:
    """`probed beat NAME`: one worker heartbeat, for shell and non-Python workers."""
    from .beat import beat_main  # only this subcommand needs it (RSS)

    return beat_main(args)


def drain_command(args: List[str]) -> int:
    """`probed drain`: the preStop drain against the admin listener."""
    from .drain import drain_main  # the daemon loads drain.py too, but not through here (RSS)

    return drain_main(args)


SUBCOMMANDS: Dict[str, Callable[[List[str]], int]] = {
    "serve": lambda args: 0,  # handled in main(): it needs the environment
    "bench": bench_command,
    "check": check_command,
    "beat": beat_command,
    "drain": drain_command,
}


PACKAGE_ONLY = ("demo", "sim")  # registered by __main__.py: not in the single file


def main(argv: Optional[Sequence[str]] = None,
         subcommands: Optional[Mapping[str, Callable[[List[str]], int]]] = None) -> int:
    """Entry point of `probed`, `python -m probed` and `python3 probed.py`; `subcommands`
    replaces the table (the package adds its own: demo, sim)."""
    table = SUBCOMMANDS if subcommands is None else subcommands
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in PACKAGE_ONLY and args[0] not in table:
        print("probed: %s runs from the package, not the single file: python3 -m probed %s "
              "(in a checkout of probed)" % (args[0], args[0]), file=sys.stderr)
        return 2
    command = args[0] if args and args[0] in table else "serve"
    if args and args[0] in table:
        args = args[1:]
    try:
        if command == "serve":
            return serve(args, os.environ)
        return table[command](args)
    except ConfigError as exc:
        print("probed: error: %s" % exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
