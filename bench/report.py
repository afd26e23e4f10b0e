"""Turn the runs of a bench into medians, ratios and markdown. No I/O here.

Latency and probes/s: the median over rounds of each round's p50, p99 and probes/s. CPU per
probe: total CPU time over all rounds divided by total probes (a single run of 2000 probes is
too short for /proc's 10 ms ticks; the sum over rounds is not).
"""

import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

REFERENCES = ("go", "nginx")
SERVER_CPU_KEY = "http c=1, both clients"  # the summary row of server CPU per HTTP probe


def measure_key(client: str, c: int, mode: str) -> str:
    """`http bench c=1` style name of a measure."""
    return "%s %s c=%d" % (mode, client, c)


def summarize(runs: Sequence[Dict[str, Any]], client_fixed_s: Dict[str, float]
              ) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """peer -> measure -> medians over rounds and CPU per probe over all rounds.

    client_fixed_s: a client's CPU seconds per run that do not depend on the probes
    (interpreter start-up), taken off its per-probe CPU."""
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for run in runs:
        if "error" in run:
            continue
        key = measure_key(run["client"], run["c"], run["mode"])
        groups.setdefault((run["peer"], key), []).append(run)
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for (peer, key), group in groups.items():
        probes = sum(r["probes"] for r in group)
        out.setdefault(peer, {})[key] = {
            "rounds": len(group),
            "p50_us": round(statistics.median(r["p50_us"] for r in group), 1),
            "p99_us": round(statistics.median(r["p99_us"] for r in group), 1),
            "p99_best_us": min(r["p99_us"] for r in group),
            "p99_worst_us": max(r["p99_us"] for r in group),
            "probes_per_second": round(statistics.median(
                r["probes_per_second"] for r in group), 1),
            "server_cpu_us_per_probe": _per_probe(sum(r["server_cpu_s"] for r in group), probes),
            "server_kernel_pct": _share(sum(r.get("server_sys_s", 0.0) for r in group),
                                        sum(r["server_cpu_s"] for r in group)),
            "client_cpu_us_per_probe": _per_probe(sum(
                r["client_cpu_s"] - client_fixed_s.get(r["client"], 0.0) for r in group), probes),
            "probes": probes,
        }
    for peer, measures in out.items():
        measures[SERVER_CPU_KEY] = _server_cpu([r for r in runs if r["peer"] == peer and
                                                "error" not in r and r["mode"] == "http" and
                                                r["c"] == 1])
    return out


