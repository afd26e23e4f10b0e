"""GPU faults: what each one needs (a server restart, or the node's remediation), how long one
is remembered, which GPUs the server uses, and the verdict over what the gpu reader saw. Pure:
no NVML, no I/O; time comes from the clock a caller passes in.

The map from Xid to remedy is NVIDIA's Xid catalogue for Ampere and newer ("Analyzing Xid
Errors with the Xid Catalog", https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html,
column "Resolution Bucket (Immediate Action)"; read through its machine copy in leptonai/gpud
components/accelerator/nvidia/xid/catalog_generated.go, generated 2025-10-29). RESTART_APP
means a restart of the process that hit it fixes it: that fails `live`, so the kubelet restarts
the server container. RESET_GPU, RESTART_BM (reboot the node), RESTART_VM and the DBE / NVLink
workflows need the GPU reset or the node rebooted: that fails `ready` only, since a restart
cannot fix it and the node's remediation (DCGM, NVSentinel, an operator) will. IGNORE and
informational Xids are shown and fail nothing.
"""

from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

RESTART = "restart"  # a server restart fixes it: fails live (and ready: it cannot serve)
RESET = "reset"  # needs a GPU reset or a node reboot: fails ready only
NOTE = "note"  # shown, fails nothing
FAULT_MODES = ("all", RESTART, RESET)  # the gpu check's `faults=` key

# Catalogue bucket RESTART_APP (codes the catalogue marks "Unused" left out). 8 and 43 are both
# "GPU stopped processing": 8 RESTART_APP, 43 IGNORE (it follows the fault that stopped the
# channel). 94 is a *contained* memory error: only the process that touched it dies.
XID_RESTART: FrozenSet[int] = frozenset((
    8, 11, 13, 25, 31, 32, 39, 40, 41, 60, 68, 69, 70, 71, 72, 75, 76, 77, 80, 82, 83, 84, 85,
    86, 88, 89, 94, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 126, 127, 128, 129, 130, 131,
    132, 133, 134, 135, 139))
# Buckets RESET_GPU, RESTART_BM (79: fallen off the bus), RESTART_VM (151), WORKFLOW_XID_48
# (48: double-bit ECC), WORKFLOW_NVLINK_ERR (74) and WORKFLOW_NVLINK5_ERR (144-150).
XID_RESET: FrozenSet[int] = frozenset((
    46, 48, 62, 64, 74, 79, 95, 109, 110, 119, 120, 136, 140, 143, 144, 145, 146, 147, 148, 149,
    150, 151, 155, 156, 158))
XID_NAMES: Dict[int, str] = {
    8: "GPU stopped processing", 13: "Graphics Engine Exception", 31: "GPU memory page fault",
    32: "Invalid or corrupted push buffer stream", 43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors", 46: "GPU stopped processing",
    48: "Double Bit ECC Error", 62: "Internal micro-controller halt",
    63: "GPU memory remapping event", 64: "GPU memory remapping failure", 74: "NVLINK Error",
    79: "GPU has fallen off the bus", 92: "High single-bit ECC error rate",
    94: "Contained memory error", 95: "Uncontained memory error",
    109: "Context Switch Timeout Error", 119: "GSP RPC Timeout", 120: "GSP Error",
    140: "ECC Unrecovered Error", 154: "GPU Recovery Action Changed"}
# nvmlDeviceGpuRecoveryAction_t (nvml.h): any value but NONE asks for the node's remediation.
RECOVERY_ACTIONS: Dict[int, str] = {0: "NONE", 1: "GPU_RESET", 2: "NODE_REBOOT", 3: "DRAIN_P2P",
                                    4: "DRAIN_AND_RESET", 5: "RECOVER_IMEX_DOMAIN"}
RESTART_FIXES = "a server restart fixes this"
RESET_NEEDED = "a restart cannot fix this; the node's remediation will"
REASON_MAX_FAULTS = 3  # faults named in one reason; the rest are counted ("and 2 more")
REASON_MAX_GPUS = 3  # healthy GPUs named with their UUIDs in a passing reason; more: indices
UUID_SHOWN = 12  # characters of a UUID in a reason: "GPU-8f3e2a1b"
GPU_MAX_NOTES = 32  # Xids that fail nothing, remembered per GPU (the latest ones)


class Fault(NamedTuple):
    """One fault of one GPU: its class (RESTART, RESET, NOTE), words, and the Xid if one."""

    cls: str
    text: str
    xid: Optional[int] = None
    times: int = 1
    seconds_ago: Optional[float] = None  # for remembered events: since the last one


class DeviceFacts(NamedTuple):
    """What one poll knows of one GPU (NVML's index inside this container, and UUID)."""

    gpu: int  # NVML's index, inside this container
    uuid: str
    faults: Tuple[Fault, ...]
    readings: Tuple[Tuple[str, Any], ...] = ()  # (name, value) for JSON: ECC count, remap...
    not_read: Tuple[str, ...] = ()  # "nvmlDeviceGetRemappedRows: not in this driver"


