"""Probe latency of probed next to real servers answering the same tiny probe, in one run.

    python3 bench/run.py --setup        # installs missing peers first (root, apt + a venv)
    python3 bench/run.py                # uses what is installed, leaves out the rest with a note

Starts every server on loopback, then in rounds (each round visits every server, the order
rotating) times kubelet-style probes with `probed bench` and with `ab`, reads each server's CPU
time from /proc around every run, profiles probed once with cProfile, and writes
bench/results/<date>.json and .md and the "Latest numbers" of bench/README.md. Every process
it starts is stopped by PID when it ends, also on error or Ctrl-C.
"""

import argparse
import datetime
import json
import os
import platform
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import install
import lineup
import measure
import report
from lab import Lab, Proc, cpu_seconds, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WARMUP_PROBES = 300
PROFILE_TOP = 15
PROFILE_SETTLE = 0.1  # seconds around the profiling window's signals
CALIBRATION_RUNS = 5
README_BEGIN = "<!-- latest:begin -->"
README_END = "<!-- latest:end -->"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command line of bench/run.py."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds over all servers (default 5)")
    p.add_argument("-n", type=int, default=2000, help="probes per server per client per round")
    p.add_argument("--throughput-c", type=int, default=8,
                   help="concurrency of the extra `ab -c` throughput run (0: skip)")
    p.add_argument("--profile-n", type=int, default=5000,
                   help="probes answered by probed under cProfile (0: skip)")
    p.add_argument("--only", default="", help="comma-separated server keys (default: all)")
    p.add_argument("--setup", action="store_true",
                   help="apt-get install nginx apache2-utils golang-go and pip install the "
                        "Python peers into --venv when missing")
    p.add_argument("--venv", default="/tmp/probed-bench-venv", help="venv of the Python peers")
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds after which no new round starts (default 480)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder")
    p.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone")
    p.add_argument("--percore", action="store_true",
                   help="the per-core comparison instead (bench/percore.py; its options: "
                        "--percore --help)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.n < 1 or args.throughput_c < 0 or args.profile_n < 0:
        p.error("--rounds and -n must be >= 1, --throughput-c and --profile-n >= 0")
    return args


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


def start_all(env: lineup.Env, peers: List[lineup.Peer],
              notes: List[str]) -> List[Tuple[lineup.Peer, Proc, str]]:
    """Start every peer; one that fails to start is left out with its error."""
    started = []
    for peer in peers:
        try:
            proc, url = lineup.start_peer(env, peer)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            notes.append("%s left out: could not start: %s" % (peer.label, exc))
            continue
        started.append((peer, proc, url))
        print("bench: %-24s %s (pid %s)" % (peer.label, url, " ".join(map(str, proc.pids))))
    return started


def measures_of(peer: lineup.Peer, c_hi: int) -> List[Tuple[str, int, str]]:
    """(client, concurrency, mode) of every run a server gets in one round."""
    have_ab = shutil.which("ab") is not None
    out = [("bench", 1, "http")]
    if have_ab:
        out.append(("ab", 1, "http"))
    if have_ab and c_hi:
        out.append(("ab", c_hi, "http"))
    if peer.tcp:
        out.append(("bench", 1, "tcp"))
    return out


def one_run(env: lineup.Env, peer: lineup.Peer, proc: Proc, url: str,
            spec: Tuple[str, int, str], n: int, round_no: int) -> Dict[str, Any]:
    """One client run, recorded whatever happens."""
    client, c, mode = spec
    base = {"peer": peer.key, "round": round_no, "client": client, "c": c, "mode": mode, "n": n}
    try:
        run = measure.measure(client, env.repo, url, n, c, mode, lambda: lab_cpu(proc))
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        base["error"] = str(exc)
        return base
    run.update(base)
    problems = measure.statuses_ok(run, peer.expect)
    if problems:
        run["problems"] = problems
    return run


def lab_cpu(proc: Proc) -> Tuple[float, float]:
    """(user, system) CPU seconds of a peer (all its processes and threads)."""
    return cpu_seconds(proc.pids)


def warm_up(env: lineup.Env, started: List[Tuple[lineup.Peer, Proc, str]]) -> None:
    """Untimed probes from both clients so no server is measured cold."""
    for peer, proc, url in started:
        for client, c, mode in measures_of(peer, 0):
            one_run(env, peer, proc, url, (client, c, mode), WARMUP_PROBES, -1)


def run_rounds(args: argparse.Namespace, env: lineup.Env,
               started: List[Tuple[lineup.Peer, Proc, str]], t0: float,
               notes: List[str]) -> List[Dict[str, Any]]:
    """Every round visits every server (rotating order) with every client."""
    runs: List[Dict[str, Any]] = []
    for r in range(args.rounds):
        if time.monotonic() - t0 > args.budget:
            notes.append("stopped after %d of %d rounds: --budget %.0fs spent" % (
                r, args.rounds, args.budget))
            break
        shift = r % len(started)
        for peer, proc, url in started[shift:] + started[:shift]:
            for spec in measures_of(peer, args.throughput_c):
                run = one_run(env, peer, proc, url, spec, args.n, r)
                runs.append(run)
                flag = run.get("error") or "; ".join(run.get("problems", []))
                print("bench: round %d %-24s %-15s %s" % (
                    r + 1, peer.label, report.measure_key(spec[0], spec[1], spec[2]),
                    flag or "p50 %(p50_us)sus p99 %(p99_us)sus %(probes_per_second)s/s" % run))
    return runs


def profile_probed(env: lineup.Env, n: int) -> Dict[str, Any]:
    """probed under cProfile (bench/peers/profile_probed.py), profiled only while `probed
    bench` sends n probes: SIGUSR1 before, SIGUSR2 after."""
    port = free_port()
    prof = os.path.join(env.tmp, "probed.prof")
    proc = env.lab.start("probed_profile", [
        sys.executable, os.path.join(lineup.PEERS_DIR, "profile_probed.py"), env.repo, prof] +
        lineup.probed_args(env, port), cwd=env.repo)
    try:
        env.lab.wait_ready(proc, port, lineup.PATH, lambda s, _b: s == 200, lineup.READY_TIMEOUT)
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(PROFILE_SETTLE)
        measure.probed_bench(env.repo, "http://127.0.0.1:%d%s" % (port, lineup.PATH), n, 1,
                             "http")
        os.kill(proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + lineup.READY_TIMEOUT
        while not os.path.exists(prof) and time.monotonic() < deadline:
            time.sleep(PROFILE_SETTLE)
        time.sleep(PROFILE_SETTLE)  # let the dump finish writing
    finally:
        env.lab.stop(proc)
    if not os.path.exists(prof):
        return {"error": "no profile written (exit %s): %s" % (proc.popen.returncode,
                                                               proc.log_tail(5))}
    return summarize_profile(pstats.Stats(prof), n)


def calibrate_client(env: lineup.Env, url: str) -> float:
    """CPU seconds `python3 -m probed bench` spends before its first probe (start-up,
    imports): the median of a few one-probe runs, taken off its per-probe cost."""
    costs = []
    for _ in range(CALIBRATION_RUNS):
        run = measure.measure("bench", env.repo, url, 1, 1, "http", lambda: (0.0, 0.0))
        costs.append(run["client_cpu_s"])
    return sorted(costs)[len(costs) // 2]


def summarize_profile(stats: pstats.Stats, n: int) -> Dict[str, Any]:
    """Top functions by own time, as shares of the time probed was not waiting in epoll."""
    rows = []
    wait = 0.0
    table = stats.stats  # type: ignore[attr-defined]
    for (path, line, func), (_cc, calls, own, cum, _callers) in table.items():
        name = re.sub(r" at 0x[0-9a-f]+", "", func) if path == "~" else "%s:%d(%s)" % (
            os.path.basename(path), line, func)
        if "poll' of 'select.epoll" in func:
            wait += own
        rows.append((name, calls, own, cum))
    total = sum(r[2] for r in rows)
    busy = total - wait
    top = sorted((r for r in rows if "poll' of 'select.epoll" not in r[0]),
                 key=lambda r: -r[2])[:PROFILE_TOP]
    return {"probes": n, "total_s": round(total, 3), "epoll_wait_s": round(wait, 3),
            "busy_s": round(busy, 3),
            "top": [{"function": name, "calls": calls, "calls_per_probe": round(calls / n, 2),
                     "own_pct": round(100.0 * own / busy, 1),
                     "cum_pct": round(100.0 * cum / busy, 1) if cum <= busy else None}
                    for name, calls, own, cum in top]}


def machine() -> Dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh
                          if ln.startswith("model name")), "")
    except OSError:
        pass
    git = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "probed",
                            "probed.py"], capture_output=True, text=True)
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "probed_commit": git.stdout.strip() + (" (with uncommitted changes)"
                                                   if dirty.stdout.strip() else "")}


