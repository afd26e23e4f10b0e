"""NVML (`libnvidia-ml.so.1`) through ctypes: the few calls the gpu check makes, nothing else.

ctypes is imported only when a library is loaded, so a daemon without a gpu check never
imports it. Each method makes one NVML call and returns plain Python values; a code other
than NVML_SUCCESS raises `NVMLCallError`, and a function the driver lacks (no such symbol, or
it answers NOT_SUPPORTED / FUNCTION_NOT_FOUND) raises `FunctionMissing`, which callers skip and
name. Signatures, struct layouts and constants follow NVIDIA's nvml.h (NVML_API_VERSION 13,
read in NVIDIA/go-nvml gen/nvml/nvml.h). Must never: block (the only waiting call, the event
wait, is made with timeout 0), or be called from the event loop thread (a sick driver can
hang any call: the gpu reader calls it from its own thread).
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

NVML_LIBRARY = "libnvidia-ml.so.1"
NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_TIMEOUT = 10  # the event wait found nothing
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
MISSING_CODES = frozenset((NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND))
# Codes that are a fact about the GPU, not about the call: the driver lost it or needs a reset.
GPU_GONE_CODES = frozenset((NVML_ERROR_GPU_IS_LOST, NVML_ERROR_RESET_REQUIRED))

# nvmlEventType bits (nvml.h "Event Types").
EVENT_DOUBLE_BIT_ECC = 0x2
EVENT_XID = 0x8
EVENT_DRAM_RETIREMENT_FAILURE = 0x800
EVENT_GPU_UNAVAILABLE = 0x4000
EVENT_RECOVERY_ACTION = 0x8000
MEMORY_ERROR_TYPE_UNCORRECTED = 1  # nvmlMemoryErrorType_t
VOLATILE_ECC = 0  # nvmlEccCounterType_t: reset each time the driver loads
FI_DEV_GET_GPU_RECOVERY_ACTION = 230  # field id; the value is an nvmlDeviceGpuRecoveryAction_t
UUID_BUFFER_SIZE = 96  # NVML_DEVICE_UUID_V2_BUFFER_SIZE
DRIVER_BUFFER_SIZE = 80  # NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE
# nvmlValueType_t -> the nvmlValue_t member that holds it
VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")


class NVMLMissing(Exception):
    """The library cannot be loaded: no NVIDIA driver in this container."""


class FunctionMissing(Exception):
    """This driver lacks the function (older driver) or this GPU does not support it."""

    def __init__(self, function: str, why: str) -> None:
        super().__init__("%s: %s" % (function, why))
        self.function = function
        self.why = why


class NVMLCallError(Exception):
    """An NVML call returned an error code."""

    def __init__(self, function: str, code: int, text: str) -> None:
        super().__init__("%s: %s (NVML error %d)" % (function, text, code))
        self.function = function
        self.code = code


class NVMLEvent(NamedTuple):
    """One event from the event set: which device handle, which type, its data (the Xid)."""

    handle: Optional[int]
    event_type: int
    data: int


def _struct_types(ct: Any) -> Tuple[Any, Any]:
    """nvmlEventData_t and nvmlFieldValue_t as ctypes structures (made per library, so this
    module holds no ctypes state of its own)."""

    class EventData(ct.Structure):
        _fields_ = [("device", ct.c_void_p), ("eventType", ct.c_ulonglong),
                    ("eventData", ct.c_ulonglong), ("gpuInstanceId", ct.c_uint),
                    ("computeInstanceId", ct.c_uint)]

    class Value(ct.Union):
        _fields_ = [("dVal", ct.c_double), ("siVal", ct.c_int), ("uiVal", ct.c_uint),
                    ("ulVal", ct.c_ulong), ("ullVal", ct.c_ulonglong),
                    ("sllVal", ct.c_longlong), ("usVal", ct.c_ushort)]

    class FieldValue(ct.Structure):
        _fields_ = [("fieldId", ct.c_uint), ("scopeId", ct.c_uint),
                    ("timestamp", ct.c_longlong), ("latencyUsec", ct.c_longlong),
                    ("valueType", ct.c_uint), ("nvmlReturn", ct.c_uint), ("value", Value)]

    return EventData, FieldValue


class NVMLLibrary:
    """One loaded NVML library. Not thread-safe by itself: the gpu reader calls it from one
    thread."""

    def __init__(self, path: str = NVML_LIBRARY) -> None:
        import ctypes  # here, not at the top: only a gpu check pays for it

        try:
            self._dll = ctypes.CDLL(path)
        except OSError as exc:
            missing = "No such file" in str(exc)  # dlerror's words: anything else is kept
            raise NVMLMissing("%s not found" % path if missing else str(exc)) from None
        self._ct = ctypes
        self._event_data, self._field_value = _struct_types(ctypes)
        self._functions: Dict[str, Callable[..., int]] = {}

    def has(self, name: str) -> bool:
        """Whether the library exports `name`."""
        try:
            self._function(name)
        except FunctionMissing:
            return False
        return True

    def _function(self, name: str) -> Callable[..., int]:
        fn = self._functions.get(name)
        if fn is None:
            try:
                fn = getattr(self._dll, name)
            except AttributeError:
                raise FunctionMissing(name, "not in this driver") from None
            self._functions[name] = fn  # restype stays c_int: every call returns nvmlReturn_t
        return fn

    def _call(self, name: str, *args: Any) -> None:
        code = self._function(name)(*args)
        if code == NVML_SUCCESS:
            return
        if code in MISSING_CODES:
            raise FunctionMissing(name, "not in this driver" if code == NVML_ERROR_FUNCTION_NOT_FOUND
                                  else "not supported on this GPU")
        raise NVMLCallError(name, code, self.error_text(code))

    def error_text(self, code: int) -> str:
        """nvmlErrorString(code), or a plain fallback."""
        try:
            fn = self._dll.nvmlErrorString
        except AttributeError:
            return "error %d" % code
        fn.restype = self._ct.c_char_p
        text = fn(self._ct.c_int(code))
        return text.decode("utf-8", "replace") if text else "error %d" % code

    # --- the calls --------------------------------------------------------------------------

    def init(self) -> None:
        """nvmlInit_v2."""
        self._call("nvmlInit_v2")

    def shutdown(self) -> None:
        """nvmlShutdown."""
        self._call("nvmlShutdown")

    def driver_version(self) -> str:
        """nvmlSystemGetDriverVersion."""
        buf = self._ct.create_string_buffer(DRIVER_BUFFER_SIZE)
        self._call("nvmlSystemGetDriverVersion", buf, self._ct.c_uint(DRIVER_BUFFER_SIZE))
        return buf.value.decode("utf-8", "replace")

    def device_count(self) -> int:
        """nvmlDeviceGetCount_v2: the devices this process may use (a container sees its own)."""
        count = self._ct.c_uint(0)
        self._call("nvmlDeviceGetCount_v2", self._ct.byref(count))
        return count.value

    def handle(self, index: int) -> int:
        """nvmlDeviceGetHandleByIndex_v2."""
        handle = self._ct.c_void_p()
        self._call("nvmlDeviceGetHandleByIndex_v2", self._ct.c_uint(index),
                   self._ct.byref(handle))
        return handle.value or 0

    def uuid(self, handle: int) -> str:
        """nvmlDeviceGetUUID: `GPU-xxxxxxxx-...`."""
        buf = self._ct.create_string_buffer(UUID_BUFFER_SIZE)
        self._call("nvmlDeviceGetUUID", self._ct.c_void_p(handle), buf,
                   self._ct.c_uint(UUID_BUFFER_SIZE))
        return buf.value.decode("ascii", "replace")

    def ecc_enabled(self, handle: int) -> bool:
        """nvmlDeviceGetEccMode: whether ECC is on now."""
        current, pending = self._ct.c_int(0), self._ct.c_int(0)
        self._call("nvmlDeviceGetEccMode", self._ct.c_void_p(handle), self._ct.byref(current),
                   self._ct.byref(pending))
        return current.value == 1

    def volatile_uncorrected_ecc(self, handle: int) -> int:
        """nvmlDeviceGetTotalEccErrors(UNCORRECTED, VOLATILE): since the driver last loaded."""
        count = self._ct.c_ulonglong(0)
        self._call("nvmlDeviceGetTotalEccErrors", self._ct.c_void_p(handle),
                   self._ct.c_int(MEMORY_ERROR_TYPE_UNCORRECTED), self._ct.c_int(VOLATILE_ECC),
                   self._ct.byref(count))
        return count.value

    def remapped_rows(self, handle: int) -> Tuple[int, int, bool, bool]:
        """nvmlDeviceGetRemappedRows: (correctable rows, uncorrectable rows, pending, failed)."""
        c = self._ct
        corr, unc, pending, failure = c.c_uint(0), c.c_uint(0), c.c_uint(0), c.c_uint(0)
        self._call("nvmlDeviceGetRemappedRows", c.c_void_p(handle), c.byref(corr),
                   c.byref(unc), c.byref(pending), c.byref(failure))
        return corr.value, unc.value, bool(pending.value), bool(failure.value)

    def field_value(self, handle: int, field_id: int) -> float:
        """One nvmlDeviceGetFieldValues field; FunctionMissing when the driver lacks it."""
        value = self._field_value()
        value.fieldId = field_id
        self._call("nvmlDeviceGetFieldValues", self._ct.c_void_p(handle), self._ct.c_int(1),
                   self._ct.byref(value))
        name = "nvmlDeviceGetFieldValues(%d)" % field_id
        if value.nvmlReturn != NVML_SUCCESS:
            code = int(value.nvmlReturn)
            if code in MISSING_CODES or code == 2:  # INVALID_ARGUMENT: a field id it predates
                raise FunctionMissing(name, "not reported by this driver")
            raise NVMLCallError(name, code, self.error_text(code))
        member = VALUE_MEMBERS[value.valueType] if value.valueType < len(VALUE_MEMBERS) else "ullVal"
        return float(getattr(value.value, member))

    def event_set(self) -> int:
        """nvmlEventSetCreate."""
        handle = self._ct.c_void_p()
        self._call("nvmlEventSetCreate", self._ct.byref(handle))
        return handle.value or 0

    def supported_events(self, handle: int) -> int:
        """nvmlDeviceGetSupportedEventTypes: a mask of nvmlEventType bits."""
        mask = self._ct.c_ulonglong(0)
        self._call("nvmlDeviceGetSupportedEventTypes", self._ct.c_void_p(handle),
                   self._ct.byref(mask))
        return mask.value

    def register_events(self, handle: int, mask: int, event_set: int) -> None:
        """nvmlDeviceRegisterEvents: record these events of the device from now on."""
        self._call("nvmlDeviceRegisterEvents", self._ct.c_void_p(handle),
                   self._ct.c_ulonglong(mask), self._ct.c_void_p(event_set))

    def next_event(self, event_set: int) -> Optional[NVMLEvent]:
        """One pending event, or None at once when there is none: nvmlEventSetWait_v2 (or the
        older nvmlEventSetWait) with timeout 0, so it never sleeps."""
        data = self._event_data()
        name = "nvmlEventSetWait_v2" if self.has("nvmlEventSetWait_v2") else "nvmlEventSetWait"
        code = self._function(name)(self._ct.c_void_p(event_set), self._ct.byref(data),
                                    self._ct.c_uint(0))
        if code == NVML_ERROR_TIMEOUT:
            return None
        if code != NVML_SUCCESS:
            raise NVMLCallError(name, code, self.error_text(code))
        return NVMLEvent(data.device, int(data.eventType), int(data.eventData))

    def free_event_set(self, event_set: int) -> None:
        """nvmlEventSetFree."""
        self._call("nvmlEventSetFree", self._ct.c_void_p(event_set))
