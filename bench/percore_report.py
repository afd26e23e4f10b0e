"""Medians, ratios to Go and markdown for the per-core bench (percore.py). No measuring here.

Throughput and latency: the median over rounds of each round's figure. CPU per probe: the
server's CPU time over all rounds divided by all requests (one 4 s run is 400 of /proc's 10 ms
ticks; the sum over rounds is steadier), with the kernel's share.
"""

import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

REFERENCE = "go"


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return round(statistics.median(kept), 1) if kept else None


def _group(runs: Sequence[Dict[str, Any]], kind: str, key: str) -> Dict[Any, List[Dict[str, Any]]]:
    out: Dict[Any, List[Dict[str, Any]]] = {}
    for run in runs:
        if run.get("kind") == kind and "error" not in run:
            out.setdefault(run[key] if key != "peer+connections" else (
                run["peer"], run["connections"]), []).append(run)
    return out


def _cpu(group: Sequence[Dict[str, Any]], served: str) -> Tuple[Optional[float], Optional[int]]:
    cpu = sum(r["server_cpu_s"] for r in group)
    n = sum(r[served] for r in group)
    kernel = sum(r["server_sys_s"] for r in group)
    return (round(cpu * 1e6 / n, 1) if n else None,
            round(100.0 * kernel / cpu) if cpu > 0 else None)


