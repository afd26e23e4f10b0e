"""Per-core comparison: every server pinned to one core, the load generator on another.

    python3 bench/run.py --percore [--setup] [--rounds 4] [--seconds 4] [--scaling]

The method of issue 18: the server on core 0 (`taskset`-style affinity, inherited by all its
processes and threads, so Go's GOMAXPROCS is 1 too), `wrk -t1 -c8` with `Connection: close`
(a new connection per probe) on core 1, several alternating rounds, the server's CPU time read
off /proc/PID/stat around every run. Per round and server: one `wrk -c8` throughput run and
one `ab -c 1` kubelet-style latency run (connect to last byte, one probe at a time).
`--scaling` adds how the figures grow with work: 1 to 100 checks configured in probed, and 1 to
1,000 concurrent connections for probed, the single file, Go and nginx. Writes
bench/results/<date>-percore.json and .md and the "Per core" section of bench/README.md.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import install
import lineup
import measure
import percore_report
from lab import Lab, Proc, cpu_seconds, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SERVER_CPU, LOAD_CPU = 0, 1
PERCORE_PEERS = ("go", "nginx", "probed", "probed_file", "fastapi", "aiohttp")
SCALING_PEERS = ("go", "nginx", "probed", "probed_file")
KUBELET_HEADERS = ("User-Agent: " + measure.KUBELET_UA, "Accept: */*", "Connection: close")
WRK_TIMEOUT_EXTRA = 30.0
LATENCY_N = 2000
CHECK_COUNTS = (1, 10, 100)
CONNECTION_COUNTS = (1, 10, 100, 1000)
IDLE_SECONDS = 3.0  # how long probed's own polling is measured with no probes
README_BEGIN = "<!-- percore:begin -->"
README_END = "<!-- percore:end -->"


def parse_args(argv: List[str]) -> argparse.Namespace:
    """Command line of the per-core mode."""
    p = argparse.ArgumentParser(prog="bench/run.py --percore", description=__doc__.split(
        "\n")[0])
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    p.add_argument("--seconds", type=int, default=4, help="length of one wrk run (default 4)")
    p.add_argument("--only", default="", help="comma-separated keys (default: %s)" %
                   ",".join(PERCORE_PEERS))
    p.add_argument("--scaling", action="store_true",
                   help="also 1-100 checks and 1-1000 concurrent connections")
    p.add_argument("--scaling-rounds", type=int, default=2, help="rounds of --scaling (2)")
    p.add_argument("--setup", action="store_true", help="install missing peers first")
    p.add_argument("--venv", default="/tmp/probed-bench-venv", help="venv of the Python peers")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder")
    p.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.seconds < 1 or args.scaling_rounds < 1:
        p.error("--rounds, --seconds and --scaling-rounds must be >= 1")
    if len(os.sched_getaffinity(0)) < 2 or not {SERVER_CPU, LOAD_CPU} <= os.sched_getaffinity(0):
        p.error("needs CPUs %d and %d" % (SERVER_CPU, LOAD_CPU))
    return args


def loadavg() -> str:
    """The 1-minute load average (other work on the machine shows in every number)."""
    with open("/proc/loadavg", encoding="ascii") as fh:
        return fh.read().split()[0]


def wrk(url: str, conns: int, seconds: int) -> Dict[str, Any]:
    """`wrk -t1 -cN -dS --latency` with the kubelet's headers; requests, errors, p50/p99."""
    argv = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency"]
    for header in KUBELET_HEADERS:
        argv += ["-H", header]
    done = subprocess.run(argv + [url], capture_output=True, text=True,
                          timeout=seconds + WRK_TIMEOUT_EXTRA)
    if done.returncode != 0:
        raise RuntimeError("wrk exited %d: %s" % (done.returncode, done.stderr[-400:]))
    return parse_wrk(done.stdout)


def parse_wrk(text: str) -> Dict[str, Any]:
    """The numbers of one wrk report."""
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(m?s)", text, re.M)
    if total is None:
        raise RuntimeError("no request count in wrk's output: %s" % text[-400:])
    seconds = float(total.group(2)) * (0.001 if total.group(3) == "ms" else 1.0)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out = {"requests": int(total.group(1)), "seconds": seconds, "socket_errors": errors,
           "non_2xx": int(non2xx.group(1)) if non2xx else 0}
    for pct in ("50", "99"):
        m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)\s*$" % pct, text, re.M)
        if m:
            scale = {"us": 1.0, "ms": 1e3, "s": 1e6}[m.group(2)]
            out["p%s_us" % pct] = round(float(m.group(1)) * scale, 1)
    out["requests_per_second"] = round(out["requests"] / seconds, 1) if seconds else 0.0
    return out


