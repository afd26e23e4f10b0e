"""Check kinds, and the table that names them for `--check KIND ...` and config files."""

from typing import Dict, Iterator, Mapping, Tuple, Type

from .base import Check

# Kind -> (its module in this package, its class). A kind's module is imported when a check of
# that kind is built, or its keys are asked for (--help): a daemon loads only the kinds it runs,
# so the gpu kind's NVML reader, Ray's, exec's and the others' code cost a pod that uses none of
# them no RSS (issue 18). tests/test_config.py checks every row against its class.
CHECK_MODULES: Dict[str, Tuple[str, str]] = {
    "awake": ("awake", "AwakeCheck"),
    "exec": ("exec", "ExecCheck"),
    "gpu": ("gpu", "GPUCheck"),
    "heartbeat": ("heartbeat", "HeartbeatCheck"),
    "http": ("http", "HTTPCheck"),
    "inference": ("inference", "InferenceCheck"),
    "inflight": ("inflight", "InflightCheck"),
    "manual": ("manual", "ManualCheck"),
    "metric": ("metric", "MetricCheck"),
    "models": ("inference", "ModelsCheck"),
    "process": ("process", "ProcessCheck"),
    "progress": ("metric", "ProgressCheck"),
    "ray": ("ray", "RayClusterCheck"),
    "ray-agent": ("ray", "RayAgentCheck"),
    "ray-gcs": ("ray", "RayGCSCheck"),
    "relay": ("relay", "RelayCheck"),
    "tcp": ("tcp", "TCPCheck"),
}


class CheckKinds(Mapping[str, Type[Check]]):
    """The kinds by name, as a read-only mapping whose lookup imports the kind's module."""

    def __init__(self, modules: Mapping[str, Tuple[str, str]]) -> None:
        self.modules = modules

    def __getitem__(self, kind: str) -> Type[Check]:
        module, name = self.modules[kind]
        # `from .MODULE import NAME` as a call: the import statement's own machinery, so that
        # -X importtime shows it (importlib.import_module's pure-Python path is not timed).
        cls: Type[Check] = getattr(__import__(module, globals(), None, (name,), 1), name)
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)


CHECK_KINDS: Mapping[str, Type[Check]] = CheckKinds(CHECK_MODULES)
