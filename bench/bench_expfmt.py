"""Exposition parsing cost: select time and peak memory per MB, 50 KB to 16 MB bodies.

Prints medians and asserts nothing. Run from the repository root: `python3 bench/bench_expfmt.py`
(`--quick` for fewer rounds). Bodies: the real vLLM 0.29 capture (tests/fixtures/metrics/real,
51 KB, 592 lines, one engine), and vLLM-shaped bodies scaled up from it by repeating every
`engine="0"` sample line for engine="0".."N-1" (the shape a data-parallel server exposes), N
chosen for about 256 KB, 1 MB, 4 MB and 16 MB. Two selections of each: "selected" reads the
preset's three series (their families grow with N), "unselected" names series the body lacks
(every line is still validated). Two ways of reading: "streamed" feeds a SeriesSelector 64 KiB
at a time as the scrape path does (its peak is what a scrape costs: the body is never held);
"whole" is select_series on the body in memory. Peak memory is tracemalloc's peak above what was
allocated before (the body itself excluded), in a separate run from the timings.
"""

import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable, List, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from probed.expfmt import (Selector, SeriesSelector, aggregate, parse_samples,  # noqa: E402
                           parse_selector, select_series)

VLLM_BODY = ROOT / "tests" / "fixtures" / "metrics" / "real" / "vllm_inferstack-real.txt"
SELECTED = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")
UNSELECTED = ("vllm:not_in_the_body", "other_metric_total")
TARGETS = (256 << 10, 1 << 20, 4 << 20, 16 << 20)  # scaled-up body sizes (bytes, about)
PIECE = 64 << 10  # what one socket read hands the selector on the scrape path
ROUNDS_51KB = 200


def widen_engines(body: bytes, engines: int) -> bytes:
    """Repeat each engine="0" sample line once per engine, keeping every family in one block."""
    out = []
    for line in body.split(b"\n"):
        copies = engines if b'engine="0"' in line and not line.startswith(b"#") else 1
        out.extend(line.replace(b'engine="0"', b'engine="%d"' % i) for i in range(copies))
    return b"\n".join(out)


def streamed(body: bytes, selectors: Sequence[Selector]) -> List[list]:
    """Select as a scrape does: the body in PIECE-sized reads, then close()."""
    selector = SeriesSelector(selectors, False)
    view = memoryview(body)
    for start in range(0, len(body), PIECE):
        selector.feed(view[start:start + PIECE])
    return selector.close()


def median_s(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm up: the first call compiles the line finder for this selector set
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def main() -> None:
    quick = "--quick" in sys.argv
    base = VLLM_BODY.read_bytes()
    per_engine = len(widen_engines(base, 2)) - len(base)
    bodies = [("vLLM real, 1 engine", base)] + [
        ("vLLM-shaped, %d engines" % n, widen_engines(base, n))
        for n in (max(2, round((t - len(base)) / per_engine) + 1) for t in TARGETS)]
    selected = [parse_selector(s) for s in SELECTED]
    unselected = [parse_selector(s) for s in UNSELECTED]

    waiting = aggregate([v for _, v in select_series(base, selected)[0]], "sum")
    select_us = median_s(lambda: select_series(base, selected), ROUNDS_51KB) * 1e6
    stream_us = median_s(lambda: streamed(base, selected), ROUNDS_51KB) * 1e6
    undecided_us = median_s(lambda: _undecided(base, selected), ROUNDS_51KB) * 1e6
    full_us = median_s(lambda: list(parse_samples(base)), ROUNDS_51KB // 10) * 1e6
    print("python %s" % sys.version.split()[0])
    print("real vLLM body, %.1f KB, %d lines, preset's 3 series (sum(waiting)=%s):"
          % (len(base) / 1024, base.count(b"\n"), waiting))
    print("  select_series (whole body) %6.0f us | streamed, text declared %6.0f us | "
          "streamed, format undecided %6.0f us | full parse_samples %6.0f us"
          % (select_us, stream_us, undecided_us, full_us))
    print()
    print("%-26s %9s %7s | %-10s | %9s %9s | %11s %9s | %13s"
          % ("body", "size", "lines", "selection", "streamed", "per MB", "stream peak",
             "per MB", "whole peak/MB"))
    for label, body in bodies:
        mb = len(body) / 1e6
        rounds = 3 if len(body) > 4e6 or quick else 9
        for name, sels in (("selected", selected), ("unselected", unselected)):
            took = median_s(lambda: streamed(body, sels), rounds)
            peak_stream = peak_bytes(lambda: streamed(body, sels))
            peak_whole = peak_bytes(lambda: select_series(body, sels, False))
            print("%-26s %6.2f MB %7d | %-10s | %6.1f ms %6.2f ms | %8.0f KB %6.0f KB | %10.0f KB"
                  % (label, mb, body.count(b"\n"), name, took * 1e3, took * 1e3 / mb,
                     peak_stream / 1024, peak_stream / 1024 / mb, peak_whole / 1024 / mb))


def _undecided(body: bytes, selectors: Sequence[Selector]) -> List[list]:
    """As streamed(), with no Content-Type to say the format (both grammars read until one
    fails or the last line decides)."""
    selector = SeriesSelector(selectors, None)
    selector.feed(body)
    return selector.close()


if __name__ == "__main__":
    main()
