"""The argparse parser of `probed [serve]`, built only to print --help: the daemon parses its
flags with flags.parse_serve_args, and argparse is 0.3-1.2 MB of idle RSS it never needs. The
help text comes from the same flag table (flags.py), so --help and the parser cannot disagree.
"""

import argparse
from typing import Any

from . import __version__
from .checks import CHECK_KINDS
from .checks.http import HTTP_COMMON_PARAMS
from .checkspecs import CHECK_QUOTING
from .flags import HELP_WIDTH, SERVE_OPTIONS, show_default
from .values import ConfigError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, at a fixed width: asking the terminal's width imports shutil (with bz2 and
    lzma, about 0.6 MB), and argparse builds a formatter for every flag it adds."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=HELP_WIDTH)


class FlagParser(argparse.ArgumentParser):
    """argparse whose mistakes are one ConfigError line (exit 2), not 14 lines of usage."""

    def error(self, message: str) -> Any:
        raise ConfigError(message)


class ServeParser(FlagParser):
    """The serve parser: its epilog is written when help is shown, not when the parser is built
    (it lists every check kind's keys, which imports every kind: RSS a daemon never needs)."""

    def format_help(self) -> str:
        self.epilog = epilog()
        return super().format_help()


def epilog() -> str:
    """The --help text after the flags: check kinds and keys, quoting, environment, gRPC,
    subcommands (a one-file user has no README)."""
    import textwrap  # only --help wraps text: the daemon never pays for the module (RSS)

    lines = []
    for kind in sorted(CHECK_KINDS):
        own = [k for k in CHECK_KINDS[kind].params if k not in HTTP_COMMON_PARAMS]
        more = "" if len(own) == len(CHECK_KINDS[kind].params) else " (+ http keys)"
        lines += textwrap.wrap("%-10s %s%s" % (kind, " ".join(own), more), width=96,
                               initial_indent="  ", subsequent_indent=" " * 13,
                               break_on_hyphens=False)
    return EPILOG % (" ".join(HTTP_COMMON_PARAMS), "\n".join(lines), CHECK_QUOTING)


EPILOG = """check kinds and their keys (README.md "Checks" says what each does). Every kind also
takes name probes interval timeout fail-after pass-after stale-after start-interval; the http
keys are %s.
%s
examples:
  probed --vllm http://127.0.0.1:8000 --max-waiting 32
  probed --check "http url=http://127.0.0.1:8000/health probes=live,ready,started"
  %s
Every flag also reads PROBED_<FLAG> (e.g. PROBED_READ_TIMEOUT=5s; PROBED_CHECK holds one check
per line). Go-style -flag=value and -flag value work too (Multi Node Prober args).
The probe port also serves grpc.health.v1 (kubelet grpc probes): service liveness, readiness,
startup, or a check's name.

subcommands (each has --help):
  probed [serve]     the daemon (default)
  probed check URL   one probe for exec probes: exit 0 pass, 1 fail, 2 usage, 3 unreachable
  probed bench URL   kubelet-style probe latency: p50/p90/p99/max, probes/s
  probed drain       preStop: fail ready, wait until nothing is in flight
  probed beat NAME   a worker's heartbeat (file or admin listener)
  probed demo, probed sim   the vLLM simulator and a guided demo (package only)"""


def build_serve_parser() -> FlagParser:
    """The `probed [serve]` argument parser (defaults are applied after parsing)."""
    parser = ServeParser(
        prog="probed", description="Kubernetes probes for LLM inference servers, answered "
        "from cached verdicts.", allow_abbrev=False,
        formatter_class=HelpFormatter, argument_default=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version="probed " + __version__)
    parser.add_argument("--check", action="append", metavar='"KIND key=value ..."',
                        help="a check (repeatable); kinds below")
    parser.add_argument("--config", metavar="FILE.json", help="checks and settings as JSON")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration (secrets redacted) and exit")
    parser.add_argument("--allow-no-checks", action="store_true",
                        help="start with no check at all (every probe passes): only when meant")
    for option in SERVE_OPTIONS:
        shown = "" if option.default is None else " (default: %s)" % show_default(option.default)
        parser.add_argument(option.flag, metavar=option.metavar, help=option.help + shown)
    return parser