def with_cpu(proc: Proc, run: Any) -> Dict[str, Any]:
    """run() with the server's CPU time (all its processes and threads) around it."""
    load0 = loadavg()
    (u0, s0) = cpu_seconds(proc.pids)
    result = dict(run())
    (u1, s1) = cpu_seconds(proc.pids)
    served = result.get("requests", result.get("probes", 0))
    result.update(server_cpu_s=round(u1 - u0 + s1 - s0, 3), server_sys_s=round(s1 - s0, 3),
                  server_cpu_us_per_probe=round((u1 - u0 + s1 - s0) * 1e6 / served, 1)
                  if served else None, loadavg=[load0, loadavg()])
    return result


def start_pinned(env: lineup.Env, peer: lineup.Peer) -> Tuple[Proc, str]:
    """Start a peer with this process pinned to the server core, so it and every process
    and thread it makes inherit that core; then back to the load core."""
    os.sched_setaffinity(0, {SERVER_CPU})
    try:
        return lineup.start_peer(env, peer)
    finally:
        os.sched_setaffinity(0, {LOAD_CPU})


def compare_round(env: lineup.Env, started: List[Tuple[lineup.Peer, Proc, str]], args:
                  argparse.Namespace, round_no: int) -> List[Dict[str, Any]]:
    """One round: every server (order rotating) gets a wrk -c8 run and an ab -c 1 run."""
    runs = []
    shift = round_no % len(started)
    for peer, proc, url in started[shift:] + started[:shift]:
        for kind in ("throughput", "latency"):
            base = {"peer": peer.key, "round": round_no, "kind": kind}
            try:
                if kind == "throughput":
                    run = with_cpu(proc, lambda: wrk(url, 8, args.seconds))
                else:
                    run = with_cpu(proc, lambda: measure.ab(REPO, url, LATENCY_N, 1, "http"))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                run = {"error": str(exc)}
            run.update(base)
            runs.append(run)
            print("percore: round %d %-24s %-10s %s" % (round_no + 1, peer.label, kind, run.get(
                "error") or "%s/s cpu %sus p50 %sus p99 %sus load %s" % (
                run.get("requests_per_second", run.get("probes_per_second")),
                run.get("server_cpu_us_per_probe"), run.get("p50_us"), run.get("p99_us"),
                run["loadavg"][1])))
    return runs


def checks_args(env: lineup.Env, port: int, count: int) -> List[str]:
    """probed with `count` tcp checks polling every second (all against the tcp sink)."""
    args = ["--addr", "127.0.0.1:%d" % port, "--drain-seconds", "0"]
    for i in range(count):
        args += ["--check", "tcp name=t%d addr=127.0.0.1:%d probes=ready,started interval=1s" % (
            i, env.tcp_sink)]
    return args


def scale_checks(env: lineup.Env, args: argparse.Namespace, round_no: int
                 ) -> List[Dict[str, Any]]:
    """probed with 1, 10, 100 checks: its CPU when idle (its own polling) and under wrk -c8."""
    runs = []
    for count in CHECK_COUNTS:
        port = free_port()
        os.sched_setaffinity(0, {SERVER_CPU})
        try:
            proc = env.lab.start("probed_checks%d" % count, [sys.executable, "-m", "probed"] +
                                 checks_args(env, port, count), cwd=env.repo)
        finally:
            os.sched_setaffinity(0, {LOAD_CPU})
        try:
            env.lab.wait_ready(proc, port, lineup.PATH, lambda s, _b: s == 200,
                               lineup.READY_TIMEOUT)
            idle = with_cpu(proc, lambda: (time.sleep(IDLE_SECONDS), {})[1])
            url = "http://127.0.0.1:%d%s" % (port, lineup.PATH)
            run = with_cpu(proc, lambda: wrk(url, 8, args.seconds))
            run.update(kind="checks", checks=count, round=round_no, peer="probed",
                       idle_cpu_pct=round(100.0 * idle["server_cpu_s"] / IDLE_SECONDS, 1))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            run = {"kind": "checks", "checks": count, "round": round_no, "error": str(exc)}
        finally:
            env.lab.stop(proc)
        runs.append(run)
        print("percore: checks=%d %s" % (count, run.get("error") or "%s/s cpu %sus idle %s%%" % (
            run["requests_per_second"], run["server_cpu_us_per_probe"], run["idle_cpu_pct"])))
    return runs