def classify_xid(xid: int) -> str:
    """RESTART, RESET or NOTE for an Xid, by the catalogue's immediate action."""
    if xid in XID_RESTART:
        return RESTART
    return RESET if xid in XID_RESET else NOTE


def xid_text(xid: int) -> str:
    """`Xid 13 (Graphics Engine Exception)`."""
    name = XID_NAMES.get(xid)
    return "Xid %d (%s)" % (xid, name) if name else "Xid %d" % xid


def parse_fault_mode(text: str) -> str:
    """The `faults=` key: all, restart or reset."""
    if text not in FAULT_MODES:
        raise ValueError("expected one of: %s" % ", ".join(FAULT_MODES))
    return text


def parse_xid_list(text: str) -> FrozenSet[int]:
    """`13,31`: Xids a check never fails on."""
    out = set()
    for part in text.split(","):
        part = part.strip()
        if part and (not part.isdigit() or int(part) > 0xFFFF):
            raise ValueError("expected Xid numbers, comma-separated, e.g. 13,31")
        if part:
            out.add(int(part))
    return frozenset(out)


class FaultMemory:
    """Faults from events, per GPU: RESTART ones until `forget_restart`, the others for as long
    as probed runs. Bounded: RESTART and RESET keys come from the tables above (76 at most),
    and of the notes (unknown or ignored Xids) only the GPU_MAX_NOTES latest are kept."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.by_device: Dict[int, Dict[Tuple[str, Optional[int]], List[Any]]] = {}

    def add(self, index: int, cls: str, text: str, xid: Optional[int]) -> None:
        """One more occurrence of a fault on GPU `index`."""
        entries = self.by_device.setdefault(index, {})
        entry = entries.get((text, xid))
        if entry is None:
            notes = [k for k, e in entries.items() if e[0] == NOTE]
            if cls == NOTE and len(notes) >= GPU_MAX_NOTES:
                del entries[min(notes, key=lambda k: entries[k][2])]
            entry = entries[(text, xid)] = [cls, 0, 0.0]
        entry[1] += 1
        entry[2] = self.clock()

    def forget_restart(self) -> None:
        """The server restarted: the faults a restart fixes are gone with the old process."""
        for entries in self.by_device.values():
            for key in [k for k, e in entries.items() if e[0] == RESTART]:
                del entries[key]

    def faults(self, index: int) -> List[Fault]:
        """GPU `index`'s remembered faults, oldest key first."""
        now = self.clock()
        return [Fault(cls, text, xid, count, round(now - last, 3))
                for (text, xid), (cls, count, last) in self.by_device.get(index, {}).items()]


# --- which GPUs the server uses -------------------------------------------------------------

DeviceSelector = Tuple[str, str]  # ("index", "0") or ("uuid", "GPU-8f3e" prefix) or ("all", "")
ALL: Tuple[DeviceSelector, ...] = (("all", ""),)


def _selector(item: str) -> Optional[DeviceSelector]:
    if item.isdigit():
        return ("index", str(int(item)))
    if item.startswith("GPU-") and len(item) > 4:
        return ("uuid", item)
    if item.startswith("MIG-GPU-"):  # MIG-<GPU-UUID>/<gi>/<ci>: its parent GPU
        return ("uuid", item[4:].split("/")[0])
    if item.startswith("MIG-"):  # a MIG UUID names no parent: the GPUs this container sees
        return ("all", "")
    return None


def parse_device_list(text: str) -> Tuple[DeviceSelector, ...]:
    """The `devices=` key: `auto` (the environment decides: returns ()), `all`, or a comma list
    of NVML indices and UUIDs (a unique prefix such as GPU-8f3e is enough, as in CUDA)."""
    text = text.strip()
    if text == "auto":
        return ()
    if text == "all":
        return ALL
    out = []
    for item in text.split(","):
        sel = _selector(item.strip())
        if sel is None:
            raise ValueError("expected auto, all, or GPU indices and UUIDs (0,1 or GPU-8f3e...), "
                             "got %r" % item.strip())
        out.append(sel)
    return tuple(out)


