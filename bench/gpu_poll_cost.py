"""What the gpu check costs per poll, against the libnvidia-ml.so.1 the dynamic loader finds
(the real driver on a GPU machine; the fake of tests/fakenvml when bench/gpu_device_check.sh
runs with FAKE_NVML=1).

Three numbers over N polls each, in microseconds (median, p90, p99, max):
- nvml_read: one NVMLSession.read() in this thread: the event drain (waits at timeout 0), then
  per GPU the volatile uncorrected ECC count, the remapped rows and the recovery-action field,
  and the facts built from them; this is what the reader's thread spends;
- check_poll: one poll as the engine runs it (poll_once: observe under its deadline): the read
  handed to the reader's thread, the result back on the event loop, the GPUs selected and the
  observation built; what one gpu check costs when its read is not shared;
- shared_poll: the second gpu check of a round (gpu-ready after gpu-live) reusing that read.

Usage: python3 bench/gpu_poll_cost.py [--polls N] [--lib PATH] [--json]
"""

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from probed.checks.base import CheckResources  # noqa: E402
from probed.checkspecs import build_checks  # noqa: E402
from probed.scheduler import poll_once  # noqa: E402
from probed.gpureader import NVMLSession  # noqa: E402
from probed.nvml import NVML_LIBRARY  # noqa: E402


def summary(samples_ns: List[int]) -> Dict[str, float]:
    """Median, p90, p99 and max of nanosecond samples, in microseconds."""
    s = sorted(samples_ns)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] / 1000.0, 1)

    return {"median_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99),
            "max_us": round(s[-1] / 1000.0, 1)}


def time_reads(lib: str, polls: int) -> Dict[str, Any]:
    session = NVMLSession(lib)
    first = session.read(0)
    if not first.available:
        return {"nvml": first.note}
    samples = []
    for _ in range(polls):
        t0 = time.perf_counter_ns()
        session.read(0)
        samples.append(time.perf_counter_ns() - t0)
    session.close()
    return dict(summary(samples), gpus=len(first.devices), driver=first.driver,
                uuids=[d.uuid for d in first.devices])


async def time_polls(lib: str, polls: int) -> Dict[str, Any]:
    resources = CheckResources()
    fresh, shared = build_checks([
        # interval 1us: every poll reads NVML again (no sharing window)
        {"kind": "gpu", "name": "gpu-live", "lib": lib, "faults": "restart", "probes": "live",
         "interval": "1us"},
        # interval 10s: it reuses a read younger than 1 s, as gpu-ready does in a daemon
        {"kind": "gpu", "name": "gpu-ready", "lib": lib, "probes": "ready", "interval": "10s"},
    ], ["bench", "bench"], resources)
    await poll_once(fresh)  # opens NVML, registers events, starts the reader's thread
    own, reuse = [], []
    for _ in range(polls):
        t0 = time.perf_counter_ns()
        obs, _ = await poll_once(fresh)
        t1 = time.perf_counter_ns()
        await poll_once(shared)
        own.append(t1 - t0)
        reuse.append(time.perf_counter_ns() - t1)
    verdict = fresh.judge(obs, fresh.config, True)
    resources.gpus.close()
    return {"check_poll": summary(own), "shared_poll": summary(reuse),
            "verdict": {"ok": verdict[0], "reason": verdict[1]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--lib", default=NVML_LIBRARY)
    parser.add_argument("--json", action="store_true", help="one JSON object, nothing else")
    args = parser.parse_args()
    result: Dict[str, Any] = {"polls": args.polls, "lib": args.lib,
                              "python": sys.version.split()[0]}
    result["nvml_read"] = time_reads(args.lib, args.polls)
    if "nvml" not in result["nvml_read"]:
        result.update(asyncio.run(time_polls(args.lib, args.polls)))
    if args.json:
        print(json.dumps(result))
        return 0
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
