"""The proxy-wasm ABI 0.2.1, described once.

This table feeds three consumers, so they cannot drift apart:
  * build/pwbuild/shimgen.py generates the C glue (imports offered to Python as
    the native module ``_proxywasm``; exports that call the Python dispatcher);
  * proxywasm.testing.wasm (and wasm_fast) marshal wasm memory <-> Python for each import;
  * proxywasm.testing.state implements every import for both test hosts (the in-process one and wasmtime).

Parameter kinds of imports:
  ``i32`` / ``i64``  integer passed by value
  ``in``             bytes passed as (ptr, size)
  ``out``            bytes returned via (ptr**, size*); host allocates with
                     proxy_on_memory_allocate, the shim frees
  ``u32o`` / ``u64o`` integer returned through a pointer

Python-level convention (same on every host): a call takes the by-value and ``in``
arguments in order and returns the status int when it has no outputs, otherwise a
tuple ``(status, *outputs)``.

This module must stay importable by a plain Python with no project on the path.
"""

from __future__ import annotations

from collections import namedtuple
from enum import IntEnum


class Result(IntEnum):
    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2
    SERIALIZATION_FAILURE = 3
    PARSE_FAILURE = 4
    BAD_EXPRESSION = 5
    INVALID_MEMORY_ACCESS = 6
    EMPTY = 7
    CAS_MISMATCH = 8
    RESULT_MISMATCH = 9
    INTERNAL_FAILURE = 10
    BROKEN_CONNECTION = 11
    UNIMPLEMENTED = 12


class Action(IntEnum):
    CONTINUE = 0
    PAUSE = 1


