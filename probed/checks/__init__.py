"""Check kinds. Importing this package registers every kind in CHECK_KINDS."""

from .exec import ExecCheck
from .http import HTTPCheck
from .tcp import TCPCheck
