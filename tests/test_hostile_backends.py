"""What a hostile or broken backend sends must not freeze, bloat or mislead probed (issue 17).

Each attack is bounded: a pytest timeout turns a regression (a hang) into a failure, and the
checks are functional, never tight clocks: "the fetch failed within its deadline plus slack",
"a ticker task on the same loop kept ticking", "peak RSS stayed under a stated ceiling".
Backends are loopback threads that send exactly the bytes of the attack, as fast as they can.
"""

import pytest

from probed.expfmt import ExpositionError, Selector, SeriesSelector, select_series

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
