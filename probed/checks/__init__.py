"""Check kinds. Importing this package registers every kind in CHECK_KINDS."""

from .awake import AwakeCheck
from .exec import ExecCheck
from .heartbeat import HeartbeatCheck
from .http import HTTPCheck
from .inflight import InflightCheck
from .inference import InferenceCheck, ModelsCheck
from .manual import ManualCheck
from .metric import MetricCheck, ProgressCheck
from .process import ProcessCheck
from .ray import RayAgentCheck, RayClusterCheck, RayGCSCheck
from .relay import RelayCheck
from .tcp import TCPCheck
