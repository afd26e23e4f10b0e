"""Memory and start-up of the single file per CPython version, next to the asyncio floor.

    python3 bench/footprint.py                      # 3.8-3.13 from pyenv, 3 rounds, 100k probes
    python3 bench/footprint.py --compare OLD.py     # an older probed.py beside it, same rounds

For every Python found, in rounds (the order of Pythons rotating per round), it measures:
- the floor: `python -I -S` that keeps ssl out and imports asyncio, socket and json (what any
  asyncio daemon pays), its RSS after --idle seconds and its time to be ready;
- probed.py (copied to a tmp dir first, as a user copies it): `python -I -S probed.py --addr
  127.0.0.1:PORT --vllm http://127.0.0.1:CLOSED --max-waiting 8`, CLOSED a bound port that
  refuses connections. Start = spawn to the first answered probe (wall clock, and the CPU time
  the process had used by then, from /proc/PID/schedstat, which other load on the machine does
  not inflate); RSS after --idle seconds; RSS after --probes kubelet-style probes (a new
  connection each, `GET /livez`, --concurrency at a time).
Tables give medians over rounds; bench/results/footprint-<date>.json keeps every sample, and the
"Footprint" section of bench/README.md is replaced. `--importtime` adds one `-X importtime` run
per Python: where the start-up goes. Every process is stopped by PID (bench/lab.py).
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lab import Lab, Proc, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
TARGET_OVER_FLOOR_MB = 4.0  # issue 18 item 2: idle RSS <= floor + 4 MB
START_TIMEOUT = 20.0
POLL_INTERVAL = 0.001  # seconds between connection attempts while waiting for the first answer
README_BEGIN = "<!-- footprint:begin -->"
README_END = "<!-- footprint:end -->"
FLOOR = ("import sys; sys.modules['ssl'] = None; import asyncio, socket, json; "
         "print('ready', flush=True); import time; time.sleep(3600)")
PROBE = (b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.31\r\n"
         b"Accept: */*\r\nConnection: close\r\n\r\n")


def find_python(version: str) -> Optional[str]:
    """`python3.X` from pyenv's versions (newest patch release), else from PATH; None if absent."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = sorted(glob.glob(os.path.join(root, "versions", version + ".*", "bin",
                                          "python" + version)),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/")[-3])])
    candidates = found[::-1] + [shutil.which("python" + version) or ""]
    for path in candidates:
        if path and subprocess.run([path, "-I", "-S", "-c", "pass"],
                                   stderr=subprocess.DEVNULL).returncode == 0:
            return path
    return None


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (10^6 bytes), from /proc/PID/status."""
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("no VmRSS for pid %d" % pid)


def cpu_ms(pid: int) -> float:
    """CPU time the process's main thread has run, in ms (/proc/PID/schedstat, ns)."""
    with open("/proc/%d/schedstat" % pid) as fh:
        return int(fh.read().split()[0]) / 1e6


