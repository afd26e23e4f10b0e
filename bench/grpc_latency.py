"""gRPC probe latency next to the HTTP one, kubelet-style: a new connection per probe.

    python3 bench/grpc_latency.py [--rounds 5] [-n 300] [--target both|package|file]

Starts probed (the package, `python3 -m probed`, and/or the single file, a fresh bundle of
probed/) on a free loopback port with no checks, then, in each round and in turn, times probes
from these clients (each probe: connect, one request, the whole answer, close):

- `http`: GET /readyz with the kubelet's headers and `Connection: close`, on a raw socket;
- `h2c`: grpc.health.v1.Health/Check over HTTP/2 with prior knowledge on a raw socket, framed
  as grpc-go frames it (empty SETTINGS first, waits for the server's SETTINGS as WithBlock does,
  Huffman-coded HPACK, `te: trailers`, `grpc-timeout`), so it is the server's cost plus a little;
- `grpc-go`: tests/peers/grpcprobe (the kubelet's prober on grpc-go) with `-n`, when built
  (`bash tests/peers/grpc_go_probe.sh`); it times each probe itself;
- `grpcio`: Python grpcio, a new channel per probe, when installed (its client cost dominates).

Prints the median over rounds of each round's p50 and p90, in microseconds, one table per
target. Nothing is asserted: the numbers are for reading.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from probed import bundle  # noqa: E402
from probed.hpack import HUFFMAN_CODE_LENGTHS, encode_integer  # noqa: E402

HTTP_REQUEST = (b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.31\r\n"
                b"Accept: */*\r\nConnection: close\r\n\r\n")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SERVING_MESSAGE = b"\0\0\0\0\x02\x08\x01"
START_TIMEOUT = 20.0


def huffman_codes() -> Dict[int, Tuple[int, int]]:
    lengths = [ord(c) - 48 for c in HUFFMAN_CODE_LENGTHS]
    code, prev, codes = -1, 5, {}
    for sym in sorted(range(257), key=lambda s: (lengths[s], s)):
        code = (code + 1) << (lengths[sym] - prev)
        prev = lengths[sym]
        codes[sym] = (code, lengths[sym])
    return codes


def hpack_string(value: bytes, codes: Dict[int, Tuple[int, int]]) -> bytes:
    """Huffman-coded when shorter, as Go's hpack encoder does."""
    bits = acc = 0
    for byte in value:
        code, length = codes[byte]
        acc, bits = (acc << length) | code, bits + length
    pad = -bits % 8
    coded = ((acc << pad) | ((1 << pad) - 1)).to_bytes((bits + pad) // 8, "big")
    if len(coded) < len(value):
        return encode_integer(len(coded), 7, 0x80) + coded
    return encode_integer(len(value), 7, 0) + value


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + \
        payload


def grpc_go_request(port: int) -> bytes:
    """HEADERS + DATA of one Check("readiness") as grpc-go writes them on a new connection."""
    codes = huffman_codes()

    def indexed_name(index: int, value: bytes) -> bytes:  # literal, incremental indexing
        return encode_integer(index, 6, 0x40) + hpack_string(value, codes)

    def new_name(name: bytes, value: bytes) -> bytes:
        return b"\x40" + hpack_string(name, codes) + hpack_string(value, codes)

    block = (b"\x83\x86" + indexed_name(4, b"/grpc.health.v1.Health/Check") +
             indexed_name(1, b"127.0.0.1:%d" % port) + indexed_name(31, b"application/grpc") +
             indexed_name(58, b"kube-probe/1.31 grpc-go/1.65.0") + new_name(b"te", b"trailers") +
             new_name(b"grpc-timeout", b"999873u"))
    message = b"\x0a\x09readiness"
    return frame(1, 0x4, 1, block) + frame(0, 0x1, 1, b"\0" + len(message).to_bytes(4, "big") +
                                           message)


class FrameReader:
    """Reads whole frames from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def next(self) -> Tuple[int, int, bytes]:
        while True:
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    kind, flags = self.buf[3], self.buf[4]
                    payload, self.buf = self.buf[9:9 + length], self.buf[9 + length:]
                    return kind, flags, payload
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the answer was complete")
            self.buf += data


def h2c_probe(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(PREFACE + frame(4, 0, 0))
        reader = FrameReader(sock)
        kind, flags, _ = reader.next()
        if kind != 4 or flags & 1:
            raise ConnectionError("the server's first frame was not its SETTINGS")
        sock.sendall(frame(4, 1, 0) + request)
        message = b""
        while True:
            kind, flags, payload = reader.next()
            if kind == 0:
                message += payload
            elif kind == 1 and flags & 1:
                break
        if message != SERVING_MESSAGE:
            raise RuntimeError("not SERVING: %r" % message)
        sock.sendall(frame(7, 0, 0, b"\0\0\0\1\0\0\0\0"))  # GOAWAY, as a closing client does


def http_probe(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(HTTP_REQUEST)
        reply = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
        if not reply.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError("not 200: %r" % reply[:40])


def grpcio_probe_factory() -> Optional[Callable[[int], None]]:
    try:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        return None

    def probe(port: int) -> None:
        with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=1.0)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError("not SERVING")
    return probe


def timed(probe: Callable[[], None], n: int) -> List[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        probe()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def grpc_go_round(binary: str, port: int, n: int) -> List[float]:
    done = subprocess.run([binary, "-addr", "127.0.0.1:%d" % port, "-service", "readiness",
                           "-n", str(n)], stdout=subprocess.PIPE, timeout=120, check=True)
    return [float(x) for x in done.stdout.split()]


def percentile(samples: List[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_probed(argv: List[str]) -> Tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(argv + ["--addr", "127.0.0.1:%d" % port], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            http_probe(port)
            return proc, port
        except (OSError, RuntimeError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("probed did not start: %s" % argv)
            time.sleep(0.05)


def bench_target(name: str, argv: List[str], rounds: int, n: int,
                 go_binary: Optional[str]) -> Dict[str, Tuple[float, float]]:
    proc, port = start_probed(argv)
    try:
        request = grpc_go_request(port)
        clients: Dict[str, Callable[[], List[float]]] = {
            "http": lambda: timed(lambda: http_probe(port), n),
            "h2c": lambda: timed(lambda: h2c_probe(port, request), n),
        }
        if go_binary:
            clients["grpc-go"] = lambda: grpc_go_round(go_binary, port, n)
        grpcio = grpcio_probe_factory()
        if grpcio is not None:
            clients["grpcio"] = lambda: timed(lambda: grpcio(port), max(n // 3, 10))
        for run in clients.values():  # warm up: caches, first connections
            run()
        per_round: Dict[str, List[Tuple[float, float]]] = {k: [] for k in clients}
        for _ in range(rounds):
            for key, run in clients.items():
                samples = run()
                per_round[key].append((percentile(samples, 0.5), percentile(samples, 0.9)))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {k: (statistics.median(p for p, _ in v), statistics.median(q for _, q in v))
            for k, v in per_round.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=300, help="probes per client per round")
    parser.add_argument("--target", choices=("both", "package", "file"), default="both")
    parser.add_argument("--grpc-go", default=os.environ.get("PROBED_GRPC_GO_PROBE", ""),
                        help="tests/peers/grpcprobe binary (default: built by its script if Go "
                             "and grpc-go's sources are there)")
    args = parser.parse_args()
    go_binary = args.grpc_go or None
    if go_binary is None:
        done = subprocess.run(["bash", os.path.join(REPO, "tests", "peers", "grpc_go_probe.sh")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        go_binary = done.stdout.decode().strip() if done.returncode == 0 else None
    targets = []
    if args.target in ("both", "package"):
        targets.append(("package", [sys.executable, "-m", "probed"]))
    tmp = tempfile.mkdtemp(prefix="probed-grpc-bench-")
    if args.target in ("both", "file"):
        single = os.path.join(tmp, "probed.py")
        bundle.write_bundle(Path(REPO) / "probed", Path(single))
        targets.append(("single file", [sys.executable, single]))
    print("python %s, %d rounds x %d probes, new connection per probe; microseconds, median "
          "over rounds of each round's p50 / p90" % (sys.version.split()[0], args.rounds, args.n))
    for name, argv in targets:
        results = bench_target(name, argv, args.rounds, args.n, go_binary)
        print("\n%s (%s)\n\n| client | p50 | p90 |\n|---|---|---|" % (name, " ".join(argv[1:])))
        for key, (p50, p90) in results.items():
            print("| %s | %.0f | %.0f |" % (key, p50, p90))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
