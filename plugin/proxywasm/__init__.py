"""Write Envoy/Higress proxy-wasm plugins in Python.

A plugin subclasses :class:`RootContext` and :class:`HttpContext` and registers its
root with :func:`set_root_context`; ``build/pwbuild`` turns it into one .wasm module.
"""

from . import hostcalls, jsonscan, shared
from .abi import Action, BufferType, LogLevel, MapType, MetricType, Result, StreamType
from .config import ConfigError, Fields
from .context import CalloutResponse, HttpContext, RootContext
from .grpc import GrpcResponse, GrpcStream
from .hostcalls import CasMismatch, HostError, get_property, log, set_property
from .metrics import Counter, Gauge, Histogram, MetricCache
from .record import factory, record
from .shared import SharedQueue
from .vm import set_root_context

__all__ = [
    "Action",
    "BufferType",
    "CalloutResponse",
    "CasMismatch",
    "ConfigError",
    "Counter",
    "Fields",
    "Gauge",
    "GrpcResponse",
    "GrpcStream",
    "Histogram",
    "HostError",
    "HttpContext",
    "LogLevel",
    "MapType",
    "MetricCache",
    "MetricType",
    "Result",
    "RootContext",
    "SharedQueue",
    "StreamType",
    "factory",
    "get_property",
    "hostcalls",
    "jsonscan",
    "log",
    "record",
    "set_property",
    "set_root_context",
    "shared",
]