def update_readme(markdown: str, result_name: str, begin: str = README_BEGIN,
                  end: str = README_END) -> None:
    """Replace a block of bench/README.md (by default "Latest numbers") with a run's tables."""
    path = os.path.join(HERE, "README.md")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return
    if begin not in text or end not in text:
        return
    body = markdown.split("\n", 2)[2].replace("\n## ", "\n### ")  # drop the title, demote
    block = "%s\nFrom [results/%s](results/%s):\n\n%s\n%s" % (
        begin, result_name, result_name, body.strip(), end)
    head, rest = text.split(begin, 1)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(head + block + rest.split(end, 1)[1])


def write_results(args: argparse.Namespace, result: Dict[str, Any]) -> str:
    """bench/results/<date>.json and .md; returns the .md path."""
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, result["date"])
    with open(base + ".json", "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
        fh.write("\n")
    labels = {p.key: p.label for p in lineup.PEERS}
    python_labels = {p.key: p.label for p in lineup.PEERS if p.python}
    markdown = report.render_markdown(result, labels, python_labels)
    with open(base + ".md", "w", encoding="utf-8") as fh:
        fh.write(markdown + "\n")
    if not args.no_readme:
        update_readme(markdown, os.path.basename(base) + ".md")
    return base + ".md"


def select_peers(args: argparse.Namespace, notes: List[str]) -> List[lineup.Peer]:
    """The servers of this run: asked for, and installed (or installable with --setup)."""
    peers = lineup.PEERS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {p.key for p in peers}
        if unknown:
            raise SystemExit("bench: unknown --only %s (expected some of: %s)" % (
                ",".join(sorted(unknown)), ",".join(p.key for p in peers)))
        peers = [p for p in peers if p.key in wanted]
    status = install.ensure(args.venv, args.setup, notes)
    if status.get("ab"):
        notes.append("`ab` runs left out: " + str(status["ab"]))
    keep, left_out = lineup.available(peers, status)
    notes.extend(left_out)
    return keep


def bench(args: argparse.Namespace, lab: Lab, tmp: str, notes: List[str]) -> Dict[str, Any]:
    """Start everything, warm up, run the rounds and the profile; the raw result."""
    t0 = time.monotonic()
    load_before = _loadavg()
    peers = select_peers(args, notes)
    max_seconds = int(args.budget + 600)
    tcp_sink, hang_sink = lineup.start_sinks(lab, max_seconds)
    src, digest = lineup.snapshot_source(REPO, tmp)
    env = lineup.Env(lab, tmp, src, args.venv, max_seconds, tcp_sink, hang_sink)
    started = start_all(env, peers, notes)
    if not started:
        raise SystemExit("bench: no server could be started:\n" + "\n".join(notes))
    warm_up(env, started)
    startup = calibrate_client(env, started[0][2])
    runs = run_rounds(args, env, started, t0, notes)
    for peer, proc, _url in started:
        lab.stop(proc)
    profile = None
    if args.profile_n:
        try:
            profile = profile_probed(env, args.profile_n)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            profile = {"error": str(exc)}
    rounds_done = 1 + max((r["round"] for r in runs), default=-1)
    return {"runs": runs, "profile": profile, "rounds_done": rounds_done,
            "client_startup_cpu_s": startup, "source_sha256": digest,
            "loadavg": {"before": load_before, "after": _loadavg()},
            "seconds": round(time.monotonic() - t0, 1)}


def _loadavg() -> str:
    """The 1-minute load average: other work on the machine is noise in every number."""
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return fh.read().split()[0]
    except OSError:
        return "?"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the bench; 0 when every run answered as expected, 1 otherwise."""
    argv = sys.argv[1:] if argv is None else argv
    if "--percore" in argv:
        import percore

        return percore.main([a for a in argv if a != "--percore"])
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    notes: List[str] = []
    tmp = tempfile.mkdtemp(prefix="probed-bench-")
    try:
        with Lab(tmp) as lab:
            raw = bench(args, lab, tmp, notes)
    except KeyboardInterrupt as exc:
        print("bench: stopped (%s); every process it started is stopped" % (exc or "Ctrl-C"))
        return 130
    except RuntimeError as exc:
        print("bench: cannot run: %s" % exc)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = report.summarize(raw["runs"], {"bench": raw["client_startup_cpu_s"]})
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "config": {"command": "python3 bench/run.py " + " ".join(argv),
                   "rounds": args.rounds, "rounds_done": raw["rounds_done"], "n": args.n,
                   "throughput_c": args.throughput_c, "venv": args.venv},
        "machine": machine(), "versions": install.versions(args.venv), "notes": notes,
        "seconds": raw["seconds"], "client_startup_cpu_s": raw["client_startup_cpu_s"],
        "source_sha256": raw["source_sha256"], "loadavg": raw["loadavg"],
        "summary": summary, "ratios": report.ratios(summary),
        "profile": raw["profile"], "runs": raw["runs"],
    }
    path = write_results(args, result)
    print("bench: wrote %s (%.0fs)" % (path, raw["seconds"]))
    bad = [r for r in raw["runs"] if r.get("error") or r.get("problems")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