def summarize(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """{"compare": peer -> figures, "ratios": peer -> ÷ Go, "connections", "checks"}."""
    compare: Dict[str, Dict[str, Any]] = {}
    for peer, group in _group(runs, "throughput", "peer").items():
        cpu, kernel = _cpu(group, "requests")
        compare[peer] = {"rounds": len(group), "requests_per_second": _median(
            [r["requests_per_second"] for r in group]), "cpu_us_per_probe": cpu,
            "probes_per_cpu_second": round(1e6 / cpu) if cpu else None,
            "core_busy_pct": _median([100.0 * r["server_cpu_s"] / r["seconds"] for r in group]),
            "kernel_pct": kernel, "cpu_us_per_probe_by_round": [
                r["server_cpu_us_per_probe"] for r in group],
            "requests_per_second_by_round": [r["requests_per_second"] for r in group],
            "loadavg_by_round": [r["loadavg"][1] for r in group]}
    for peer, group in _group(runs, "latency", "peer").items():
        compare.setdefault(peer, {}).update(
            p50_us=_median([r["p50_us"] for r in group]),
            p99_us=_median([r["p99_us"] for r in group]),
            latency_cpu_us_per_probe=_cpu(group, "probes")[0])
    ratios: Dict[str, Dict[str, Optional[float]]] = {}
    base = compare.get(REFERENCE, {})
    for peer, row in compare.items():
        ratios[peer] = {f: (round(row[f] / base[f], 2) if row.get(f) and base.get(f) else None)
                        for f in ("requests_per_second", "probes_per_cpu_second",
                                  "cpu_us_per_probe", "p50_us", "p99_us")}
    connections = {}
    for (peer, conns), group in _group(runs, "connections", "peer+connections").items():
        connections["%s c=%d" % (peer, conns)] = {
            "peer": peer, "connections": conns,
            "requests_per_second": _median([r["requests_per_second"] for r in group]),
            "cpu_us_per_probe": _cpu(group, "requests")[0],
            "p50_us": _median([r.get("p50_us") for r in group]),
            "p99_us": _median([r.get("p99_us") for r in group])}
    checks = {}
    for count, group in _group(runs, "checks", "checks").items():
        checks[str(count)] = {"checks": count, "requests_per_second": _median(
            [r["requests_per_second"] for r in group]),
            "cpu_us_per_probe": _cpu(group, "requests")[0],
            "idle_cpu_pct": _median([r["idle_cpu_pct"] for r in group])}
    return {"compare": compare, "ratios": ratios, "connections": connections, "checks": checks}


def _cell(value: Any, digits: int = 0) -> str:
    return "–" if value is None else ("{:,.%df}" % digits).format(value)


def _ratio(value: Optional[float]) -> str:
    return "–" if value is None else "%.2f×" % value


def compare_table(summary: Dict[str, Any], labels: Dict[str, str]) -> List[str]:
    """Each server's throughput, CPU per probe and kubelet-style latency, and ÷ Go."""
    lines = ["| server | probes/s (wrk -c8) | server core busy | probes per CPU-second | "
             "CPU µs/probe | of it kernel | p50 µs (ab -c1) | p99 µs | probes/s ÷ Go | "
             "per CPU-second ÷ Go | CPU/probe ÷ Go | p50 ÷ Go | p99 ÷ Go |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for peer, label in labels.items():
        row = summary["compare"].get(peer)
        if not row:
            continue
        rat = summary["ratios"].get(peer, {})
        lines.append("| %s | %s | %s%% | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, _cell(row.get("requests_per_second")), _cell(row.get("core_busy_pct")),
            _cell(row.get("probes_per_cpu_second")), _cell(row.get("cpu_us_per_probe"), 1),
            "–" if row.get("kernel_pct") is None else "%d%%" % row["kernel_pct"],
            _cell(row.get("p50_us")), _cell(row.get("p99_us")),
            _ratio(rat.get("requests_per_second")), _ratio(rat.get("probes_per_cpu_second")),
            _ratio(rat.get("cpu_us_per_probe")), _ratio(rat.get("p50_us")),
            _ratio(rat.get("p99_us"))))
    return lines


def rounds_table(summary: Dict[str, Any], labels: Dict[str, str]) -> List[str]:
    """Every round's probes/s and CPU per probe, with the load average after it."""
    lines = ["| server | probes/s by round | CPU µs/probe by round | load after each |",
             "|---|---|---|---|"]
    for peer, label in labels.items():
        row = summary["compare"].get(peer)
        if row and "requests_per_second_by_round" in row:
            lines.append("| %s | %s | %s | %s |" % (
                label, ", ".join(_cell(v) for v in row["requests_per_second_by_round"]),
                ", ".join(_cell(v, 1) for v in row["cpu_us_per_probe_by_round"]),
                ", ".join(row["loadavg_by_round"])))
    return lines


def scaling_tables(summary: Dict[str, Any], labels: Dict[str, str]) -> List[str]:
    """Figures by concurrent connections (each scaling peer) and by checks configured."""
    lines: List[str] = []
    rows = sorted(summary["connections"].values(), key=lambda r: (r["connections"], r["peer"]))
    if rows:
        lines += ["### By concurrent connections (`wrk -t1 -cN`, same pinning)", "",
                  "| connections | server | probes/s | CPU µs/probe | p50 µs | p99 µs |",
                  "|---:|---|---:|---:|---:|---:|"]
        for r in rows:
            lines.append("| %d | %s | %s | %s | %s | %s |" % (
                r["connections"], labels.get(r["peer"], r["peer"]),
                _cell(r["requests_per_second"]), _cell(r["cpu_us_per_probe"], 1),
                _cell(r["p50_us"]), _cell(r["p99_us"])))
        lines.append("")
    checks = sorted(summary["checks"].values(), key=lambda r: r["checks"])
    if checks:
        lines += ["### By checks configured (probed, `tcp` checks polling every second)", "",
                  "| checks | probes/s (wrk -c8) | CPU µs/probe | CPU with no probes |",
                  "|---:|---:|---:|---:|"]
        for r in checks:
            lines.append("| %d | %s | %s | %s%% |" % (
                r["checks"], _cell(r["requests_per_second"]), _cell(r["cpu_us_per_probe"], 1),
                _cell(r["idle_cpu_pct"], 1)))
        lines.append("")
    return lines


def render(result: Dict[str, Any], labels: Dict[str, str]) -> str:
    """The markdown of one per-core run."""
    summary = result["summary"]
    shown = {k: v for k, v in labels.items() if k in summary["compare"]}
    versions = ", ".join("%s %s" % kv for kv in sorted(result["versions"].items()))
    out = ["# Per core: probed next to Go, nginx and Python servers", "",
           "`%s`: each server pinned to CPU 0, the clients to CPU 1; %d alternating rounds of "
           "`wrk -t1 -c8 -d%ds` (kubelet headers, `Connection: close`: a new connection per "
           "probe) and `ab -c 1 -n 2000` (kubelet-style latency, connect to last byte). "
           "%s, %d CPUs (%s), kernel %s; probed %s (copy sha256 %s). Load average %s before, "
           "%s after; %.0fs in all." % (
               result["command"], result["rounds"], result["wrk_seconds"],
               "Medians over rounds", result["machine"]["cpus"], result["machine"]["cpu_model"],
               result["machine"]["kernel"], result["machine"]["probed_commit"],
               result["source_sha256"], result["loadavg"]["before"],
               result["loadavg"]["after"], result["seconds"]),
           "", "Versions: " + versions, ""]
    out += compare_table(summary, shown) + [""]
    out += ["Server core busy: the server's CPU time ÷ the run's wall time. Below about 95% the "
            "one-core client could not keep the server busy, and probes/s measures the client; "
            "probes per CPU-second (1 ÷ CPU per probe) is then what the server's core can do.",
            ""]
    out += ["Every round (the machine is shared: the load average says how busy it was):", ""]
    out += rounds_table(summary, shown) + [""]
    out += scaling_tables(summary, labels)
    if result["notes"]:
        out += ["Notes:", ""] + ["- " + n for n in result["notes"]] + [""]
    return "\n".join(out).rstrip() + "\n"