def environment_devices(env: Mapping[str, str], nvml_count: int
                        ) -> Tuple[Tuple[DeviceSelector, ...], str]:
    """The GPUs the server in this container uses, as the environment says, and where that came
    from. CUDA_VISIBLE_DEVICES first (indices are CUDA's, which match NVML's when
    CUDA_DEVICE_ORDER=PCI_BUS_ID or the GPUs are alike; like CUDA, an invalid entry hides it
    and all after it). Then NVIDIA_VISIBLE_DEVICES, set by the device plugin: UUIDs match
    exactly; indices are the host's, which NVML renumbers from 0 inside an isolated container,
    so they mean every GPU NVML sees when it sees as many as listed.
    Sources: CUDA's "CUDA Environment Variables" (UUID prefixes, an invalid entry); nvml.h
    nvmlDeviceGetIndex ("may not correlate with ... the CUDA device index"); NVML skips GPUs a
    container may not open and numbers the rest from 0 (NVIDIA/nvidia-docker issues 170, 907);
    NVIDIA_VISIBLE_DEVICES keeps the host's numbers (nvidia-container-toolkit issue 73)."""
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        out = []
        for item in cuda.split(","):
            sel = _selector(item.strip())
            if sel is None:
                break
            out.append(sel)
        return tuple(out), "CUDA_VISIBLE_DEVICES=%s" % cuda
    nvidia = env.get("NVIDIA_VISIBLE_DEVICES")
    if nvidia is None or nvidia.strip() == "all":
        return ALL, "NVIDIA_VISIBLE_DEVICES=all" if nvidia else "every GPU NVML sees"
    shown = "NVIDIA_VISIBLE_DEVICES=%s" % nvidia
    items = [i.strip() for i in nvidia.split(",") if i.strip()]
    if not items or items[0] in ("none", "void"):
        return (), shown
    sels = [_selector(i) for i in items]
    if all(s is not None and s[0] == "index" for s in sels) and len(items) == nvml_count:
        return ALL, shown + " (renumbered from 0 in this container)"
    return tuple(s for s in sels if s is not None), shown


def select_devices(devices: Sequence[DeviceFacts], selectors: Sequence[DeviceSelector]
                   ) -> Tuple[List[DeviceFacts], List[str]]:
    """(the devices the selectors pick, in NVML order; the selectors that matched nothing)."""
    chosen: Dict[int, DeviceFacts] = {}
    missing = []
    for kind, value in selectors:
        if kind == "all":
            hits = list(devices)
        elif kind == "index":
            hits = [d for d in devices if d.gpu == int(value)]
        else:
            hits = [d for d in devices if d.uuid.startswith(value)]
            hits = hits if len(hits) == 1 else [d for d in hits if d.uuid == value]
        if not hits and kind != "all":
            missing.append(value)
        for d in hits:
            chosen[d.gpu] = d
    return [chosen[i] for i in sorted(chosen)], missing


# --- the verdict ----------------------------------------------------------------------------

def counted(fault: Fault, mode: str, ignore: FrozenSet[int]) -> bool:
    """Whether `fault` fails a check with `faults=mode` and `ignore-xids`."""
    if fault.cls == NOTE or (fault.xid is not None and fault.xid in ignore):
        return False
    return mode == "all" or fault.cls == mode


def device_name(d: DeviceFacts) -> str:
    """`GPU 0 (GPU-8f3e2a1b)`."""
    return "GPU %d (%s)" % (d.gpu, d.uuid[:UUID_SHOWN] or "uuid unknown")


def fault_words(f: Fault) -> str:
    """A fault as a reason shows it: `Xid 13 (Graphics Engine Exception) x2`."""
    return f.text + (" x%d" % f.times if f.times > 1 else "")


def judge_devices(devices: Sequence[DeviceFacts], mode: str, ignore: FrozenSet[int]
                  ) -> Tuple[bool, str]:
    """(passes, reason) over the chosen GPUs: the first GPU with counted faults fails the check,
    and the reason says whether a restart fixes it. Node-level faults are named first."""
    for d in devices:
        faults = [f for f in d.faults if counted(f, mode, ignore)]
        if not faults:
            continue
        faults.sort(key=lambda f: f.cls != RESET)
        words = [fault_words(f) for f in faults[:REASON_MAX_FAULTS]]
        if len(faults) > REASON_MAX_FAULTS:
            words.append("and %d more" % (len(faults) - REASON_MAX_FAULTS))
        remedy = RESET_NEEDED if faults[0].cls == RESET else RESTART_FIXES
        return False, "%s: %s: %s" % (device_name(d), ", ".join(words), remedy)
    if len(devices) > REASON_MAX_GPUS:  # a node's eight GPUs: indices; the UUIDs are in JSON
        shown = "GPUs " + ",".join(str(d.gpu) for d in devices)
    else:
        shown = ", ".join(device_name(d) for d in devices) or "none"
    return True, "%d GPU%s, no faults: %s" % (len(devices), "" if len(devices) == 1 else "s",
                                               shown)


def device_json(d: DeviceFacts) -> Dict[str, Any]:
    """One GPU for ?format=json."""
    out: Dict[str, Any] = {"index": d.gpu, "uuid": d.uuid}
    out.update(d.readings)
    out["faults"] = [dict(cls=f.cls, fault=f.text, times=f.times, **(
        {"xid": f.xid} if f.xid is not None else {}), **(
        {"seconds_ago": f.seconds_ago} if f.seconds_ago is not None else {})) for f in d.faults]
    if d.not_read:
        out["not_read"] = list(d.not_read)
    return out
