"""`probed check URL`: one HTTP GET whose exit code is the verdict, for exec probes and humans.

Exit 0 when the status is below 400, 1 when it is 400 or more, 2 for a usage error, 3 when no
HTTP response came within --timeout (refused, reset, timed out, TLS or protocol failure).
It uses the daemon's own client (one deadline over the whole request, https through ssl), so
what it reports is what a poller would see. Must never: retry, follow a redirect, or print
request headers (they may carry a bearer token).
"""

import argparse
import asyncio
import os
import sys
from typing import Dict, Sequence

from .client import FetchError, Response, TLSOptions, fetch
from .values import parse_duration

CHECK_EXIT_PASS, CHECK_EXIT_FAIL, CHECK_EXIT_USAGE, CHECK_EXIT_UNREACHABLE = 0, 1, 2, 3
CHECK_DEFAULT_TIMEOUT = 1.0  # seconds; the kubelet's default probe timeout
CHECK_MAX_BODY = 16 << 20  # larger bodies are refused rather than held in memory
CHECK_FAIL_STATUS = 400  # this status and above fail


def _timeout_arg(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("%s (e.g. 1s, 500ms, 2.5)" % exc) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("expected a duration above 0, got %r" % text)
    return value


def build_check_parser() -> argparse.ArgumentParser:
    """The `probed check` argument parser."""
    parser = argparse.ArgumentParser(
        prog="probed check", description="GET a URL once; the exit code is the verdict: "
        "0 pass (status < 400), 1 fail (status >= 400), 2 usage error, 3 unreachable or "
        "timed out.")
    parser.add_argument("url", help="http:// or https:// URL, e.g. "
                                    "http://127.0.0.1:8080/readyz")
    parser.add_argument("--timeout", type=_timeout_arg, default=CHECK_DEFAULT_TIMEOUT,
                        metavar="DURATION", help="deadline for the whole request (default 1s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the body too")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="extra request header (repeatable)")
    parser.add_argument("-k", "--insecure", action="store_true",
                        help="https: do not verify the server certificate")
    parser.add_argument("--ca-file", metavar="PEM", help="https: trust this CA bundle")
    return parser


def _header_args(parser: argparse.ArgumentParser, items: Sequence[str]) -> Dict[str, str]:
    headers: Dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            parser.error("-H %r: expected 'Name: value'" % item)
        headers[name.strip()] = value.strip()
    return headers


def print_check_result(response: Response, verbose: bool) -> None:
    """`STATUS REASON` on stdout, then the body when verbose."""
    print(("%d %s" % (response.status, response.reason)).rstrip())
    if verbose and response.body:
        sys.stdout.flush()
        out = getattr(sys.stdout, "buffer", None)
        if out is not None:
            out.write(response.body)
            if not response.body.endswith(b"\n"):
                out.write(b"\n")
            out.flush()
        else:  # a text-only stream (tests capturing stdout)
            text = response.body.decode("utf-8", "replace")
            print(text, end="" if text.endswith("\n") else "\n")


def check_main(argv: Sequence[str]) -> int:
    """Command line of `probed check`; returns the exit code (argparse exits 2 on bad usage)."""
    parser = build_check_parser()
    args = parser.parse_args(list(argv))
    headers = _header_args(parser, args.header)
    if args.ca_file and not os.path.isfile(args.ca_file):
        parser.error("--ca-file %s: no such file" % args.ca_file)
    tls = TLSOptions(args.ca_file, args.insecure) if args.ca_file or args.insecure else None
    try:
        response = asyncio.run(fetch(args.url, headers=headers, timeout=args.timeout,
                                     max_body=CHECK_MAX_BODY, tls=tls))
    except ValueError as exc:  # a bad URL or header: the caller's mistake
        print("probed check: error: %s: %s" % (args.url, exc), file=sys.stderr)
        return CHECK_EXIT_USAGE
    except FetchError as exc:
        print("probed check: %s: %s" % (args.url, exc), file=sys.stderr)
        return CHECK_EXIT_UNREACHABLE
    except OSError as exc:  # anything the client did not map; still no response
        print("probed check: %s: %s" % (args.url, exc.strerror or exc), file=sys.stderr)
        return CHECK_EXIT_UNREACHABLE
    print_check_result(response, args.verbose)
    return CHECK_EXIT_FAIL if response.status >= CHECK_FAIL_STATUS else CHECK_EXIT_PASS

