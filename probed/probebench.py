"""`probed bench URL`: probe latency the way the kubelet sees it.

Every probe is a new TCP connection (the kubelet disables keep-alive) carrying the kubelet's
headers, timed from connect to the end of the reply; `--mode tcp` times a bare connect as a
`tcpSocket` probe does. Blocking sockets in threads keep the client simple and its own cost
constant across the servers being compared; results are percentiles, never a verdict.
"""

import argparse
import collections
import json
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .client import split_url

KUBELET_USER_AGENT = "kube-probe/1.31"
BENCH_RECV = 65536


def kubelet_request(host: str, port: int, path: str) -> bytes:
    """The request bytes a kubelet httpGet probe sends."""
    hostport = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    return ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nAccept: */*\r\n"
            "Connection: close\r\n\r\n" % (path, hostport, KUBELET_USER_AGENT)).encode("ascii")


def probe_once(addr: Tuple[str, int], request: Optional[bytes], timeout: float) -> Tuple[float, int]:
    """One probe on a new connection: (seconds, HTTP status or 0 for a bare TCP probe)."""
    t0 = time.perf_counter()
    with socket.create_connection(addr, timeout=timeout) as sock:
        if request is None:
            return time.perf_counter() - t0, 0
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(BENCH_RECV)
            if not data:
                break
            chunks.append(data)
    elapsed = time.perf_counter() - t0
    head = b"".join(chunks)[:16]
    if not head.startswith(b"HTTP/1."):
        raise OSError("no HTTP status line in the reply")
    return elapsed, int(head[9:12])


def percentile(sorted_values: Sequence[float], q: float) -> Optional[float]:
    """Nearest-rank percentile of an ascending list (q in 0..100); None for no values."""
    if not sorted_values:
        return None
    rank = max(1, int(round(q / 100.0 * len(sorted_values) + 0.4999)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def run_bench(url: str, n: int = 2000, concurrency: int = 1, mode: str = "http",
              warmup: int = 100, timeout: float = 2.0) -> Dict[str, Any]:
    """Send `warmup` then `n` probes from `concurrency` threads; summarize the latencies."""
    _scheme, host, port, path = split_url(url)
    request = kubelet_request(host, port, path) if mode == "http" else None
    addr = (host, port)
    for _ in range(warmup):
        try:
            probe_once(addr, request, timeout)
        except OSError:
            pass
    shares = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    results: List[Tuple[List[float], "collections.Counter[int]", int]] = []
    first_error: List[str] = []

    def worker(count: int) -> None:
        mine: List[float] = []
        seen: "collections.Counter[int]" = collections.Counter()
        failed = 0
        for _ in range(count):
            try:
                elapsed, status = probe_once(addr, request, timeout)
            except OSError as exc:
                failed += 1
                if not first_error:
                    first_error.append(exc.strerror or str(exc) or type(exc).__name__)
                continue
            mine.append(elapsed)
            seen[status] += 1
        results.append((mine, seen, failed))  # merged after the timed part: no lock in it

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    latencies = [elapsed for mine, _, _ in results for elapsed in mine]
    statuses = sum((seen for _, seen, _ in results), collections.Counter())
    errors = sum(failed for _, _, failed in results)
    result = summarize(url, mode, concurrency, latencies, statuses, errors, wall)
    result["first_error"] = first_error[0] if first_error else None
    return result


def summarize(url: str, mode: str, concurrency: int, latencies: List[float],
              statuses: Dict[int, int], errors: int, wall: float) -> Dict[str, Any]:
    """Percentiles in microseconds and probes per second."""
    ordered = sorted(latencies)

    def us(seconds: Optional[float]) -> Optional[float]:
        return None if seconds is None else round(seconds * 1e6, 1)

    return {
        "url": url, "mode": mode, "concurrency": concurrency, "probes": len(ordered),
        "errors": errors, "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_us": us(percentile(ordered, 50)), "p90_us": us(percentile(ordered, 90)),
        "p99_us": us(percentile(ordered, 99)), "max_us": us(ordered[-1]) if ordered else None,
        "probes_per_second": round(len(ordered) / wall, 1) if wall > 0 else None,
    }


def bench_main(argv: Sequence[str]) -> int:
    """Command line of `probed bench`."""
    parser = argparse.ArgumentParser(prog="probed bench", description=__doc__.split("\n")[0])
    parser.add_argument("url", help="probe URL, e.g. http://127.0.0.1:8080/readyz")
    parser.add_argument("-n", type=int, metavar="N", default=2000,
                        help="probes to time (default 2000)")
    parser.add_argument("-c", type=int, metavar="N", default=1,
                        help="concurrent clients (default 1)")
    parser.add_argument("--mode", choices=("http", "tcp"), default="http")
    parser.add_argument("--warmup", type=int, default=100, metavar="N",
                        help="untimed probes first (default 100)")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                        help="deadline of one probe (default 2)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args(list(argv))
    if args.n < 1 or args.c < 1 or args.warmup < 0:
        parser.error("-n and -c must be >= 1, --warmup >= 0")
    try:
        result = run_bench(args.url, args.n, args.c, args.mode, args.warmup, args.timeout)
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        print(json.dumps(result))
    else:
        print(bench_text(result))
    return 0 if result["probes"] else 3


def bench_text(result: Dict[str, Any]) -> str:
    """The result for a person: latencies and statuses, or why no probe was answered."""
    head = "%(url)s mode=%(mode)s c=%(concurrency)d probes=%(probes)d errors=%(errors)d" % result
    if not result["probes"]:
        return "%s\nno probe was answered: %s" % (head, result.get("first_error") or "no reply")
    statuses = ", ".join("%s x%d" % kv for kv in result["statuses"].items()) or "none (tcp)"
    lines = [head, "p50 %(p50_us)sus  p90 %(p90_us)sus  p99 %(p99_us)sus  max %(max_us)sus  "
                   "%(probes_per_second)s probes/s" % result, "statuses: " + statuses]
    if result["errors"]:
        lines.append("first error: %s" % result.get("first_error"))
    return "\n".join(lines)
