"""The gpu reader: one NVML session per library, read in a thread of its own and shared by the
gpu checks of one daemon (through `CheckResources.gpus`).

Every NVML call happens in the reader's thread, never on the event loop: Xid events are taken
with the event wait at timeout 0 (it never sleeps), but any NVML call can hang on a sick driver
(a GSP timeout, a GPU falling off the bus), and the probe server must keep answering. The loop
side awaits a read for at most the check's timeout; a read that hangs stays the only one in
flight (later polls say so instead of piling threads up). The thread is a daemon: a hung
driver never holds up probed's exit.

Events are remembered per GPU from the moment probed registered for them: faults a server
restart fixes until the engine sees the backend restart (`forget_restart`), the others for as
long as probed runs (their remedy, a GPU reset or a reboot, takes the pod with it). Missing
library: the snapshot says so and the checks pass; it is looked for once.
"""

import asyncio
import concurrent.futures
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from .gpufaults import (
    NOTE,
    RECOVERY_ACTIONS,
    RESET,
    DeviceFacts,
    Fault,
    FaultMemory,
    classify_xid,
    xid_text,
)
from .nvml import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_DRAM_RETIREMENT_FAILURE,
    EVENT_GPU_UNAVAILABLE,
    EVENT_RECOVERY_ACTION,
    EVENT_XID,
    FI_DEV_GET_GPU_RECOVERY_ACTION,
    GPU_GONE_CODES,
    NVML_LIBRARY,
    FunctionMissing,
    NVMLCallError,
    NVMLEvent,
    NVMLLibrary,
    NVMLMissing,
)

GPU_MAX_DEVICES = 64  # GPUs one reader watches (a node has at most 8-16)
GPU_MAX_EVENTS_PER_READ = 1024  # an event storm is drained over several polls
GPU_MAX_QUEUED = 4  # NVML jobs waiting behind a hung one before a poll gives up at once
WATCHED_EVENTS = (EVENT_XID | EVENT_DOUBLE_BIT_ECC | EVENT_DRAM_RETIREMENT_FAILURE
                  | EVENT_GPU_UNAVAILABLE | EVENT_RECOVERY_ACTION)
EVENT_FAULTS = {EVENT_DOUBLE_BIT_ECC: (RESET, "double-bit ECC error event"),
                EVENT_DRAM_RETIREMENT_FAILURE: (RESET, "row remapping failure event"),
                EVENT_GPU_UNAVAILABLE: (RESET, "GPU unavailable event"),
                EVENT_RECOVERY_ACTION: (NOTE, "recovery action changed event")}


class GPUSnapshot(NamedTuple):
    """One read of every GPU NVML enumerates, or why there is none."""

    available: bool
    note: str  # why NVML is not read (no driver, init failed); "" when available
    driver: str
    devices: Tuple[DeviceFacts, ...]
    events: str  # "" while Xid events are read, else why not
    generation: int  # the reader's forget count when the read was asked for
    taken_at: float


class GPUReadTimeout(Exception):
    """NVML did not answer within the check's timeout (the read goes on in its thread)."""


class Device:
    """One enumerated GPU and what the reader learned about reading it."""

    def __init__(self, index: int, handle: Optional[int], uuid: str, gone: str = "") -> None:
        self.index = index
        self.handle = handle
        self.uuid = uuid
        self.gone = gone  # set when enumeration already found it lost
        self.ecc: Optional[bool] = None
        self.missing: Dict[str, str] = {}  # reading -> "function: why", skipped from now on


