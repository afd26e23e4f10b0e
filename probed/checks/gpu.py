"""Check kind `gpu`: NVIDIA GPU faults read through NVML (ctypes), on the GPUs the server uses.

A check belongs to groups, and `judge` cannot tell which group asks, so the two answers are
two checks sharing one reader (`CheckResources.gpus`): `faults=restart` in `live` fails on
faults a server restart fixes (Xid 13, 31, 94: the process that hit them is broken), so the
kubelet restarts the server container; `faults=all` in `ready` also fails on faults only a GPU
reset or a node reboot fixes, and says that a restart cannot. `faults=all` or `reset` in
`live` is refused: it would restart a server that a restart cannot help.
No NVML (a CPU node, no driver in the container, nvmlInit refused): the check passes and says
why; a broken GPU still fails the server's own checks.
"""

import os
from typing import Any, Dict, Mapping, Optional, Tuple

from ..gpufaults import (
    RESTART,
    device_json,
    environment_devices,
    judge_devices,
    parse_device_list,
    parse_fault_mode,
    parse_xid_list,
    select_devices,
)
from ..gpureader import GPUReadTimeout
from ..nvml import NVML_LIBRARY
from ..values import ConfigError
from .base import Check, CheckResources, CheckSpec, Observation, Param

GPU_VISIBILITY_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
GPU_MAX_AGE = 1.0  # a read this fresh is shared by the live and ready checks of one round


class GPUCheck(Check):
    """Passes while the chosen GPUs show no fault of the kind `faults=` names."""

    kind = "gpu"
    default_probes = frozenset(("ready",))
    default_interval = 5.0
    default_timeout = 5.0
    params = {
        "faults": Param(parse_fault_mode, default="all", overridable=True,
                        help="which faults fail it: restart (those a server restart fixes; "
                             "the only choice in live), reset (GPU reset or reboot), all"),
        "devices": Param(parse_device_list, default=(),
                         help="auto (CUDA_VISIBLE_DEVICES, else NVIDIA_VISIBLE_DEVICES, else "
                              "all), all, or NVML indices and UUIDs: 0,1 or GPU-8f3e..."),
        "lib": Param(str, default=NVML_LIBRARY, help="the NVML library to load"),
        "ignore-xids": Param(parse_xid_list, default=frozenset(), overridable=True,
                             help="Xids that fail nothing (e.g. 13,31 on a GPU shared with "
                                  "other pods)"),
    }

    def __init__(self, spec: CheckSpec, resources: Optional[CheckResources] = None) -> None:
        super().__init__(spec, resources)
        if "live" in spec.probes and self.config["faults"] != RESTART:
            raise ConfigError("%s (gpu): faults=%s in probes=live would restart the server for "
                              "faults a restart cannot fix (expected faults=restart in live)" % (
                                  spec.origin, self.config["faults"]))
        # Read once: the server's container was given its GPUs when it started.
        self.env = {k: os.environ[k] for k in GPU_VISIBILITY_VARIABLES if k in os.environ}
        self.reader = self.resources.gpus.reader(self.config["lib"])

    def target(self) -> str:
        shown = self.spec.shown.get("devices", "auto")
        return "NVML %s, GPUs %s" % (self.config["lib"], shown)

    async def observe(self) -> Observation:
        try:
            snap = await self.reader.read(min(self.spec.interval / 2, GPU_MAX_AGE),
                                          self.spec.timeout)
        except GPUReadTimeout as exc:
            return Observation(False, str(exc))
        if not snap.available:
            return Observation(True, snap.note, 0.0, detail={"nvml": snap.note})
        selectors, source = self.config["devices"], "devices=%s" % self.spec.shown.get(
            "devices", "")
        if not selectors:
            selectors, source = environment_devices(self.env, len(snap.devices))
        chosen, missing = select_devices(snap.devices, selectors)
        detail: Dict[str, Any] = {"driver": snap.driver, "selected_by": source,
                                  "gpus": [device_json(d) for d in chosen]}
        if missing:
            detail["not_visible"] = missing
        if snap.events:
            detail["events"] = snap.events
        return Observation(True, "", float(len(chosen)), detail=detail,
                           raw=(tuple(chosen), tuple(missing), source))

    def judge(self, obs: Observation, config: Mapping[str, Any], was_ok: bool) -> Tuple[bool, str]:
        if obs.raw is None:
            # No reading. Without NVML it passes; a hung or failed read fails ready, but it is
            # no evidence that restarting the server would help, so it never fails live.
            return obs.ok or config["faults"] == RESTART, obs.reason
        chosen, missing, source = obs.raw
        ok, reason = judge_devices(chosen, config["faults"], config["ignore-xids"])
        if ok and not chosen:
            reason = "no GPU to watch (%s)" % source
        if ok and missing:
            reason += "; not visible to NVML here: %s (%s)" % (", ".join(missing), source)
        return ok, reason

    def forget(self) -> None:
        self.reader.forget_restart()
