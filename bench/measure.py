"""The two probe clients of a bench run and what one run of either yields.

`probed bench` (Python, blocking sockets) and ApacheBench `ab` (C, one epoll loop, no -k so a
new connection per request) both open a new connection per probe and send the kubelet's
User-Agent with Connection: close. Each run returns the same keys, in microseconds; the server's
CPU time is read around the run from /proc, the client's from this process's reaped children.
"""

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Sequence, Tuple

KUBELET_UA = "kube-probe/1.31"
CLIENT_TIMEOUT = 120.0  # seconds for one client run (2000 probes take about one)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(argv: Sequence[str], cwd: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=CLIENT_TIMEOUT)


def probed_bench(repo: str, url: str, n: int, c: int, mode: str) -> Dict[str, Any]:
    """`python3 -m probed bench URL -n N -c C --mode MODE --warmup 0 --json`."""
    argv = [sys.executable, "-m", "probed", "bench", url, "-n", str(n), "-c", str(c),
            "--mode", mode, "--warmup", "0", "--json"]
    done = _run(argv, repo)
    if done.returncode != 0:
        raise RuntimeError("probed bench exited %d: %s" % (done.returncode, done.stderr[-500:]))
    data = json.loads(done.stdout)
    return {"probes": data["probes"], "errors": data["errors"], "statuses": data["statuses"],
            "p50_us": data["p50_us"], "p99_us": data["p99_us"],
            "probes_per_second": data["probes_per_second"]}


def _ab_field(pattern: str, text: str, default: float = 0.0) -> float:
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else default


def ab(repo: str, url: str, n: int, c: int, mode: str) -> Dict[str, Any]:
    """`ab -n N -c C -r -s 5 -e CSV -H 'User-Agent: kube-probe/..' -H 'Connection: close'`."""
    if mode != "http":
        raise ValueError("ab measures http only")
    fd, csv_path = tempfile.mkstemp(prefix="probed-bench-ab-", suffix=".csv")
    os.close(fd)
    try:
        done = _run(["ab", "-q", "-r", "-s", "5", "-n", str(n), "-c", str(c), "-e", csv_path,
                     "-H", "User-Agent: " + KUBELET_UA, "-H", "Connection: close", url], repo)
        if done.returncode != 0:
            raise RuntimeError("ab exited %d: %s" % (done.returncode,
                                                     (done.stderr or done.stdout)[-500:]))
        with open(csv_path, encoding="ascii") as fh:
            rows = dict(line.strip().split(",") for line in fh if line[:1].isdigit())
    finally:
        os.unlink(csv_path)
    out = done.stdout
    complete = int(_ab_field(r"^Complete requests:\s+(\d+)", out))
    failed = int(_ab_field(r"^Failed requests:\s+(\d+)", out))
    non2xx = int(_ab_field(r"^Non-2xx responses:\s+(\d+)", out))
    return {"probes": complete - failed, "errors": failed,
            "statuses": {"2xx": complete - failed - non2xx, "non-2xx": non2xx},
            "p50_us": round(float(rows["50"]) * 1000, 1),
            "p99_us": round(float(rows["99"]) * 1000, 1),
            "probes_per_second": _ab_field(r"^Requests per second:\s+([\d.]+)", out)}


CLIENTS: Dict[str, Callable[..., Dict[str, Any]]] = {"bench": probed_bench, "ab": ab}


def measure(client: str, repo: str, url: str, n: int, c: int, mode: str,
            server_cpu: Callable[[], Tuple[float, float]]) -> Dict[str, Any]:
    """One client run against one server, with both sides' CPU time around it
    (server_cpu: the server's (user, system) CPU seconds so far)."""
    (user0, sys0), client0 = server_cpu(), _children_cpu()
    result = CLIENTS[client](repo, url, n, c, mode)
    (user1, sys1), client1 = server_cpu(), _children_cpu()
    result.update(client=client, c=c, mode=mode, n=n,
                  server_cpu_s=round(user1 - user0 + sys1 - sys0, 4),
                  server_sys_s=round(sys1 - sys0, 4),
                  client_cpu_s=round(client1 - client0, 4))
    return result


def statuses_ok(result: Dict[str, Any], expect: int) -> List[str]:
    """Problems with the replies of one run, if any (wrong status, errors, short count)."""
    problems = []
    if result["errors"]:
        problems.append("%d errors" % result["errors"])
    if result["mode"] == "http":
        statuses = result["statuses"]
        if result["client"] == "bench":
            wrong = {k: v for k, v in statuses.items() if k != str(expect)}
        else:
            key = "2xx" if expect < 300 else "non-2xx"
            wrong = {k: v for k, v in statuses.items() if k != key and v}
        if wrong:
            problems.append("unexpected statuses %s (expected %d)" % (wrong, expect))
    if result["probes"] < result["n"]:
        problems.append("%d of %d probes answered" % (result["probes"], result["n"]))
    return problems