class NVMLSession:
    """NVML as the reader's thread sees it: opened on the first read, events registered once,
    then every read drains events and reads each GPU's state. Only that thread touches it."""

    def __init__(self, path: str = NVML_LIBRARY, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.path = path
        self.clock = clock
        self.lib: Optional[NVMLLibrary] = None
        self.absent = ""  # why the library cannot be loaded; never retried
        self.driver = ""
        self.devices: Optional[List[Device]] = None
        self.by_handle: Dict[int, int] = {}
        self.event_set = 0
        self.unregistered = ""  # why events are not read at all, or not on some GPUs
        self.draining = ""  # what the last drain ran into ("" when it emptied the set)
        self.memory = FaultMemory(clock)

    def read(self, generation: int) -> GPUSnapshot:
        """Drain events, read every GPU; or say why NVML is not there."""
        why = self._open()
        if why or self.devices is None:
            return GPUSnapshot(False, why, "", (), "", generation, self.clock())
        self._drain()
        facts = tuple(self._facts(d) for d in self.devices)
        events = "; ".join(n for n in (self.unregistered, self.draining) if n)
        return GPUSnapshot(True, "", self.driver, facts, events, generation, self.clock())

    def forget_restart(self) -> None:
        """Take the events that came before the restart, then drop what a restart fixes."""
        if self.devices is not None:
            self._drain()
        self.memory.forget_restart()

    def close(self) -> None:
        """Free the event set and shut NVML down (tests; the daemon never closes)."""
        if self.lib is not None and self.devices is not None:
            try:
                if self.event_set:
                    self.lib.free_event_set(self.event_set)
                self.lib.shutdown()
            except (FunctionMissing, NVMLCallError):
                pass
        self.devices, self.event_set = None, 0

    # --- opening ----------------------------------------------------------------------------

    def _open(self) -> str:
        if self.devices is not None or self.absent:
            return self.absent
        if self.lib is None:
            try:
                self.lib = NVMLLibrary(self.path)
            except NVMLMissing as exc:
                self.absent = "no NVIDIA driver (%s)" % exc
                return self.absent
        try:
            self.lib.init()  # retried on the next read: the driver may still be loading
        except (NVMLCallError, FunctionMissing) as exc:
            return "NVML did not start, GPU faults are not read: %s" % exc
        try:
            self.driver = self.lib.driver_version()
        except (NVMLCallError, FunctionMissing):
            self.driver = "unknown"
        try:
            count = min(self.lib.device_count(), GPU_MAX_DEVICES)
        except (NVMLCallError, FunctionMissing) as exc:
            return "NVML cannot count the GPUs: %s" % exc
        self.devices = [self._enumerate(self.lib, i) for i in range(count)]
        self.by_handle = {d.handle: d.index for d in self.devices if d.handle}
        self._register(self.lib)
        return ""

    def _enumerate(self, lib: NVMLLibrary, index: int) -> Device:
        try:
            handle = lib.handle(index)
            device = Device(index, handle, lib.uuid(handle))
        except (NVMLCallError, FunctionMissing) as exc:
            return Device(index, None, "", gone=str(exc))
        try:
            device.ecc = lib.ecc_enabled(handle)
        except FunctionMissing as exc:
            device.missing["ecc"] = str(exc)
        except NVMLCallError as exc:
            device.missing["ecc"] = str(exc)  # a lost GPU shows in the per-poll reads
        return device

    def _register(self, lib: NVMLLibrary) -> None:
        if not (lib.has("nvmlEventSetWait_v2") or lib.has("nvmlEventSetWait")):
            self.unregistered = "Xid events not read: nvmlEventSetWait not in this driver"
            return
        try:
            self.event_set = lib.event_set()
        except (NVMLCallError, FunctionMissing) as exc:
            self.unregistered = "Xid events not read: %s" % exc
            return
        refused = []
        for d in self.devices or ():
            if d.handle and not self._register_device(lib, d):
                refused.append("GPU %d" % d.index)
        if refused:
            self.unregistered = "Xid events not read on %s: not supported" % ", ".join(refused)

    def _register_device(self, lib: NVMLLibrary, d: Device) -> bool:
        assert d.handle
        mask = WATCHED_EVENTS
        try:
            mask &= lib.supported_events(d.handle)
        except (NVMLCallError, FunctionMissing):
            pass  # register what we want; NOT_SUPPORTED then falls back to Xids alone
        # nvml.h: when one requested type is unsupported, none is registered: fall back.
        for attempt in (mask, EVENT_XID):
            try:
                lib.register_events(d.handle, attempt, self.event_set)
                return bool(attempt & EVENT_XID)
            except (NVMLCallError, FunctionMissing):
                continue
        return False

    # --- each read --------------------------------------------------------------------------

    def _drain(self) -> None:
        if not self.event_set or self.lib is None:
            return
        for _ in range(GPU_MAX_EVENTS_PER_READ):
            try:
                event = self.lib.next_event(self.event_set)
            except (NVMLCallError, FunctionMissing) as exc:
                self.draining = "Xid events: %s" % exc  # tried again on the next read
                return
            if event is None:
                self.draining = ""
                return
            self._remember(event)
        self.draining = "over %d events in one poll: the rest are read next poll" % (
            GPU_MAX_EVENTS_PER_READ)

    def _remember(self, event: NVMLEvent) -> None:
        index = self.by_handle.get(event.handle or 0)
        if index is None:
            return
        if event.event_type & EVENT_XID:
            self.memory.add(index, classify_xid(event.data), xid_text(event.data), event.data)
        for bit, (cls, text) in EVENT_FAULTS.items():
            if event.event_type & bit:
                self.memory.add(index, cls, text, None)

    def _facts(self, d: Device) -> DeviceFacts:
        faults = self.memory.faults(d.index)
        readings: List[Tuple[str, Any]] = []
        gone = d.gone
        if d.handle is not None and self.lib is not None:
            for name, read in (("ecc", self._read_ecc), ("row_remap", self._read_remap),
                               ("recovery_action", self._read_recovery)):
                if name in d.missing:
                    continue
                try:
                    read(self.lib, d, faults, readings)
                except FunctionMissing as exc:
                    d.missing[name] = str(exc)
                except NVMLCallError as exc:
                    if exc.code in GPU_GONE_CODES:
                        gone = gone or str(exc)
                    else:
                        readings.append((name + "_error", str(exc)))
        if gone:
            faults.append(Fault(RESET, "NVML cannot reach the GPU (%s)" % gone))
        return DeviceFacts(d.index, d.uuid, tuple(faults), tuple(readings),
                           tuple(sorted(d.missing.values())))

    @staticmethod
    def _read_ecc(lib: NVMLLibrary, d: Device, faults: List[Fault],
                  readings: List[Tuple[str, Any]]) -> None:
        if not d.ecc:
            readings.append(("ecc", "off"))
            return
        assert d.handle
        count = lib.volatile_uncorrected_ecc(d.handle)
        readings.append(("ecc_uncorrected_volatile", count))
        if count:
            faults.append(Fault(RESET, "%d uncorrectable ECC error%s since the driver loaded" % (
                count, "" if count == 1 else "s")))

    @staticmethod
    def _read_remap(lib: NVMLLibrary, d: Device, faults: List[Fault],
                    readings: List[Tuple[str, Any]]) -> None:
        assert d.handle
        corr, unc, pending, failure = lib.remapped_rows(d.handle)
        readings.append(("row_remap", {"correctable": corr, "uncorrectable": unc,
                                       "pending": pending, "failure": failure}))
        if failure:
            faults.append(Fault(RESET, "row remapping failed"))
        if pending:
            faults.append(Fault(RESET, "row remapping pending (a GPU reset applies it)"))

    @staticmethod
    def _read_recovery(lib: NVMLLibrary, d: Device, faults: List[Fault],
                       readings: List[Tuple[str, Any]]) -> None:
        assert d.handle
        value = int(lib.field_value(d.handle, FI_DEV_GET_GPU_RECOVERY_ACTION))
        name = RECOVERY_ACTIONS.get(value, "UNKNOWN_%d" % value)
        readings.append(("recovery_action", name))
        if value:
            faults.append(Fault(RESET, "the driver asks for recovery action %s" % name))


Job = Callable[[], Any]


class GPUReader:
    """One NVML session and the thread that reads it; checks await `read`, the engine's restart
    reaches `forget_restart` through each check's `forget`."""

    def __init__(self, path: str = NVML_LIBRARY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self.session = NVMLSession(path, clock)  # its thread's alone
        self.generation = 0  # bumped by forget_restart: older reads may hold old faults
        self.latest: Optional[GPUSnapshot] = None
        self._inflight: Optional["concurrent.futures.Future[GPUSnapshot]"] = None
        self._queued: List["concurrent.futures.Future[Any]"] = []
        self._forget_queued = False
        import queue  # only a daemon with a gpu check needs it

        self._jobs: Any = queue.SimpleQueue()  # (job, future) pairs; None ends the thread
        self._thread: Optional[threading.Thread] = None

    async def read(self, max_age: float, timeout: float) -> GPUSnapshot:
        """A snapshot no older than `max_age` taken after the last forget; GPUReadTimeout when
        NVML does not answer within `timeout`."""
        snap = None
        for _ in range(2):  # a read asked for before a forget is read again after it
            latest = self.latest
            if (latest is not None and latest.generation == self.generation
                    and self.clock() - latest.taken_at <= max_age):
                return latest
            inflight = self._inflight
            if inflight is None or inflight.done():
                generation = self.generation
                inflight = self._inflight = self._submit(lambda: self.session.read(generation))
            try:
                snap = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(inflight)),
                                              timeout)
            except asyncio.TimeoutError:
                raise GPUReadTimeout("NVML did not answer within %gs (the driver may be hung; "
                                     "the read goes on in its thread)" % timeout) from None
            if self.latest is None or snap.taken_at >= self.latest.taken_at:
                self.latest = snap
            if snap.generation == self.generation:
                return snap
        assert snap is not None
        return snap

    def forget_restart(self) -> None:
        """The backend restarted: remembered faults a restart fixes are dropped (in the thread,
        after the events that came before now are taken)."""
        self.generation += 1
        if not self._forget_queued:
            self._forget_queued = True
            self._submit(self._forget_job, capped=False)  # never refused: at most one queued

    def _forget_job(self) -> None:
        self._forget_queued = False  # a forget from now on needs a job of its own
        self.session.forget_restart()

    def _submit(self, job: Job, capped: bool = True) -> "concurrent.futures.Future[Any]":
        self._queued = [f for f in self._queued if not f.done()]
        if capped and len(self._queued) >= GPU_MAX_QUEUED:
            raise GPUReadTimeout("%d NVML calls are waiting behind one that has not returned "
                                 "(the driver may be hung)" % len(self._queued))
        future: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        self._queued.append(future)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="probed-nvml", daemon=True)
            self._thread.start()
        self._jobs.put((job, future))
        return future

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # the loop side sees it as the read's failure
                future.set_exception(exc)

    def close(self) -> None:
        """Shut NVML down and end the thread (tests; the daemon's reader lives as long as it)."""
        if self._thread is not None:
            done: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
            self._jobs.put((self.session.close, done))
            self._jobs.put(None)
            self._thread.join(timeout=5.0)
            self._thread = None
        else:
            self.session.close()


class GPUReaders:
    """The daemon's gpu readers, one per NVML library path, made on first use (so a daemon
    without a gpu check starts no thread and never imports ctypes)."""

    def __init__(self) -> None:
        self.readers: Dict[str, GPUReader] = {}

    def reader(self, path: str) -> GPUReader:
        """The reader of the library at `path` (shared by every check naming it)."""
        found = self.readers.get(path)
        if found is None:
            found = self.readers[path] = GPUReader(path)
        return found

    def close(self) -> None:
        """Close every reader (tests)."""
        for reader in self.readers.values():
            reader.close()
