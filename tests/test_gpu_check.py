"""The gpu check against a fake `libnvidia-ml.so.1` built from C at test time.

tests/fakenvml/fake_nvml.c is compiled with `cc -shared -fPIC` (a second build leaves out what
an older driver lacks), so every call crosses a real ctypes boundary with nvml.h's signatures
and struct layouts. Each test loads its own copy of the library (its own C statics) and scripts
it through a state file ($FAKE_NVML_STATE) the fake re-reads when it changes; a call log
($FAKE_NVML_LOG) shows what probed called and with which event-wait timeout. Covered: healthy
GPUs; each fault class and the group it fails; functions missing from an older driver; no
library; nvmlInit failing; the GPUs the environment selects; events seen once and remembered
until the backend restarts; a hung driver; the --gpu preset; and a daemon started with --gpu
against the fake, with the vLLM simulator as its server, answering /livez and /readyz.
No C compiler is a failure, not a skip: the tests need one (CI has it).
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from backends import kubelet_probe, wait_for, wait_status
from conftest import REPO, free_port
from probed.checks.base import Check, CheckResources, Observation
from probed.checkspecs import build_checks
from probed.scheduler import poll_once
from probed.gpufaults import environment_devices, parse_device_list, select_devices, DeviceFacts
from probed.presets import gpu_checks
from probed.values import ConfigError

SOURCE = REPO / "tests" / "fakenvml" / "fake_nvml.c"
LIB = "libnvidia-ml.so.1"
XID = 0x8
DBE = 0x2
RESTART_WORDS = "a server restart fixes this"
RESET_WORDS = "a restart cannot fix this; the node's remediation will"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="session")
def fake_builds(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The fake library, built twice: a current driver and an older one."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("cc not found: the gpu check tests build a fake libnvidia-ml.so.1 from "
                    "tests/fakenvml/fake_nvml.c and need a C compiler", pytrace=False)
    builds = {}
    for variant, flags in (("new", []), ("old", ["-DFAKE_OLD_DRIVER"])):
        out = tmp_path_factory.mktemp("fakenvml-" + variant) / LIB
        done = subprocess.run([cc, "-O1", "-Wall", "-Werror", "-shared", "-fPIC", *flags, "-o",
                               str(out), str(SOURCE)], capture_output=True, text=True)
        assert done.returncode == 0, "cc failed: %s" % done.stderr
        builds[variant] = out
    return builds


class FakeGPU:
    """One test's fake NVML: a private copy of the library, its state file and call log."""

    def __init__(self, tmp: Path, build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dir = tmp / "lib"
        self.dir.mkdir()
        self.lib = self.dir / LIB
        shutil.copy(build, self.lib)
        self.state = tmp / "nvml-state"
        self.log = tmp / "nvml-calls.log"
        self.lines: List[str] = []
        monkeypatch.setenv("FAKE_NVML_STATE", str(self.state))
        monkeypatch.setenv("FAKE_NVML_LOG", str(self.log))
        for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
            monkeypatch.delenv(name, raising=False)
        self.resources = CheckResources()

    def write(self, *lines: str) -> None:
        """Replace the whole state."""
        self.lines = list(lines)
        self._flush()

    def add(self, *lines: str) -> None:
        """Append facts (events are delivered in the order they were added)."""
        self.lines += lines
        self._flush()

    def _flush(self) -> None:
        new = self.state.with_name(self.state.name + ".new")
        new.write_text("\n".join(self.lines) + "\n")
        os.replace(new, self.state)  # a new inode: the fake re-reads it

    def check(self, name: str = "gpu", **keys: str) -> Check:
        """A gpu check on this library, built as `--check "gpu ..."` would build it."""
        raw: Dict[str, Any] = {"kind": "gpu", "name": name, "lib": str(self.lib),
                               "interval": "100ms", "timeout": "2s"}
        raw.update({k.replace("_", "-"): v for k, v in keys.items()})
        return build_checks([raw], ["test"], self.resources)[0]

    def calls(self, prefix: str) -> List[str]:
        """Logged calls whose line starts with `prefix`."""
        if not self.log.exists():
            return []
        return [l for l in self.log.read_text().splitlines() if l.startswith(prefix)]

    def close(self) -> None:
        self.resources.gpus.close()


@pytest.fixture
def gpu(tmp_path: Path, fake_builds: Dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGPU]:
    """A current driver's fake NVML."""
    fake = FakeGPU(tmp_path, fake_builds["new"], monkeypatch)
    yield fake
    fake.close()


@pytest.fixture
def old_gpu(fake_builds: Dict[str, Path], gpu: FakeGPU) -> FakeGPU:
    """An older driver's: the `gpu` fixture's files, the library swapped for the old build."""
    shutil.copy(fake_builds["old"], gpu.lib)
    return gpu


def poll(check: Check) -> Observation:
    """One poll as the engine runs it (observe under the deadline), on a fresh loop; after the
    read-sharing window (half the interval), so every poll reads NVML afresh."""
    time.sleep(check.spec.interval / 2 + 0.01)
    return asyncio.run(poll_once(check))[0]


def verdict(check: Check, **overrides: str) -> Tuple[bool, str]:
    """Poll once and judge under the check's config plus parsed overrides."""
    obs = poll(check)
    config = dict(check.config)
    for key, text in overrides.items():
        config[key] = check.parse_override(key, text)
    return check.judge(obs, config, True)


def live_and_ready(fake: FakeGPU) -> Tuple[Check, Check]:
    """The pair the --gpu preset makes: faults=restart in live, faults=all in ready."""
    return (fake.check("gpu-live", faults="restart", probes="live"),
            fake.check("gpu-ready", faults="all", probes="ready"))


TWO_GPUS = ("count 2", "uuid 0 GPU-aaaaaaaa-0000-0000-0000-000000000000",
            "uuid 1 GPU-bbbbbbbb-0000-0000-0000-000000000001")


# --- healthy --------------------------------------------------------------------------------

def test_healthy_gpus_pass_and_show_what_was_read(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS, "remap 0 3 0 0 0", "ecc 1 0", "recovery 0 0")
    live, ready = live_and_ready(gpu)
    assert verdict(live) == (True, "2 GPUs, no faults: GPU 0 (GPU-aaaaaaaa), GPU 1 (GPU-bbbbbbbb)")
    obs = poll(ready)
    assert ready.judge(obs, ready.config, True)[0] is True
    assert obs.value == 2.0
    detail = obs.detail or {}
    assert detail["driver"] == "999.99.99-fake"
    assert detail["selected_by"] == "every GPU NVML sees"
    first = detail["gpus"][0]
    assert first["uuid"] == "GPU-aaaaaaaa-0000-0000-0000-000000000000"
    assert first["ecc_uncorrected_volatile"] == 0
    assert first["row_remap"] == {"correctable": 3, "uncorrectable": 0, "pending": False,
                                  "failure": False}
    assert first["recovery_action"] == "NONE"
    assert first["faults"] == [] and "not_read" not in first and "events" not in detail
    json.dumps(detail)  # ?format=json must be able to show it
    waits = gpu.calls("nvmlEventSetWait_v2 timeout=")
    assert waits and all(w.endswith("timeout=0") for w in waits), waits  # never a blocking wait
    assert len(gpu.calls("nvmlInit_v2")) == 1  # one session for both checks


def test_two_checks_share_one_read_per_round(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS)
    live = gpu.check("gpu-live", faults="restart", probes="live", interval="10s")
    ready = gpu.check("gpu-ready", probes="ready", interval="10s")

    async def one_round() -> None:
        await poll_once(live)
        await poll_once(ready)

    asyncio.run(one_round())
    assert len(gpu.resources.gpus.readers) == 1
    assert len(gpu.calls("nvmlDeviceGetTotalEccErrors 0")) == 1  # the second check reused it


# --- fault classes and their groups ---------------------------------------------------------

@pytest.mark.parametrize("xid,name", [(13, "Graphics Engine Exception"),
                                      (31, "GPU memory page fault"),
                                      (94, "Contained memory error"),
                                      (8, "GPU stopped processing")])
def test_xids_a_restart_fixes_fail_live_and_ready(gpu: FakeGPU, xid: int, name: str) -> None:
    gpu.write(*TWO_GPUS)
    live, ready = live_and_ready(gpu)
    assert verdict(live)[0] and verdict(ready)[0]  # registered for events from here on
    gpu.add("event 1 %d %d" % (XID, xid))
    ok, reason = verdict(live)
    assert not ok
    assert reason == "GPU 1 (GPU-bbbbbbbb): Xid %d (%s): %s" % (xid, name, RESTART_WORDS)
    ok, reason = verdict(ready)
    assert not ok and RESTART_WORDS in reason  # it cannot serve either: traffic leaves first


@pytest.mark.parametrize("xid,name", [(48, "Double Bit ECC Error"),
                                      (64, "GPU memory remapping failure"),
                                      (74, "NVLINK Error"),
                                      (79, "GPU has fallen off the bus"),
                                      (95, "Uncontained memory error"),
                                      (119, "GSP RPC Timeout"),
                                      (46, "GPU stopped processing")])
def test_xids_needing_a_reset_fail_ready_only(gpu: FakeGPU, xid: int, name: str) -> None:
    gpu.write(*TWO_GPUS)
    live, ready = live_and_ready(gpu)
    poll(ready)
    gpu.add("event 0 %d %d" % (XID, xid))
    ok, reason = verdict(ready)
    assert not ok
    assert reason == "GPU 0 (GPU-aaaaaaaa): Xid %d (%s): %s" % (xid, name, RESET_WORDS)
    ok, reason = verdict(live)
    assert ok and reason.startswith("2 GPUs, no faults")


@pytest.mark.parametrize("xid", [43, 45, 63, 92, 154, 999])
def test_xids_the_catalogue_ignores_fail_nothing_but_are_shown(gpu: FakeGPU, xid: int) -> None:
    gpu.write(*TWO_GPUS)
    live, ready = live_and_ready(gpu)
    poll(ready)
    gpu.add("event 0 %d %d" % (XID, xid))
    obs = poll(ready)
    assert ready.judge(obs, ready.config, True)[0] is True
    faults = (obs.detail or {})["gpus"][0]["faults"]
    assert [(f["cls"], f["xid"]) for f in faults] == [("note", xid)]
    assert verdict(live)[0] is True


@pytest.mark.parametrize("state,words", [
    ("ecc 0 3", "3 uncorrectable ECC errors since the driver loaded"),
    ("ecc 0 1", "1 uncorrectable ECC error since the driver loaded"),
    ("remap 0 0 1 0 1", "row remapping failed"),
    ("remap 0 0 1 1 0", "row remapping pending (a GPU reset applies it)"),
    ("recovery 0 1", "the driver asks for recovery action GPU_RESET"),
    ("recovery 0 2", "the driver asks for recovery action NODE_REBOOT"),
    ("recovery 0 3", "the driver asks for recovery action DRAIN_P2P"),
    ("recovery 0 4", "the driver asks for recovery action DRAIN_AND_RESET"),
    ("lost 0", "NVML cannot reach the GPU (nvmlDeviceGetTotalEccErrors: GPU is lost (NVML "
               "error 15))"),
])
def test_gpu_state_needing_the_node_fails_ready_only(gpu: FakeGPU, state: str,
                                                     words: str) -> None:
    gpu.write(*TWO_GPUS)
    live, ready = live_and_ready(gpu)
    assert verdict(ready)[0]
    gpu.add(state)
    assert verdict(ready) == (False, "GPU 0 (GPU-aaaaaaaa): %s: %s" % (words, RESET_WORDS))
    assert verdict(live)[0] is True
    gpu.write(*TWO_GPUS)  # the state is read each poll: gone when the driver says so
    assert verdict(ready)[0] is True


def test_double_bit_ecc_event_fails_ready(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS)
    live, ready = live_and_ready(gpu)
    poll(ready)
    gpu.add("event 1 %d 0" % DBE)
    assert verdict(ready) == (False, "GPU 1 (GPU-bbbbbbbb): double-bit ECC error event: "
                                     + RESET_WORDS)
    assert verdict(live)[0] is True


def test_ecc_counts_are_read_only_where_ecc_is_on(gpu: FakeGPU) -> None:
    gpu.write("count 2", "ecc_mode 0 0", "ecc 0 5", "ecc_mode 1 unsupported", "ecc 1 5")
    check = gpu.check()
    obs = poll(check)
    assert check.judge(obs, check.config, True)[0] is True
    first, second = (obs.detail or {})["gpus"]
    assert first["ecc"] == "off" and "ecc_uncorrected_volatile" not in first
    assert second["not_read"] == ["nvmlDeviceGetEccMode: not supported on this GPU"]
    assert not gpu.calls("nvmlDeviceGetTotalEccErrors")


def test_faults_in_several_classes_name_the_node_level_one_first(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS)
    ready = gpu.check(probes="ready")
    poll(ready)
    gpu.add("event 0 8 13", "event 0 8 13", "event 0 8 31", "event 0 8 79", "ecc 0 2")
    ok, reason = verdict(ready)
    assert not ok
    assert reason == ("GPU 0 (GPU-aaaaaaaa): Xid 79 (GPU has fallen off the bus), 2 "
                      "uncorrectable ECC errors since the driver loaded, Xid 13 (Graphics Engine "
                      "Exception) x2, and 1 more: " + RESET_WORDS)
    assert verdict(ready, faults="restart") == (
        False, "GPU 0 (GPU-aaaaaaaa): Xid 13 (Graphics Engine Exception) x2, Xid 31 (GPU "
               "memory page fault): " + RESTART_WORDS)
    assert verdict(ready, faults="restart", **{"ignore-xids": "13,31"})[0] is True


def test_faults_all_in_live_is_refused() -> None:
    for faults in ("all", "reset"):
        with pytest.raises(ConfigError, match="faults=%s in probes=live would restart" % faults):
            build_checks([{"kind": "gpu", "faults": faults, "probes": "live,ready"}], ["--check #1"])
    with pytest.raises(ConfigError, match="faults=some: expected one of: all, restart, reset"):
        build_checks([{"kind": "gpu", "faults": "some"}], ["--check #1"])
    with pytest.raises(ConfigError, match="devices=GPU0"):
        build_checks([{"kind": "gpu", "devices": "GPU0"}], ["--check #1"])


# --- older drivers, no library, no NVML -----------------------------------------------------

def test_an_older_driver_skips_and_names_what_it_lacks(old_gpu: FakeGPU) -> None:
    old_gpu.write(*TWO_GPUS)
    live, ready = live_and_ready(old_gpu)
    obs = poll(ready)
    assert ready.judge(obs, ready.config, True)[0] is True
    gpu0 = (obs.detail or {})["gpus"][0]
    assert gpu0["not_read"] == ["nvmlDeviceGetFieldValues: not in this driver",
                                "nvmlDeviceGetRemappedRows: not in this driver"]
    assert gpu0["ecc_uncorrected_volatile"] == 0
    old_gpu.add("event 1 8 31")  # events still come through the older nvmlEventSetWait
    assert verdict(live) == (False, "GPU 1 (GPU-bbbbbbbb): Xid 31 (GPU memory page fault): "
                                    + RESTART_WORDS)
    assert old_gpu.calls("nvmlEventSetWait timeout=0")
    assert not old_gpu.calls("nvmlEventSetWait timeout=1")


def test_unsupported_calls_are_skipped_named_and_not_retried(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS, "ret nvmlDeviceGetRemappedRows 3", "ret nvmlDeviceGetFieldValues 13")
    check = gpu.check()
    obs = poll(check)
    assert check.judge(obs, check.config, True)[0] is True
    assert (obs.detail or {})["gpus"][1]["not_read"] == [
        "nvmlDeviceGetFieldValues: not in this driver",
        "nvmlDeviceGetRemappedRows: not supported on this GPU"]
    before = len(gpu.calls("nvmlDeviceGetRemappedRows"))
    poll(check)
    assert len(gpu.calls("nvmlDeviceGetRemappedRows")) == before


def test_recovery_field_unknown_to_the_driver_is_skipped(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS, "recovery 0 unsupported")
    check = gpu.check()
    obs = poll(check)
    assert check.judge(obs, check.config, True)[0] is True
    assert (obs.detail or {})["gpus"][0]["not_read"] == [
        "nvmlDeviceGetFieldValues(230): not reported by this driver"]


def test_events_refused_by_the_driver_are_said_and_the_rest_read(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS, "ret nvmlDeviceRegisterEvents 3", "ecc 1 1")
    check = gpu.check()
    obs = poll(check)
    assert (obs.detail or {})["events"] == "Xid events not read on GPU 0, GPU 1: not supported"
    assert check.judge(obs, check.config, True)[0] is False  # the ECC count still counts


def test_unsupported_event_types_fall_back_to_xids(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS, "supported_events 0 0x8", "supported_events 1 0x8")
    check = gpu.check()
    poll(check)
    assert gpu.calls("nvmlDeviceRegisterEvents mask=8")
    gpu.add("event 0 8 79")
    assert verdict(check)[0] is False


def test_no_library_passes_and_says_so(gpu: FakeGPU) -> None:
    check = gpu.check(lib="libnvidia-ml-nowhere.so.1")
    obs = poll(check)
    assert check.judge(obs, check.config, True) == (
        True, "no NVIDIA driver (libnvidia-ml-nowhere.so.1 not found)")
    live = gpu.check("live", lib=str(gpu.dir / "absent" / LIB), faults="restart", probes="live")
    assert verdict(live) == (True, "no NVIDIA driver (%s not found)" % (gpu.dir / "absent" / LIB))


def test_nvml_init_failure_passes_says_why_and_is_retried(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS, "init_error 9")
    live, ready = live_and_ready(gpu)
    why = ("NVML did not start, GPU faults are not read: nvmlInit_v2: Driver Not Loaded "
           "(NVML error 9)")
    assert verdict(ready) == (True, why)
    assert verdict(live) == (True, why)
    gpu.write(*TWO_GPUS, "ecc 0 1")  # the driver came up: the next poll reads the GPUs
    assert verdict(ready)[0] is False


def test_a_hung_driver_fails_ready_never_live_and_blocks_nothing(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS)
    live = gpu.check("gpu-live", faults="restart", probes="live", timeout="100ms")
    ready = gpu.check("gpu-ready", probes="ready", timeout="100ms")
    assert verdict(ready)[0]
    gpu.add("hang_ms 200")  # each NVML read of a GPU: 1.2 s for the whole poll

    async def polls() -> Tuple[Tuple[bool, str], Tuple[bool, str], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        obs_ready, _ = await poll_once(ready)
        obs_live, _ = await poll_once(live)
        task.cancel()
        return (ready.judge(obs_ready, ready.config, True),
                live.judge(obs_live, live.config, True), ticks)

    time.sleep(ready.spec.interval / 2 + 0.01)  # past the read-sharing window
    ready_verdict, live_verdict, ticks = asyncio.run(polls())
    assert ready_verdict[0] is False and "NVML did not answer within 0.1s" in ready_verdict[1]
    assert live_verdict[0] is True and "NVML did not answer" in live_verdict[1]
    assert ticks > 5  # the loop kept running while NVML hung in its thread


# --- which GPUs -----------------------------------------------------------------------------

FOUR_GPUS = ("count 4", "uuid 0 GPU-00aa0000-0000-0000-0000-000000000000",
             "uuid 1 GPU-11bb0000-0000-0000-0000-000000000000",
             "uuid 2 GPU-22cc0000-0000-0000-0000-000000000000",
             "uuid 3 GPU-33dd0000-0000-0000-0000-000000000000")


@pytest.mark.parametrize("visible,watched", [("2", [2]), ("GPU-33dd", [3]),
                                             ("3,GPU-00aa0000-0000-0000-0000-000000000000", [0, 3]),
                                             ("1,-1,2", [1])])
def test_cuda_visible_devices_selects_the_gpus(gpu: FakeGPU, monkeypatch: pytest.MonkeyPatch,
                                               visible: str, watched: List[int]) -> None:
    gpu.write(*FOUR_GPUS)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")  # CUDA_VISIBLE_DEVICES wins
    check = gpu.check()
    obs = poll(check)
    detail = obs.detail or {}
    assert [g["index"] for g in detail["gpus"]] == watched
    assert detail["selected_by"] == "CUDA_VISIBLE_DEVICES=" + visible
    others = [i for i in range(4) if i not in watched]
    gpu.add(*("event %d 8 79" % i for i in others))
    assert verdict(check)[0] is True  # faults on GPUs the server does not use
    gpu.add("event %d 8 79" % watched[0])
    assert verdict(check)[0] is False


def test_nvidia_visible_devices_uuids_and_the_devices_key(gpu: FakeGPU,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    gpu.write(*FOUR_GPUS)
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "GPU-11bb0000-0000-0000-0000-000000000000")
    obs = poll(gpu.check("by-env"))
    assert [g["index"] for g in (obs.detail or {})["gpus"]] == [1]
    obs = poll(gpu.check("by-key", devices="0,GPU-22cc"))  # the key beats the environment
    assert [g["index"] for g in (obs.detail or {})["gpus"]] == [0, 2]
    assert (obs.detail or {})["selected_by"] == "devices=0,GPU-22cc"


def test_a_gpu_nvml_cannot_see_is_named_and_passes(gpu: FakeGPU,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    gpu.write(*FOUR_GPUS)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-deadbeef")
    check = gpu.check()
    assert verdict(check) == (True, "no GPU to watch (CUDA_VISIBLE_DEVICES=GPU-deadbeef); not "
                                    "visible to NVML here: GPU-deadbeef "
                                    "(CUDA_VISIBLE_DEVICES=GPU-deadbeef)")


def facts(*uuids: str) -> List[DeviceFacts]:
    return [DeviceFacts(i, u, ()) for i, u in enumerate(uuids)]


def test_nvidia_visible_devices_as_the_device_plugin_sets_it() -> None:
    # Host indices: NVML renumbers an isolated container's GPUs from 0, so "5,7" seen as two
    # GPUs means both; a privileged container sees all eight, and then 5 and 7 are NVML's.
    assert environment_devices({"NVIDIA_VISIBLE_DEVICES": "5,7"}, 2)[0] == (("all", ""),)
    assert environment_devices({"NVIDIA_VISIBLE_DEVICES": "5,7"}, 8)[0] == (
        ("index", "5"), ("index", "7"))
    for nothing in ("void", "none", ""):
        assert environment_devices({"NVIDIA_VISIBLE_DEVICES": nothing}, 8)[0] == ()
    assert environment_devices({}, 8) == ((("all", ""),), "every GPU NVML sees")
    assert environment_devices({"CUDA_VISIBLE_DEVICES": ""}, 8)[0] == ()  # CUDA sees none
    assert environment_devices({"CUDA_VISIBLE_DEVICES": "MIG-GPU-ab12/1/0"}, 8)[0] == (
        ("uuid", "GPU-ab12"),)
    devices = facts("GPU-ab12-x", "GPU-ab13-y")
    assert select_devices(devices, parse_device_list("GPU-ab")) == ([], ["GPU-ab"])  # ambiguous
    assert select_devices(devices, parse_device_list("GPU-ab13")) == ([devices[1]], [])
    assert select_devices(devices, parse_device_list("all")) == (devices, [])


# --- remembering events ---------------------------------------------------------------------

def test_an_xid_is_seen_once_and_remembered_until_the_backend_restarts(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS)
    live, ready = live_and_ready(gpu)
    poll(live)
    gpu.add("event 0 8 13", "event 1 8 79")
    assert verdict(live)[0] is False
    delivered = len(gpu.calls("nvmlEventSetWait_v2 timeout"))
    for _ in range(3):  # the fake delivered each event once; the check still remembers it
        assert verdict(live)[0] is False
    assert len(gpu.calls("nvmlEventSetWait_v2 timeout")) > delivered
    obs = poll(ready)
    gpu0 = (obs.detail or {})["gpus"][0]
    assert gpu0["faults"][0]["times"] == 1 and gpu0["faults"][0]["seconds_ago"] >= 0
    live.forget()  # the engine saw a new backend incarnation (both checks are told)
    ready.forget()
    assert verdict(live)[0] is True
    ok, reason = verdict(ready)  # a restart does not fix Xid 79: still remembered
    assert not ok and "Xid 79" in reason and "Xid 13" not in reason


def test_events_before_probed_registered_are_not_seen(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS, "event 0 8 13", "event 1 8 79")  # before probed started
    live, ready = live_and_ready(gpu)
    assert verdict(ready)[0] is True and verdict(live)[0] is True


def test_a_restart_drops_events_from_before_it_even_if_not_yet_read(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS)
    live, ready = live_and_ready(gpu)
    poll(live)
    gpu.add("event 0 8 13", "event 0 8 48")  # the old process's fault, not polled yet
    live.forget()
    ready.forget()
    assert verdict(live)[0] is True  # taken before the restart, then dropped
    assert "Xid 48" in verdict(ready)[1]  # node-level faults are kept
    gpu.add("event 0 8 31")  # the new process faults: that counts
    assert verdict(live) == (False, "GPU 0 (GPU-aaaaaaaa): Xid 31 (GPU memory page fault): "
                                    + RESTART_WORDS)


def test_an_event_storm_is_drained_over_polls_and_remembered_bounded(gpu: FakeGPU) -> None:
    gpu.write(*TWO_GPUS)
    check = gpu.check(probes="ready")
    poll(check)
    gpu.add(*("event 0 8 %d" % (1000 + i) for i in range(1500)))  # 1500 distinct unknown Xids
    obs = poll(check)
    assert "over 1024 events in one poll" in (obs.detail or {})["events"]
    obs = poll(check)
    assert "events" not in (obs.detail or {})
    faults = (obs.detail or {})["gpus"][0]["faults"]
    assert [f["xid"] for f in faults] == list(range(2468, 2500))  # the GPU_MAX_NOTES latest
    assert check.judge(obs, check.config, True)[0] is True  # unknown Xids are notes
    gpu.add("event 0 8 79", *("event 0 8 %d" % (3000 + i) for i in range(100)))
    assert "Xid 79" in verdict(check)[1]  # a storm of notes never pushes a fault out


# --- the preset and the single file ----------------------------------------------------------

def test_gpu_preset_splits_live_and_ready_only_where_restarts_are_seen() -> None:
    assert gpu_checks({"gpu": "auto", "vllm": "http://127.0.0.1:8000"}) == [
        dict(kind="gpu", name="gpu-live", devices="auto", faults="restart", probes="live"),
        dict(kind="gpu", name="gpu-ready", devices="auto", faults="all", probes="ready")]
    for server in ("sglang", "tgi", "vllm_endpoint"):
        assert len(gpu_checks({"gpu": "all", server: "http://x"})) == 2
    # llama.cpp keeps its port open while loading and exports no start time: probed may miss
    # its restart, so nothing that only a restart clears may fail a group.
    for alone in ({"gpu": "0,1"}, {"gpu": "0,1", "llamacpp": "http://127.0.0.1:8080"}):
        assert gpu_checks(alone) == [dict(kind="gpu", name="gpu-ready", devices="0,1",
                                          faults="reset", probes="ready")]
    assert gpu_checks({"gpu": None, "vllm": "http://x"}) == []


def test_gpu_preset_on_the_command_line() -> None:
    out = subprocess.run([sys.executable, "-m", "probed", "--gpu", "GPU-8f3e,1", "--vllm",
                          "http://127.0.0.1:8000", "--print-config"], cwd=str(REPO),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    gpus = [c for c in json.loads(out.stdout)["checks"] if c["kind"] == "gpu"]
    assert [(c["name"], c["probes"], c["faults"], c["devices"], c["from"]) for c in gpus] == [
        ("gpu-live", "live", "restart", "GPU-8f3e,1", "--gpu"),
        ("gpu-ready", "ready", "all", "GPU-8f3e,1", "--gpu")]
    bad = subprocess.run([sys.executable, "-m", "probed", "--gpu", "gpu0"], cwd=str(REPO),
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert "--gpu=gpu0: expected auto, all, or GPU indices and UUIDs" in bad.stderr


def test_ctypes_is_loaded_only_by_a_gpu_check() -> None:
    code = ("import sys; from probed.checkspecs import build_checks; "
            "build_checks([{'kind': 'http', 'url': 'http://127.0.0.1:1/'}], ['x']); "
            "a = 'ctypes' in sys.modules; "
            "c = build_checks([{'kind': 'gpu', 'lib': 'libnvidia-ml-nowhere.so.1'}], ['y'])[0]; "
            "b = 'ctypes' in sys.modules; "
            "import asyncio; from probed.scheduler import poll_once; asyncio.run(poll_once(c)); "
            "print(a, b, 'ctypes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.split() == ["False", "False", "True"], out.stderr


# --- a daemon against the fake ---------------------------------------------------------------

class SimProcess:
    """`python -m probed sim` on free ports (the vLLM simulator as probed's server)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "probed", "sim", "--port", "0", "--control-port", "0",
             "--token-latency", "0.001"], cwd=str(REPO), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        fields = dict(f.split("=") for f in line.split()[1:])
        self.port, self.control = int(fields["port"]), int(fields["control_port"])

    def set_state(self, state: str, **params: str) -> None:
        query = "&".join("%s=%s" % kv for kv in params.items())
        reply = kubelet_probe(self.control, "/_sim/state/%s?%s" % (state, query), method="POST")
        assert reply.status == 200, reply

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    proc = SimProcess()
    yield proc
    proc.stop()


@pytest.mark.slow
def test_daemon_with_gpu_answers_live_and_ready_per_fault(
        gpu: FakeGPU, sim: SimProcess, start_daemon: Any) -> None:
    gpu.write(*TWO_GPUS)
    env = {"LD_LIBRARY_PATH": str(gpu.dir), "FAKE_NVML_STATE": str(gpu.state)}
    daemon = start_daemon(["--vllm", "http://127.0.0.1:%d" % sim.port, "--gpu", "auto",
                           "--interval", "200ms", "--start-interval", "100ms"], env)
    wait_status(daemon.port, "/startupz", 200, timeout=20)
    wait_status(daemon.port, "/readyz", 200)
    reply = kubelet_probe(daemon.port, "/readyz?format=json")
    rows = {c["name"]: c for c in json.loads(reply.body)["checks"]}
    assert rows["gpu-ready"]["detail"]["gpus"][1]["uuid"].startswith("GPU-bbbbbbbb")

    gpu.add("event 1 8 13")  # the server's process hit a GPU page fault / illegal access
    reply = wait_status(daemon.port, "/livez?verbose", 503)
    assert "[-]gpu-live failed: GPU 1 (GPU-bbbbbbbb): Xid 13 (Graphics Engine Exception): " \
           + RESTART_WORDS in reply.text
    assert kubelet_probe(daemon.port, "/readyz").status == 503

    sim.set_state("restart", seconds="1")  # the kubelet restarted the server container
    wait_status(daemon.port, "/readyz", 200, timeout=20)  # new incarnation: Xid 13 forgotten
    assert kubelet_probe(daemon.port, "/livez").status == 200

    gpu.add("event 0 8 79")  # GPU 0 fell off the bus
    reply = wait_status(daemon.port, "/readyz?verbose", 503)
    assert "Xid 79 (GPU has fallen off the bus): " + RESET_WORDS in reply.text
    for _ in range(5):  # a restart cannot help: live keeps passing
        assert kubelet_probe(daemon.port, "/livez").status == 200
        time.sleep(0.2)


@pytest.mark.slow
def test_daemon_gpu_alone_without_a_driver_or_with_a_hung_one(gpu: FakeGPU,
                                                             start_daemon: Any) -> None:
    absent = start_daemon(["--gpu", "auto", "--interval", "200ms"],
                          {"LD_LIBRARY_PATH": str(gpu.dir / "nothing-here")})
    reply = wait_status(absent.port, "/readyz?format=json", 200)
    row = json.loads(reply.body)["checks"][0]
    assert (row["name"], row["reason"]) == ("gpu-ready", "no NVIDIA driver (%s not found)" % LIB)

    gpu.write(*TWO_GPUS)
    daemon = start_daemon(["--gpu", "auto", "--interval", "200ms"],  # the single file this time
                          {"LD_LIBRARY_PATH": str(gpu.dir), "FAKE_NVML_STATE": str(gpu.state)},
                          script=str(REPO / "probed.py"))
    wait_status(daemon.port, "/readyz", 200)
    gpu.add("event 0 8 13")  # without a server whose restarts probed sees: shown, fails nothing
    gpu.add("remap 1 0 1 1 0")
    reply = wait_status(daemon.port, "/readyz?verbose", 503)
    assert "GPU 1 (GPU-bbbbbbbb): row remapping pending (a GPU reset applies it): " \
        + RESET_WORDS in reply.text
    gpu.write(*TWO_GPUS, "hang_ms 20000")  # every NVML read now hangs for 20 s
    reply = wait_status(daemon.port, "/readyz?verbose", 503, timeout=20)
    wait_for(lambda: "NVML did not answer" in kubelet_probe(daemon.port, "/readyz?verbose").text,
             timeout=20, what="the hung read reported")
    assert kubelet_probe(daemon.port, "/livez").status == 200  # still answered at once