class LogLevel(IntEnum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    CRITICAL = 5


class MapType(IntEnum):
    REQUEST_HEADERS = 0
    REQUEST_TRAILERS = 1
    RESPONSE_HEADERS = 2
    RESPONSE_TRAILERS = 3
    GRPC_RECEIVE_INITIAL_METADATA = 4
    GRPC_RECEIVE_TRAILING_METADATA = 5
    HTTP_CALL_RESPONSE_HEADERS = 6
    HTTP_CALL_RESPONSE_TRAILERS = 7


class BufferType(IntEnum):
    HTTP_REQUEST_BODY = 0
    HTTP_RESPONSE_BODY = 1
    DOWNSTREAM_DATA = 2
    UPSTREAM_DATA = 3
    HTTP_CALL_RESPONSE_BODY = 4
    GRPC_RECEIVE_BUFFER = 5
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7
    CALL_DATA = 8
    REDIS_CALL_RESPONSE = 9  # Higress only: the reply to proxy_redis_call (RESP bytes)


class MetricType(IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class StreamType(IntEnum):
    REQUEST = 0
    RESPONSE = 1
    DOWNSTREAM = 2
    UPSTREAM = 3


class Fn(namedtuple("Fn", "name params variant")):
    """An import: its name, parameter kinds, and the host variant offering it ("" = every host)."""

    name: str
    params: tuple[str, ...]
    variant: str


def _fn(name: str, *params: str, variant: str = "") -> Fn:
    return Fn(name, params, variant)


# Host functions (module "env") that a plugin may import.
IMPORTS: tuple[Fn, ...] = (
    _fn("proxy_log", "i32", "in"),
    _fn("proxy_get_log_level", "u32o"),
    _fn("proxy_get_current_time_nanoseconds", "u64o"),
    _fn("proxy_set_tick_period_milliseconds", "i32"),
    _fn("proxy_set_effective_context", "i32"),
    _fn("proxy_done"),
    _fn("proxy_get_status", "u32o", "out"),
    # properties
    _fn("proxy_get_property", "in", "out"),
    _fn("proxy_set_property", "in", "in"),
    # buffers
    _fn("proxy_get_buffer_bytes", "i32", "i32", "i32", "out"),
    _fn("proxy_get_buffer_status", "i32", "u32o", "u32o"),
    _fn("proxy_set_buffer_bytes", "i32", "i32", "i32", "in"),
    # header maps
    _fn("proxy_get_header_map_pairs", "i32", "out"),
    _fn("proxy_set_header_map_pairs", "i32", "in"),
    _fn("proxy_get_header_map_size", "i32", "u32o"),
    _fn("proxy_get_header_map_value", "i32", "in", "out"),
    _fn("proxy_replace_header_map_value", "i32", "in", "in"),
    _fn("proxy_remove_header_map_value", "i32", "in"),
    _fn("proxy_add_header_map_value", "i32", "in", "in"),
    # stream control
    _fn("proxy_continue_stream", "i32"),
    _fn("proxy_close_stream", "i32"),
    _fn("proxy_send_local_response", "i32", "in", "in", "in", "i32"),
    # HTTP / gRPC callouts
    _fn("proxy_http_call", "in", "in", "in", "in", "i32", "u32o"),
    _fn("proxy_grpc_call", "in", "in", "in", "in", "in", "i32", "u32o"),
    _fn("proxy_grpc_stream", "in", "in", "in", "in", "u32o"),
    _fn("proxy_grpc_send", "i32", "in", "i32"),
    _fn("proxy_grpc_cancel", "i32"),
    _fn("proxy_grpc_close", "i32"),
    # shared data and queues
    _fn("proxy_get_shared_data", "in", "out", "u32o"),
    _fn("proxy_set_shared_data", "in", "in", "i32"),
    _fn("proxy_register_shared_queue", "in", "u32o"),
    _fn("proxy_resolve_shared_queue", "in", "in", "u32o"),
    _fn("proxy_dequeue_shared_queue", "i32", "out"),
    _fn("proxy_enqueue_shared_queue", "i32", "in"),
    # metrics
    _fn("proxy_define_metric", "i32", "in", "u32o"),
    _fn("proxy_increment_metric", "i32", "i64"),
    _fn("proxy_record_metric", "i32", "i64"),
    _fn("proxy_get_metric", "i32", "u64o"),
    # extension point
    _fn("proxy_call_foreign_function", "in", "in", "out"),
    # Higress's Envoy only (higress-group/proxy-wasm-go-sdk): Redis through an Envoy cluster. Stock Envoy
    # refuses a module importing these, so they go only into the "higress" build variant.
    _fn("proxy_redis_init", "in", "in", "in", "i32", variant="higress"),  # cluster, username, password, timeout ms
    _fn("proxy_redis_call", "in", "in", "u32o", variant="higress"),  # cluster, RESP query -> callout id
)

IMPORTS_BY_NAME = {f.name: f for f in IMPORTS}
VARIANTS = ("", "higress")  # "": stock Envoy (the default build)


def imports_for(variant: str = "") -> tuple[Fn, ...]:
    """The imports a module built for ``variant`` may use."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown host variant {variant!r} (known: {', '.join(v or 'stock' for v in VARIANTS)})")
    return tuple(f for f in IMPORTS if not f.variant or f.variant == variant)


class Export(namedtuple("Export", "name nparams returns default hot")):
    """An export: parameter count, whether it returns an i32, and the result when Python can't answer.

    ``hot`` callbacks run on every request; the build leaves them out of the module when the
    plugin does not override them, so Envoy never enters the VM for them (it then behaves
    as for the default: continue / done).
    """

    name: str
    nparams: int
    returns: bool  # i32 result, else void
    default: int  # returned when Python is unavailable or raised
    hot: bool


def _ex(name: str, nparams: int, default: int | None = None, hot: bool = False) -> Export:
    return Export(name, nparams, default is not None, default or 0, hot)


# Plugin callbacks the host calls. All parameters (and results, if any) are i32.
# proxy_abi_version_0_2_1 and proxy_on_memory_allocate are pure C in the shim.
EXPORTS: tuple[Export, ...] = (
    _ex("proxy_on_context_create", 2),
    _ex("proxy_on_vm_start", 2, 0),
    _ex("proxy_on_configure", 2, 0),
    _ex("proxy_on_tick", 1),
    _ex("proxy_on_queue_ready", 2),
    _ex("proxy_on_foreign_function", 3),
    _ex("proxy_on_done", 1, 1, hot=True),
    _ex("proxy_on_log", 1, hot=True),
    _ex("proxy_on_delete", 1),
    _ex("proxy_on_request_headers", 3, Action.CONTINUE, hot=True),
    _ex("proxy_on_request_body", 3, Action.CONTINUE, hot=True),
    _ex("proxy_on_request_trailers", 2, Action.CONTINUE, hot=True),
    _ex("proxy_on_response_headers", 3, Action.CONTINUE, hot=True),
    _ex("proxy_on_response_body", 3, Action.CONTINUE, hot=True),
    _ex("proxy_on_response_trailers", 2, Action.CONTINUE, hot=True),
    _ex("proxy_on_http_call_response", 5),
    _ex("proxy_on_grpc_receive_initial_metadata", 3),
    _ex("proxy_on_grpc_receive", 3),
    _ex("proxy_on_grpc_receive_trailing_metadata", 3),
    _ex("proxy_on_grpc_close", 3),
    _ex("proxy_on_redis_call_response", 4),  # Higress: (root id, callout id, status, reply size)
)

# Wasm value types of an import's parameters, as the host declares them.
PARAM_WASM_TYPES = {"i32": ("i32",), "i64": ("i64",), "in": ("i32", "i32"), "out": ("i32", "i32"),
                    "u32o": ("i32",), "u64o": ("i32",)}


def import_signature(fn: Fn) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(t for p in fn.params for t in PARAM_WASM_TYPES[p]), ("i32",)


def export_signature(ex: Export) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("i32",) * ex.nparams, ("i32",) if ex.returns else ()

EXPORTS_BY_NAME = {e.name: e for e in EXPORTS}

# WASI functions Envoy's and Higress's hosts provide; the module imports no others.
WASI_ALLOWED: frozenset[str] = frozenset(
    "fd_write fd_read fd_seek fd_close fd_fdstat_get environ_get environ_sizes_get "
    "args_get args_sizes_get clock_time_get random_get proc_exit path_open "
    "fd_prestat_get fd_prestat_dir_name".split()
)