def _server_cpu(group: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Server CPU per probe and its kernel share over a set of runs."""
    cpu = sum(r["server_cpu_s"] for r in group)
    return {"server_cpu_us_per_probe": _per_probe(cpu, sum(r["probes"] for r in group)),
            "server_kernel_pct": _share(sum(r.get("server_sys_s", 0.0) for r in group), cpu),
            "probes": sum(r["probes"] for r in group)}


def _share(part: float, whole: float) -> Optional[float]:
    return round(100.0 * part / whole) if whole > 0 else None


def _per_probe(seconds: float, probes: int) -> Optional[float]:
    return round(seconds * 1e6 / probes, 1) if probes else None


def ratios(summary: Dict[str, Dict[str, Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """peer -> measure -> {p50_vs_go, probes_per_second_vs_nginx, ...} (peer / reference)."""
    out: Dict[str, Dict[str, Any]] = {}
    for peer, measures in summary.items():
        for key, row in measures.items():
            for ref in REFERENCES:
                base = summary.get(ref, {}).get(key)
                if not base:
                    continue
                for field in ("p50_us", "p99_us", "probes_per_second",
                              "server_cpu_us_per_probe"):
                    if row.get(field) and base.get(field):
                        name = "%s_vs_%s" % (field.replace("_us", ""), ref)
                        out.setdefault(peer, {}).setdefault(key, {})[name] = round(
                            row[field] / base[field], 2)
    return out


def _cell(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    return ("{:,.%df}" % digits).format(value)


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else "%d%%" % value


def _ratio(value: Optional[float]) -> str:
    return "–" if value is None else "%.2f×" % value


def latency_table(summary: Dict[str, Any], labels: Dict[str, str], c_hi: int) -> List[str]:
    """HTTP probes: both clients, medians of per-round p50/p99 and probes/s, server CPU."""
    lines = ["| server | `probed bench` p50 µs | p99 µs | probes/s | `ab` p50 µs | p99 µs | "
             "probes/s | `ab -c %s` probes/s | server CPU µs/probe | of it kernel |" % (
                 c_hi or "N"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for peer, label in labels.items():
        m = summary.get(peer)
        if not m:
            continue
        b, a, t = (m.get(measure_key(cl, c, "http"), {})
                   for cl, c in (("bench", 1), ("ab", 1), ("ab", c_hi)))
        cpu = m.get(SERVER_CPU_KEY, {})
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, _cell(b.get("p50_us")), _cell(b.get("p99_us")),
            _cell(b.get("probes_per_second")), _cell(a.get("p50_us")), _cell(a.get("p99_us")),
            _cell(a.get("probes_per_second")), _cell(t.get("probes_per_second")),
            _cell(cpu.get("server_cpu_us_per_probe"), 1), _pct(cpu.get("server_kernel_pct"))))
    return lines


def ratio_table(rat: Dict[str, Any], labels: Dict[str, str], c_hi: int) -> List[str]:
    """p50 and probes/s of each server divided by Go's and nginx's (latency: >1 is slower)."""
    heads = [("http bench c=1", "p50_vs_%s", "bench p50"), ("http ab c=1", "p50_vs_%s", "ab p50"),
             ("http ab c=1", "probes_per_second_vs_%s", "ab probes/s"),
             ("http ab c=%d" % c_hi, "probes_per_second_vs_%s", "ab -c %d probes/s" % c_hi),
             (SERVER_CPU_KEY, "server_cpu_per_probe_vs_%s", "CPU/probe")]
    cols = [(m, f % ref, "%s ÷ %s" % (h, "Go" if ref == "go" else ref))
            for ref in REFERENCES for m, f, h in heads]
    lines = ["| server | " + " | ".join(c[2] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for peer, label in labels.items():
        if peer in rat:
            lines.append("| %s | %s |" % (label, " | ".join(
                _ratio(rat[peer].get(m, {}).get(f)) for m, f, _ in cols)))
    return lines


def cpu_table(summary: Dict[str, Any], labels: Dict[str, str], base: str) -> List[str]:
    """Server CPU per HTTP probe of the given servers, and each divided by `base`'s."""
    ref = summary.get(base, {}).get(SERVER_CPU_KEY, {}).get("server_cpu_us_per_probe")
    lines = ["| server | CPU µs/probe | of it kernel | ÷ %s |" % labels.get(base, base),
             "|---|---:|---:|---:|"]
    for peer, label in labels.items():
        row = summary.get(peer, {}).get(SERVER_CPU_KEY)
        if row and row.get("server_cpu_us_per_probe") is not None:
            cpu = row["server_cpu_us_per_probe"]
            lines.append("| %s | %s | %s | %s |" % (
                label, _cell(cpu, 1), _pct(row["server_kernel_pct"]),
                _ratio(cpu / ref if ref else None)))
    return lines


def tcp_table(summary: Dict[str, Any], labels: Dict[str, str]) -> List[str]:
    """tcpSocket probes (connect, close) with `probed bench --mode tcp`."""
    lines = ["| server | p50 µs | p99 µs | probes/s | server CPU µs/probe | of it kernel |",
             "|---|---:|---:|---:|---:|---:|"]
    for peer, label in labels.items():
        row = summary.get(peer, {}).get(measure_key("bench", 1, "tcp"))
        if row:
            lines.append("| %s | %s | %s | %s | %s | %s |" % (
                label, _cell(row["p50_us"]), _cell(row["p99_us"]),
                _cell(row["probes_per_second"]), _cell(row["server_cpu_us_per_probe"], 1),
                _pct(row["server_kernel_pct"])))
    return lines


def client_table(summary: Dict[str, Any], labels: Dict[str, str]) -> List[str]:
    """What each client spends per probe (its own CPU), against every server."""
    lines = ["| server | `probed bench` client CPU µs/probe | `ab` client CPU µs/probe |",
             "|---|---:|---:|"]
    for peer, label in labels.items():
        m = summary.get(peer)
        if m:
            b = m.get(measure_key("bench", 1, "http"), {})
            a = m.get(measure_key("ab", 1, "http"), {})
            lines.append("| %s | %s | %s |" % (label, _cell(b.get("client_cpu_us_per_probe"), 1),
                                               _cell(a.get("client_cpu_us_per_probe"), 1)))
    return lines


def profile_lines(profile: Optional[Dict[str, Any]]) -> List[str]:
    """Top functions of probed under cProfile, by own time."""
    if not profile:
        return ["(no profile)"]
    if "error" in profile:
        return ["profile failed: " + profile["error"]]
    lines = ["cProfile (wall clock) of `python3 -m probed` answering %d probes from `probed "
             "bench`: %.2fs profiled, %.2fs of it waiting in epoll; the rest (busy) is split "
             "below by own time. The profiler inflates Python-level calls, and the wall time "
             "of `send` and `close` includes moments when the client they wake runs in "
             "probed's place on a loaded core: read shares and call counts, not µs, and the "
             "kernel share of the CPU tables for what the kernel costs." % (
                 profile["probes"], profile["total_s"], profile["epoll_wait_s"]), "",
             "| function | calls per probe | own % of busy | cumulative % of busy |",
             "|---|---:|---:|---:|"]
    for row in profile["top"]:
        cum = "(includes epoll wait)" if row["cum_pct"] is None else "%.1f" % row["cum_pct"]
        name = row["function"].replace("|", "\\|")
        lines.append("| `%s` | %.2f | %.1f | %s |" % (
            name, row["calls_per_probe"], row["own_pct"], cum))
    return lines


def render_markdown(result: Dict[str, Any], labels: Dict[str, str],
                    python_labels: Dict[str, str]) -> str:
    """The results page: setup, notes, and the tables (labels: server key -> name, in order;
    python_labels: the Python servers, compared with probed for CPU)."""
    c_hi = result["config"]["throughput_c"]
    summary, rat = result["summary"], result["ratios"]
    cfg, mach = result["config"], result["machine"]
    out = ["# probed bench, %s" % result["date"], "",
           "`%s`: %d rounds × every server × %d probes per client (order rotating per round), "
           "loopback, %d CPUs (%s), kernel %s. probed %s, copied at start (sha256 of the copy "
           "%s). Total %.0fs; load average %s before, %s after." % (
               cfg["command"], cfg["rounds_done"], cfg["n"], mach["cpus"], mach["cpu_model"],
               mach["kernel"], mach["probed_commit"], result["source_sha256"],
               result["seconds"], result["loadavg"]["before"], result["loadavg"]["after"]), "",
           "Versions: " + ", ".join("%s %s" % kv for kv in sorted(result["versions"].items())),
           ""]
    if result["notes"]:
        out += ["Notes:", ""] + ["- " + n.replace("\n", " ") for n in result["notes"]] + [""]
    out += ["## HTTP probes, kubelet style (new connection per probe, Connection: close)", "",
            "Medians over rounds of each round's p50, p99 and probes/s. Server CPU: its total "
            "CPU time over all c=1 runs ÷ probes.", ""]
    out += latency_table(summary, labels, c_hi) + [""]
    out += _hung_lines(summary, labels)
    out += ["## Ratios (server ÷ Go net/http, server ÷ nginx)", "",
            "Latency ratio > 1: slower than the reference. Probes/s ratio < 1: fewer.", ""]
    out += ratio_table(rat, labels, c_hi) + [""]
    out += ["## Server CPU per HTTP probe: probed and the Python servers", "",
            "User + system time from /proc/<pid>/stat over every c=1 HTTP run (both clients) "
            "÷ probes; kernel = system time's share.", ""]
    out += cpu_table(summary, python_labels, "probed") + [""]
    out += ["## tcpSocket probes (`probed bench --mode tcp`: connect, then close)", ""]
    out += tcp_table(summary, labels) + [""]
    out += ["## The clients' own cost", "",
            "CPU time of the client process per probe; `probed bench`'s start-up (%.0f ms of "
            "CPU, imports mostly, measured with one-probe runs) is taken off first." % (
                1000 * result["client_startup_cpu_s"]), ""]
    out += client_table(summary, labels) + [""]
    out += ["## Where probed's time goes", ""] + profile_lines(result["profile"]) + [""]
    problems = [r for r in result["runs"] if r.get("error") or r.get("problems")]
    if problems:
        out += ["## Runs with problems", ""] + ["- round %s %s %s: %s" % (
            r["round"] + 1, r["peer"], measure_key(r["client"], r["c"], r["mode"]),
            r.get("error") or "; ".join(r["problems"])) for r in problems] + [""]
    return "\n".join(out)


def _hung_lines(summary: Dict[str, Any], labels: Dict[str, str]) -> List[str]:
    """Probe latency of probed with its backend hung, relative to not hung; p99 spread."""
    hung, calm = summary.get("probed_hung", {}), summary.get("probed", {})
    parts = []
    for key in ("http bench c=1", "http ab c=1"):
        if key in hung and key in calm:
            h, c = hung[key], calm[key]
            parts.append("`%s`: p50 %.2f×, median p99 %.2f×, best-round p99 %.2f×" % (
                key.split()[1], h["p50_us"] / c["p50_us"], h["p99_us"] / c["p99_us"],
                h["p99_best_us"] / c["p99_best_us"]))
    lines = []
    if parts:
        lines += ["Backend hung ÷ not hung (probed): " + "; ".join(parts) + ". Its polls time "
                  "out after 2s, one after another, while every probe is answered from the "
                  "cache (503 `timed out`).", ""]
    abc1 = {peer: m["http ab c=1"] for peer, m in summary.items() if "http ab c=1" in m}
    spread = ["%s %s–%s" % (label, _us(abc1[peer]["p99_best_us"]), _us(abc1[peer]["p99_worst_us"]))
              for peer, label in labels.items() if peer in abc1]
    if spread:
        lines += ["p99 from round to round (`ab`, best–worst µs): " + ", ".join(spread) +
                  ". Other work on the machine moves a single round's p99 by several ms; "
                  "p50 is the steady number.", ""]
    return lines


def _us(value: float) -> str:
    return "{:,.0f}".format(value)