def probe_once(port: int, timeout: float = 5.0) -> bool:
    """One kubelet-style probe on a new connection: True when an HTTP status line came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(PROBE)
        first = sock.recv(4096)
        while sock.recv(4096):  # the server closes after its answer (Connection: close)
            pass
        return first.startswith(b"HTTP/1.1 ")


def first_answer(proc: Proc, port: int, started: float) -> Tuple[float, float]:
    """(wall ms, CPU ms) from `started` to the first answered probe; raises if none comes."""
    while time.monotonic() - started < START_TIMEOUT:
        if proc.popen.poll() is not None:
            raise RuntimeError("%s exited with %s:\n%s" % (proc.name, proc.popen.returncode,
                                                            proc.log_tail()))
        try:
            if probe_once(port):
                return (time.monotonic() - started) * 1000, cpu_ms(proc.pid)
        except OSError:
            time.sleep(POLL_INTERVAL)
    raise RuntimeError("%s: no answer on port %d within %.0fs:\n%s" % (
        proc.name, port, START_TIMEOUT, proc.log_tail()))


def hammer(port: int, probes: int, concurrency: int) -> Tuple[int, float]:
    """Send `probes` probes, `concurrency` at a time: (answered, seconds)."""
    counts = [0] * concurrency
    share = [probes // concurrency + (1 if i < probes % concurrency else 0)
             for i in range(concurrency)]

    def worker(index: int) -> None:
        for _ in range(share[index]):
            try:
                counts[index] += probe_once(port)
            except OSError:
                pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts), time.monotonic() - start


def measure_floor(lab: Lab, python: str, idle: float) -> Dict[str, float]:
    """The asyncio floor: RSS after `idle` seconds and ms until its imports are done."""
    started = time.monotonic()
    popen = subprocess.Popen([python, "-I", "-S", "-c", FLOOR], stdout=subprocess.PIPE)
    proc = Proc("floor", popen, os.devnull)  # type: ignore[arg-type]
    lab.procs.append(proc)
    try:
        assert popen.stdout is not None and popen.stdout.readline() == b"ready\n"
        ready_ms = (time.monotonic() - started) * 1000
        time.sleep(max(0.0, idle - (time.monotonic() - started)))
        return {"rss_mb": rss_mb(popen.pid), "start_ms": ready_ms}
    finally:
        lab.stop(proc)


def measure_file(lab: Lab, python: str, script: str, args: argparse.Namespace,
                 closed: int) -> Dict[str, float]:
    """probed.py with a vLLM preset: start, idle RSS, RSS after the probes."""
    port = free_port()
    argv = [python, "-I", "-S", script, "--addr", "127.0.0.1:%d" % port, "--vllm",
            "http://127.0.0.1:%d" % closed, "--max-waiting", "8"]
    started = time.monotonic()
    proc = lab.start("footprint-%d" % port, argv, cwd=os.path.dirname(script))
    try:
        wall, cpu = first_answer(proc, port, started)
        time.sleep(max(0.0, args.idle - (time.monotonic() - started)))
        row = {"start_ms": wall, "start_cpu_ms": cpu, "rss_idle_mb": rss_mb(proc.pid)}
        if args.probes:
            answered, seconds = hammer(port, args.probes, args.concurrency)
            time.sleep(0.2)
            row.update(rss_probed_mb=rss_mb(proc.pid), answered=answered,
                       probes_per_s=answered / seconds)
        return row
    finally:
        lab.stop(proc)


def importtime(python: str, script: str, closed: int, log_dir: str) -> Dict[str, Any]:
    """One `-X importtime` start of the file: where the milliseconds before the first answer go."""
    port = free_port()
    with Lab(log_dir) as lab:
        proc = lab.start("importtime-%d" % port, [
            python, "-I", "-S", "-X", "importtime", script, "--addr", "127.0.0.1:%d" % port,
            "--vllm", "http://127.0.0.1:%d" % closed, "--max-waiting", "8"],
            cwd=os.path.dirname(script))
        wall, cpu = first_answer(proc, port, time.monotonic())
        lab.stop(proc)
    rows = []
    with open(proc.log_path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if found:
                rows.append((found.group(4), int(found.group(1)) / 1000.0))
    ours = sum(ms for name, ms in rows if name.split(".")[0] == "probed")
    stdlib = sum(ms for name, ms in rows if name.split(".")[0] != "probed")
    top = sorted(rows, key=lambda r: -r[1])[:8]
    return {"first_answer_ms": wall, "cpu_ms": cpu, "probed_import_ms": ours,
            "stdlib_import_ms": stdlib, "top": top}


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def render(results: Dict[str, Any]) -> str:
    """Markdown tables of medians: memory and start, per Python and file."""
    out = ["`%s`: %d rounds, %d probes after the idle reading (%d at a time), idle %.0f s; %s, "
           "%d CPUs; load average %s before, %s after." % (
               results["command"], results["rounds"], results["probes"], results["concurrency"],
               results["idle"], results["machine"], results["cpus"], results["load_before"],
               results["load_after"]), "",
           "| Python | file | floor MB | idle MB | idle - floor | after %dk probes MB | "
           "target (floor + %.0f) | floor ready ms | first answer ms | CPU ms to it |" % (
               results["probes"] // 1000, TARGET_OVER_FLOOR_MB),
           "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for version, by_file in results["medians"].items():
        for name, m in by_file.items():
            if name == "floor":
                continue
            floor = by_file["floor"]
            over = m["rss_idle_mb"] - floor["rss_mb"]
            out.append("| %s | %s | %.1f | %.1f | +%.1f | %s | %s | %.0f | %.0f | %.0f |" % (
                version, name, floor["rss_mb"], m["rss_idle_mb"], over,
                "%.1f" % m["rss_probed_mb"] if "rss_probed_mb" in m else "-",
                "met" if over <= TARGET_OVER_FLOOR_MB else "over by %.1f" % (
                    over - TARGET_OVER_FLOOR_MB),
                floor["start_ms"], m["start_ms"], m["start_cpu_ms"]))
    if results.get("importtime"):
        out += ["", "Start-up by `-X importtime` (one run each, %s):" % results["files"][0], "",
                "| Python | first answer ms | imports of probed.* ms | other imports ms | "
                "slowest imports (self ms) |", "|---|---:|---:|---:|---|"]
        for version, it in results["importtime"].items():
            out.append("| %s | %.0f | %.0f | %.0f | %s |" % (
                version, it["first_answer_ms"], it["probed_import_ms"], it["stdlib_import_ms"],
                ", ".join("%s %.1f" % (n, ms) for n, ms in it["top"][:5])))
    return "\n".join(out) + "\n"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", default=os.path.join(REPO, "probed.py"), help="the single file")
    p.add_argument("--compare", action="append", default=[],
                   help="another probed.py measured the same way (repeatable)")
    p.add_argument("--pythons", default=",".join(VERSIONS), help="versions, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--probes", type=int, default=100_000, help="probes before the last reading")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--idle", type=float, default=2.0, help="seconds from start to the reading")
    p.add_argument("--importtime", action="store_true", help="add a -X importtime run each")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone")
    return p.parse_args(argv)


def run(args: argparse.Namespace, tmp: str) -> Dict[str, Any]:
    """Every round over every Python: the samples, and their medians."""
    files = {}
    for i, path in enumerate([args.file] + args.compare):
        folder = os.path.join(tmp, "file%d" % i)
        os.mkdir(folder)
        files[os.path.basename(path) if i == 0 else "%s (compare %d)" % (
            os.path.basename(path), i)] = shutil.copy(path, os.path.join(folder, "probed.py"))
    pythons = {v: find_python(v) for v in args.pythons.split(",")}
    missing = sorted(v for v, p in pythons.items() if p is None)
    order = [v for v in pythons if pythons[v]]
    samples: Dict[str, Dict[str, List[Dict[str, float]]]] = {
        v: {name: [] for name in ["floor"] + list(files)} for v in order}
    with socket.socket() as closed, Lab(tmp) as lab:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: every poll is refused
        port = closed.getsockname()[1]
        for round_no in range(args.rounds):
            for version in order[round_no % len(order):] + order[:round_no % len(order)]:
                python = pythons[version]
                assert python is not None
                samples[version]["floor"].append(measure_floor(lab, python, args.idle))
                for name, script in files.items():
                    samples[version][name].append(measure_file(lab, python, script, args, port))
                print("round %d, python %s: %s" % (round_no + 1, version, json.dumps(
                    {k: {f: round(x, 1) for f, x in v[-1].items()}
                     for k, v in samples[version].items()})), flush=True)
        imports = {v: importtime(pythons[v] or "", files[next(iter(files))], port, tmp)
                   for v in order} if args.importtime else {}
    medians = {v: {name: {field: median([s[field] for s in rows]) for field in rows[0]}
                   for name, rows in by_file.items()} for v, by_file in samples.items()}
    return {"pythons": {v: pythons[v] for v in order}, "missing": missing, "samples": samples,
            "medians": medians, "importtime": imports, "files": list(files)}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    load_before = open("/proc/loadavg").read().split()[0]
    with tempfile.TemporaryDirectory(prefix="probed-footprint-") as tmp:
        results = run(args, tmp)
    results.update(
        command="python3 bench/footprint.py " + " ".join(sys.argv[1:] if argv is None else argv),
        rounds=args.rounds, probes=args.probes, concurrency=args.concurrency, idle=args.idle,
        machine="%s %s" % (platform.machine(), platform.release()), cpus=os.cpu_count(),
        load_before=load_before, load_after=open("/proc/loadavg").read().split()[0])
    table = render(results)
    print("\n" + table)
    if results["missing"]:
        print("not measured (not installed): python%s" % ", python".join(results["missing"]))
    day = datetime.date.today().isoformat()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "footprint-%s.json" % day), "w") as fh:
        json.dump(results, fh, indent=1)
    if not args.no_readme:
        path = os.path.join(HERE, "README.md")
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if README_BEGIN in text and README_END in text:
            head, rest = text.split(README_BEGIN, 1)
            text = head + README_BEGIN + "\n" + table + README_END + rest.split(README_END, 1)[1]
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
