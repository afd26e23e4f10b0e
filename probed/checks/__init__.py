"""Check kinds, and the table that names them for `--check KIND ...` and config files."""

from typing import Dict, Type

from .awake import AwakeCheck
from .base import Check
from .exec import ExecCheck
from .gpu import GPUCheck
from .heartbeat import HeartbeatCheck
from .http import HTTPCheck
from .inference import InferenceCheck, ModelsCheck
from .inflight import InflightCheck
from .manual import ManualCheck
from .metric import MetricCheck, ProgressCheck
from .process import ProcessCheck
from .ray import RayAgentCheck, RayClusterCheck, RayGCSCheck
from .relay import RelayCheck
from .tcp import TCPCheck

CHECK_KINDS: Dict[str, Type[Check]] = {cls.kind: cls for cls in (
    AwakeCheck, ExecCheck, GPUCheck, HeartbeatCheck, HTTPCheck, InferenceCheck, InflightCheck,
    ManualCheck, MetricCheck, ModelsCheck, ProcessCheck, ProgressCheck, RayAgentCheck,
    RayClusterCheck, RayGCSCheck, RelayCheck, TCPCheck)}
