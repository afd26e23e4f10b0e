"""Time select_series (3 vLLM series) against a full parse_samples on real vLLM /metrics bodies.

Prints medians and asserts nothing. Run from the repository root: `python3 bench/bench_expfmt.py`.
Bodies: the real vLLM 0.29 capture in ../shared/fixtures/metrics/real (51 KB, 592 lines, one
engine) and an 8-engine variant built from it by repeating every `engine="0"` sample line for
engine="0".."7", the shape a data-parallel server exposes.
"""

import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from probed.expfmt import aggregate, parse_samples, parse_selector, select_series  # noqa: E402

VLLM_BODY = ROOT.parent / "shared" / "fixtures" / "metrics" / "real" / "vllm_inferstack-real.txt"
ENGINES = 8
ROUNDS = 200  # select_series runs; the full parse runs a tenth as often
SELECTORS = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")


def widen_engines(body: bytes, engines: int) -> bytes:
    """Repeat each engine="0" sample line once per engine, keeping every family in one block."""
    out = []
    for line in body.split(b"\n"):
        copies = engines if b'engine="0"' in line and not line.startswith(b"#") else 1
        out.extend(line.replace(b'engine="0"', b'engine="%d"' % i) for i in range(copies))
    return b"\n".join(out)


def median_us(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm up: the first call compiles the line finder for this selector set
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    selectors = [parse_selector(s) for s in SELECTORS]
    base = VLLM_BODY.read_bytes()
    print("python %s" % sys.version.split()[0])
    for label, body in (("vLLM real, 1 engine", base),
                        ("vLLM, %d engines" % ENGINES, widen_engines(base, ENGINES))):
        waiting = aggregate([v for _, v in select_series(body, selectors)[0]], "sum")
        select = median_us(lambda: select_series(body, selectors), ROUNDS)
        full = median_us(lambda: list(parse_samples(body)), ROUNDS // 10)
        print("%-20s %6.1f KB %5d lines | select_series(3 series) %7.0f us | "
              "parse_samples %7.0f us | %4.1fx | sum(waiting)=%s"
              % (label, len(body) / 1024, body.count(b"\n"), select, full, full / select, waiting))


if __name__ == "__main__":
    main()
