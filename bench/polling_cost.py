"""What probed's polling costs a real vLLM: /metrics scrapes a minute and the API server's CPU.

    python3 bench/polling_cost.py [--minutes 2] [--keep-model DIR]

Starts a real vLLM (the CPU build tests/peers/vllm_venv.sh installs, a tiny random-weight model
written offline by tests/realservers/hf_model.py), then measures equal windows, one after the
other, on the same idle server:

  baseline      no probed: the API server's own idle CPU
  default       probed --vllm URL (every check at its own default interval)
  interval-1s   probed --vllm URL --interval 1s

For each window: requests a minute per path, from vLLM's own access log (uvicorn logs every
request), and the API server process's CPU seconds a minute (utime + stime from /proc), with
the baseline's subtracted as the cost of answering probed. A last, shorter window restarts vLLM
with `--disable-access-log-for-endpoints` set to every path probed polls and counts
the access-log lines it still writes for those paths (the way to silence probed's polling in
vLLM's log; the flag is in vLLM 0.32's --help). Results go to stdout and to
bench/results/polling-cost-<date>.md and .json. Speed and cost are measured here, never
asserted in tests.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from realservers.procs import cpu_seconds  # noqa: E402 (the real-server test harness)
from realservers.peers import vllm_python  # noqa: E402
from realservers.servers import VLLMServer, free_tcp_port  # noqa: E402

ACCESS_LINE = re.compile(r'"(GET|POST|HEAD) ([^ ?"]+)[^"]* HTTP/1\.[01]" (\d{3})')
SILENCED = "/health,/metrics,/v1/models,/is_paused,/is_sleeping"  # every path probed polls
SETTLE = 10.0  # seconds after probed starts before a window opens (its start-up polls)


def write_model(out: str) -> str:
    """The tiny model, written by the vLLM venv's python (it has transformers)."""
    if not os.path.isfile(os.path.join(out, "config.json")):
        subprocess.run([vllm_python(), str(REPO / "tests" / "realservers" / "hf_model.py"),
                        out, "tiny"], check=True, capture_output=True,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    return out


def access_counts(text: str) -> Dict[str, int]:
    """Requests per path in a stretch of vLLM's log."""
    counts: Dict[str, int] = {}
    for match in ACCESS_LINE.finditer(text):
        counts[match.group(2)] = counts.get(match.group(2), 0) + 1
    return counts


def start_probed(args: List[str]) -> "subprocess.Popen[bytes]":
    port = free_tcp_port()
    return subprocess.Popen([sys.executable, "-m", "probed", "--addr", "127.0.0.1:%d" % port] +
                            args, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def window(server: VLLMServer, seconds: float, probed_args: Optional[List[str]]
           ) -> Dict[str, Any]:
    """One measured window: per-path requests and API-server CPU a minute."""
    probed = start_probed(probed_args) if probed_args is not None else None
    try:
        if probed is not None:
            time.sleep(SETTLE)
        log_start = len(server.log_text())
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
        counts = access_counts(server.log_text()[log_start:])
    finally:
        if probed is not None:
            probed.terminate()
            probed.wait(10)
    minutes = (t1 - t0) / 60.0
    return {"minutes": round(minutes, 3), "cpu_per_min": round((cpu1 - cpu0) / minutes, 3),
            "per_min": {path: round(n / minutes, 1) for path, n in sorted(counts.items())}}


def measure(model: str, workdir: str, minutes: float) -> Dict[str, Any]:
    """Every window on one server, then the access-log check on a restarted one."""
    seconds = minutes * 60.0
    server = VLLMServer(workdir, model, dev_mode=False)
    results: Dict[str, Any] = {}
    try:
        server.start()
        server.wait_ready()
        time.sleep(SETTLE)
        results["baseline"] = window(server, seconds, None)
        results["default"] = window(server, seconds, ["--vllm", server.url])
        results["interval-1s"] = window(server, seconds, ["--vllm", server.url,
                                                          "--interval", "1s"])
        server.stop()
        server.extra = ["--disable-access-log-for-endpoints", SILENCED]
        server.start()
        server.wait_ready()
        results["silenced-1s"] = window(server, min(seconds, 60.0), [
            "--vllm", server.url, "--interval", "1s"])
    finally:
        server.stop()
    base = results["baseline"]["cpu_per_min"]
    for name in ("default", "interval-1s"):
        results[name]["cpu_per_min_over_baseline"] = round(
            results[name]["cpu_per_min"] - base, 3)
    return results


def table(results: Dict[str, Any]) -> str:
    """The results as a Markdown table."""
    paths = sorted({p for r in results.values() for p in r["per_min"]})
    lines = ["| window | API server CPU s/min | over baseline | " +
             " | ".join("`%s`/min" % p for p in paths) + " |",
             "|---" * (3 + len(paths)) + "|"]
    for name, r in results.items():
        lines.append("| %s | %.3f | %s | %s |" % (
            name, r["cpu_per_min"], r.get("cpu_per_min_over_baseline", "-"),
            " | ".join("%g" % r["per_min"].get(p, 0) for p in paths)))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="length of each window")
    parser.add_argument("--keep-model", metavar="DIR", help="write/reuse the model here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="probed-polling-") as tmp:
        model = write_model(args.keep_model or os.path.join(tmp, "tiny-llama"))
        results = measure(model, tmp, args.minutes)
    text = table(results)
    print(text)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    out = REPO / "bench" / "results" / ("polling-cost-%s" % stamp)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(
        "# probed polling cost on a real vLLM (%s, %g min windows)\n\n%s\n" % (
            stamp, args.minutes, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
