"""What a hostile or broken backend sends must not freeze, bloat or mislead probed (issue 17).

Each attack is bounded: a pytest timeout turns a regression (a hang) into a failure, and the
checks are functional, never tight clocks: "the fetch failed within its deadline plus slack",
"a ticker task on the same loop kept ticking", "peak RSS stayed under a stated ceiling".
Backends are loopback threads that send exactly the bytes of the attack, as fast as they can.
"""

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from probed.checks.base import CheckResources
from probed.config import build_checks
from probed.engine import poll_once
from probed.expfmt import ExpositionError, Selector, SeriesSelector, select_series

SLACK = 2.5  # seconds a deadline may overrun on a loaded CI box (a functional bound only)

pytestmark = pytest.mark.timeout(60)


# ---- 17.1: the exposition grammar costs linear time on any input ----------------------------

@pytest.mark.timeout(20)
@pytest.mark.parametrize("lines", [20, 40, 5000])
@pytest.mark.parametrize("om", [False, True])
def test_integer_lines_then_a_bad_line_are_rejected_at_once(lines: int, om: bool) -> None:
    # Go and Rust exporters print counters as integers; one bad line after 40 of them made the
    # old whole-body pattern backtrack through every split of every number (2**40 paths).
    body = b"".join(b"metric_%d_total %d\n" % (i, 10 ** 6 + i) for i in range(lines))
    body += b"metric_x{bad 1\n" + (b"# EOF\n" if om else b"")
    with pytest.raises(ExpositionError) as info:
        select_series(body, [Selector("metric_1_total")], om)
    assert info.value.lineno == lines + 1
    selector = SeriesSelector([Selector("metric_1_total")], om)
    selector.feed(body)
    with pytest.raises(ExpositionError) as streamed:
        selector.close()
    assert streamed.value.lineno == lines + 1


@pytest.mark.timeout(20)
@pytest.mark.parametrize("line", [
    b"a " + b"1" * 200000 + b"x",  # one long number, then junk: every split was retried
    b"a 1 " + b"7" * 200000 + b"x",
    b"a " + b"1" * 100000 + b"." + b"2" * 100000 + b"e",
])
def test_long_numbers_cost_linear_time(line: bytes) -> None:
    for om in (False, True):
        with pytest.raises(ExpositionError):
            select_series(line + b"\n" + (b"# EOF\n" if om else b""), [Selector("a")], om)


# ---- 17.11: a resolver that never answers cannot starve heartbeat scans ----------------------

def test_hung_dns_fails_fast_past_its_cap_and_heartbeat_scans_go_on(tmp_path: Path,
                                                                     monkeypatch) -> None:
    from probed.blocking import BLOCKING_DNS_LOOKUPS

    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host: Any, *args: Any, **kwargs: Any) -> Any:
        numeric = kwargs.get("flags", 0) & socket.AI_NUMERICHOST  # never goes to a resolver
        if not numeric and isinstance(host, str) and host.endswith(".hang.invalid"):
            release.wait(30)  # a resolver that never answers (until the test ends)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    (tmp_path / "w0").touch()
    resources = CheckResources()  # what the daemon makes once and hands every check
    raws = [{"kind": "http", "name": "h%d" % i, "url": "http://b%d.hang.invalid:1/" % i,
             "timeout": "300ms"} for i in range(12)]
    raws.append({"kind": "heartbeat", "name": "workers", "path": str(tmp_path),
                 "timeout": "1s"})
    checks = build_checks(raws, ["test"] * len(raws), resources)

    async def run() -> Tuple[List[Any], Any, float]:
        first = await asyncio.gather(*(poll_once(c) for c in checks[:-1]))
        started = time.monotonic()
        extra = await poll_once(checks[0])  # every lookup slot is still held by a hung one
        fast = time.monotonic() - started
        beat = await poll_once(checks[-1])
        return [o for o, _ in first], (extra[0], beat[0]), fast

    try:
        first, (extra, beat), fast = asyncio.run(run())
    finally:
        release.set()
    reasons = [o.reason for o in first]
    assert sum("timed out" in r for r in reasons) == BLOCKING_DNS_LOOKUPS, reasons
    assert sum("lookups are already waiting" in r for r in reasons) == 12 - BLOCKING_DNS_LOOKUPS
    assert "lookups are already waiting for the resolver" in extra.reason and fast < 0.3 + SLACK
    assert beat.ok and beat.value == 1.0, beat  # the scan ran on its own threads