def scale_connections(started: List[Tuple[lineup.Peer, Proc, str]], args: argparse.Namespace,
                      round_no: int) -> List[Dict[str, Any]]:
    """wrk with 1 to 1,000 concurrent connections against each scaling peer."""
    runs = []
    for conns in CONNECTION_COUNTS:
        for peer, proc, url in started:
            if peer.key not in SCALING_PEERS:
                continue
            try:
                run = with_cpu(proc, lambda: wrk(url, conns, args.seconds))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                run = {"error": str(exc)}
            run.update(kind="connections", connections=conns, round=round_no, peer=peer.key)
            runs.append(run)
            print("percore: c=%d %-24s %s" % (conns, peer.label, run.get("error") or
                                               "%s/s cpu %sus p50 %sus p99 %sus" % (
                run["requests_per_second"], run["server_cpu_us_per_probe"], run.get("p50_us"),
                run.get("p99_us"))))
    return runs


def select(args: argparse.Namespace, notes: List[str]) -> List[lineup.Peer]:
    """The peers of this run that are installed (or installable with --setup)."""
    wanted = set(args.only.split(",")) if args.only else set(PERCORE_PEERS)
    unknown = wanted - set(PERCORE_PEERS)
    if unknown:
        raise SystemExit("percore: unknown --only %s (expected some of: %s)" % (
            ",".join(sorted(unknown)), ",".join(PERCORE_PEERS)))
    status = install.ensure(args.venv, args.setup, notes)
    for tool in ("wrk", "ab"):
        if shutil.which(tool) is None:
            raise SystemExit("percore: needs %s (apt-get install %s)" % (
                tool, "wrk" if tool == "wrk" else "apache2-utils"))
    keep, left_out = lineup.available([p for p in lineup.PEERS if p.key in wanted], status)
    notes.extend(left_out)
    return keep


def bench(args: argparse.Namespace, lab: Lab, tmp: str, notes: List[str]) -> Dict[str, Any]:
    """Start the servers pinned, run the rounds (and the scaling runs); the raw result."""
    t0 = time.monotonic()
    os.sched_setaffinity(0, {LOAD_CPU})
    peers = select(args, notes)
    max_seconds = 3600
    tcp_sink, hang_sink = lineup.start_sinks(lab, max_seconds)
    src, digest = lineup.snapshot_source(REPO, tmp)
    env = lineup.Env(lab, tmp, src, args.venv, max_seconds, tcp_sink, hang_sink)
    started = []
    for peer in peers:
        try:
            proc, url = start_pinned(env, peer)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            notes.append("%s left out: could not start: %s" % (peer.label, exc))
            continue
        started.append((peer, proc, url))
        with_cpu(proc, lambda: wrk(url, 8, 1))  # warm up, untimed
    load_before = loadavg()
    runs: List[Dict[str, Any]] = []
    for r in range(args.rounds):
        runs += compare_round(env, started, args, r)
    if args.scaling:
        for r in range(args.scaling_rounds):
            runs += scale_connections(started, args, r)
            runs += scale_checks(env, args, r)
    return {"runs": runs, "source_sha256": digest, "started": [p.key for p, _, _ in started],
            "loadavg": {"before": load_before, "after": loadavg()},
            "seconds": round(time.monotonic() - t0, 1)}


def write(args: argparse.Namespace, result: Dict[str, Any]) -> str:
    """results/<date>-percore.json and .md, and the README section; returns the .md path."""
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, result["date"] + "-percore")
    with open(base + ".json", "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
        fh.write("\n")
    labels = {p.key: p.label for p in lineup.PEERS}
    markdown = percore_report.render(result, labels)
    with open(base + ".md", "w", encoding="utf-8") as fh:
        fh.write(markdown + "\n")
    if not args.no_readme:
        import run

        run.update_readme(markdown, os.path.basename(base) + ".md", README_BEGIN, README_END)
    return base + ".md"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the per-core bench; 0 when every run answered as expected."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    notes: List[str] = []
    tmp = tempfile.mkdtemp(prefix="probed-percore-")
    affinity = os.sched_getaffinity(0)
    try:
        with Lab(tmp) as lab:
            raw = bench(args, lab, tmp, notes)
    except KeyboardInterrupt:
        print("percore: stopped; every process it started is stopped")
        return 130
    finally:
        os.sched_setaffinity(0, affinity)
        shutil.rmtree(tmp, ignore_errors=True)
    import run  # the machine and version facts the main bench records

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "command": " ".join(["python3 bench/run.py --percore"] + argv),
        "rounds": args.rounds, "wrk_seconds": args.seconds, "machine": run.machine(),
        "versions": install.versions(args.venv), "notes": notes,
        "summary": percore_report.summarize(raw["runs"]), **raw,
    }
    path = write(args, result)
    print("percore: wrote %s (%.0fs)" % (path, raw["seconds"]))
    bad = [r for r in raw["runs"] if r.get("error") or r.get("socket_errors") or
           (r.get("non_2xx") and r.get("peer") != "probed_hung")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
