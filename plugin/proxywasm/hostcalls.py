"""Typed wrappers over the ``env.proxy_*`` imports: one thin function per call.

Statuses other than OK raise :class:`HostError`; NOT_FOUND (and EMPTY for queues)
becomes ``None`` where "absent" is an ordinary answer. The raw calls come from the
native module ``_proxywasm`` inside the .wasm, or from a test host bound with
:func:`bind` on ordinary CPython.

``raw_calls`` is the public raw-call API: the ``proxy_*`` functions exactly as the ABI has them (bytes in, a
``(status, value)`` tuple or a status out, no exceptions), for a plugin's per-request hot paths where the typed
wrapper's checks cost too much (e.g. incrementing ten known metric ids). Read it as ``hostcalls.raw_calls`` at
call time (a test host rebinds it).
"""

from __future__ import annotations

import struct
import time

from .abi import BufferType, LogLevel, MapType, MetricType, Result, StreamType

try:  # the raw ABI calls (public, see above)
    import _proxywasm as raw_calls  # type: ignore[import-not-found]
except ImportError:  # ordinary CPython: a test host binds itself later
    raw_calls = None

# The shim's helpers (header maps, JSON scan, response taps): C functions of ``_proxywasm`` inside the VM; the
# in-process host binds their Python twins (proxywasm.testing.shim_twins).
shim = raw_calls

TYPE_CHECKING = False  # typing itself is not imported at VM start
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

    Pairs = list[tuple[str, str]]
    HeaderInput = Iterable[tuple[str, str]]


class HostError(Exception):
    """A host call returned a status other than OK."""

    def __init__(self, call: str, status: int) -> None:
        self.call = call
        self.status = Result(status) if status in Result._value2member_map_ else status
        name = self.status.name if isinstance(self.status, Result) else str(status)
        super().__init__(f"{call} failed: {name}")


class CasMismatch(HostError):
    """Shared data changed since it was read (compare-and-swap lost)."""


# Plain ints on the hot path: comparing with enum members costs attribute lookups in the VM.
_NOT_FOUND = int(Result.NOT_FOUND)
_EMPTY = int(Result.EMPTY)
_CAS_MISMATCH = int(Result.CAS_MISMATCH)


def bind(host: Any, helpers: Any) -> None:
    """Route host calls to ``host`` (an object with the ``_proxywasm`` proxy_* functions and ``now_ns``) and the
    shim's helpers to ``helpers`` (the in-process host's proxywasm.testing.shim_twins.ShimTwins)."""
    global raw_calls, now_ns, shim
    raw_calls, now_ns, shim = host, host.now_ns, helpers


# The host's wall clock in ns. Inside the VM this is WASI's clock_time_get, which Envoy answers from
# the same clock as proxy_get_current_time_nanoseconds, at a fraction of the cost of a proxy_* call.
now_ns = time.time_ns


def now_ms() -> int:
    """The same clock in ms (the unit of timeouts, cooldowns and latencies)."""
    return now_ns() // 1_000_000


def _error(call: str, status: int) -> HostError:
    return (CasMismatch if status == _CAS_MISMATCH else HostError)(call, status)


def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


# --- header-map serialisation: u32 count, (u32 klen, u32 vlen)*, then "k\0v\0"* (unpacked by the shim's
# header_map: build/shim/headers.c, its twin in proxywasm.testing.shim_twins) ---

def pack_pairs(pairs: HeaderInput) -> bytes:
    items = [(_b(k), _b(v)) for k, v in pairs]
    sizes: list[int] = [len(items)]
    for k, v in items:
        sizes += (len(k), len(v))
    return struct.pack(f"<{len(sizes)}I", *sizes) + b"".join(k + b"\0" + v + b"\0" for k, v in items)


# --- logging, time, lifecycle ---

def log(level: int, message: str) -> None:
    raw_calls.proxy_log(level, _b(message))


def get_log_level() -> LogLevel:
    st, level = raw_calls.proxy_get_log_level()
    if st:
        raise _error("proxy_get_log_level", st)
    return LogLevel(level)


def get_current_time_ns() -> int:
    st, now = raw_calls.proxy_get_current_time_nanoseconds()
    if st:
        raise _error("proxy_get_current_time_nanoseconds", st)
    return now


def set_tick_period_ms(period: int) -> None:
    st = raw_calls.proxy_set_tick_period_milliseconds(period)
    if st:
        raise _error("proxy_set_tick_period_milliseconds", st)


def set_effective_context(context_id: int) -> None:
    st = raw_calls.proxy_set_effective_context(context_id)
    if st:
        raise _error("proxy_set_effective_context", st)


def done() -> None:
    st = raw_calls.proxy_done()
    if st:
        raise _error("proxy_done", st)


def get_status() -> tuple[int, bytes]:
    st, code, msg = raw_calls.proxy_get_status()
    if st:
        raise _error("proxy_get_status", st)
    return code, msg


# --- properties ---

_PATHS: dict[Any, bytes] = {}


def _path(path: str | Sequence[str]) -> bytes:
    raw = _PATHS.get(path)
    if raw is None:
        parts = path.split(".") if isinstance(path, str) else path
        raw = b"\0".join(_b(p) for p in parts)
        if len(_PATHS) < 256:  # plugins use a handful of fixed paths
            _PATHS[path] = raw
    return raw


def get_property(path: str | Sequence[str]) -> bytes | None:
    """Read an Envoy attribute, e.g. ``"route_name"`` or ``("request", "path")``."""
    st, value = raw_calls.proxy_get_property(_path(path))
    if st == _NOT_FOUND:
        return None
    if st:
        raise _error("proxy_get_property", st)
    return value


def set_property(path: str | Sequence[str], value: bytes | str) -> None:
    st = raw_calls.proxy_set_property(_path(path), _b(value))
    if st:
        raise _error("proxy_set_property", st)


# --- buffers ---

def get_buffer(buffer_type: BufferType, start: int = 0, max_size: int = 0xFFFFFFFF) -> bytes | None:
    st, data = raw_calls.proxy_get_buffer_bytes(buffer_type, start, max_size)
    if st == _NOT_FOUND:
        return None
    if st:
        raise _error("proxy_get_buffer_bytes", st)
    return data


def get_buffer_status(buffer_type: BufferType) -> tuple[int, int]:
    st, length, flags = raw_calls.proxy_get_buffer_status(buffer_type)
    if st:
        raise _error("proxy_get_buffer_status", st)
    return length, flags


def set_buffer(buffer_type: BufferType, start: int, size: int, data: bytes) -> None:
    st = raw_calls.proxy_set_buffer_bytes(buffer_type, start, size, data)
    if st:
        raise _error("proxy_set_buffer_bytes", st)


# --- header maps ---

def get_header_map_pairs(map_type: MapType) -> Pairs:
    got = shim.header_map(map_type, False)  # read and unpacked in one call (an int: the host's status)
    return got if type(got) is list else _map_status(got, [])


def get_header_map_dict(map_type: MapType, names: tuple[bytes, ...] | None = None) -> dict[str, str]:
    """The map as a dict (repeated names joined with ","); with ``names`` (lowercase, as bytes) only those headers
    (the others are never decoded)."""
    got = shim.header_map(map_type, True, names)
    return got if type(got) is dict else _map_status(got, {})


def _map_status(status: int, empty: Any) -> Any:
    if status == _NOT_FOUND:
        return empty
    raise _error("proxy_get_header_map_pairs", status)


def set_header_map_pairs(map_type: MapType, pairs: HeaderInput) -> None:
    st = raw_calls.proxy_set_header_map_pairs(map_type, pack_pairs(pairs))
    if st:
        raise _error("proxy_set_header_map_pairs", st)


def get_header_map_size(map_type: MapType) -> int:
    st, size = raw_calls.proxy_get_header_map_size(map_type)
    if st:
        raise _error("proxy_get_header_map_size", st)
    return size


def get_header_map_value(map_type: MapType, key: str) -> str | None:
    st, value = raw_calls.proxy_get_header_map_value(map_type, _b(key))
    if st == _NOT_FOUND:
        return None
    if st:
        raise _error("proxy_get_header_map_value", st)
    return _s(value)


def replace_header_map_value(map_type: MapType, key: str, value: str) -> None:
    st = raw_calls.proxy_replace_header_map_value(map_type, _b(key), _b(value))
    if st:
        raise _error("proxy_replace_header_map_value", st)


def remove_header_map_value(map_type: MapType, key: str) -> None:
    st = raw_calls.proxy_remove_header_map_value(map_type, _b(key))
    if st:
        raise _error("proxy_remove_header_map_value", st)


def add_header_map_value(map_type: MapType, key: str, value: str) -> None:
    st = raw_calls.proxy_add_header_map_value(map_type, _b(key), _b(value))
    if st:
        raise _error("proxy_add_header_map_value", st)


# --- stream control ---

def continue_stream(stream: StreamType) -> None:
    st = raw_calls.proxy_continue_stream(stream)
    if st:
        raise _error("proxy_continue_stream", st)


def close_stream(stream: StreamType) -> None:
    st = raw_calls.proxy_close_stream(stream)
    if st:
        raise _error("proxy_close_stream", st)


def send_local_response(status: int, body: bytes | str = b"", headers: HeaderInput = (),
                        details: str = "", grpc_status: int = -1) -> None:
    st = raw_calls.proxy_send_local_response(status, _b(details), _b(body), pack_pairs(headers), grpc_status)
    if st:
        raise _error("proxy_send_local_response", st)


# --- callouts ---

def http_call(upstream: str, headers: HeaderInput, body: bytes = b"", trailers: HeaderInput = (),
              timeout_ms: int = 5000) -> int:
    st, token = raw_calls.proxy_http_call(_b(upstream), pack_pairs(headers), body, pack_pairs(trailers), timeout_ms)
    if st:
        raise _error("proxy_http_call", st)
    return token


def grpc_call(service: bytes, service_name: str, method: str, metadata: HeaderInput, message: bytes,
              timeout_ms: int) -> int:
    st, token = raw_calls.proxy_grpc_call(service, _b(service_name), _b(method), pack_pairs(metadata), message, timeout_ms)
    if st:
        raise _error("proxy_grpc_call", st)
    return token


def grpc_stream(service: bytes, service_name: str, method: str, metadata: HeaderInput) -> int:
    st, token = raw_calls.proxy_grpc_stream(service, _b(service_name), _b(method), pack_pairs(metadata))
    if st:
        raise _error("proxy_grpc_stream", st)
    return token


def grpc_send(token: int, message: bytes, end_stream: bool) -> None:
    st = raw_calls.proxy_grpc_send(token, message, int(end_stream))
    if st:
        raise _error("proxy_grpc_send", st)


def grpc_cancel(token: int) -> None:
    st = raw_calls.proxy_grpc_cancel(token)
    if st:
        raise _error("proxy_grpc_cancel", st)


def grpc_close(token: int) -> None:
    st = raw_calls.proxy_grpc_close(token)
    if st:
        raise _error("proxy_grpc_close", st)


# --- shared data and queues ---

def get_shared_data(key: str) -> tuple[bytes | None, int]:
    """Return (value, cas); (None, 0) when the key is absent."""
    st, value, cas = raw_calls.proxy_get_shared_data(_b(key))
    if st == _NOT_FOUND:
        return None, 0
    if st:
        raise _error("proxy_get_shared_data", st)
    return value, cas


def set_shared_data(key: str, value: bytes, cas: int = 0) -> None:
    """Store ``value``; with a non-zero ``cas`` only if unchanged since read (else CasMismatch)."""
    st = raw_calls.proxy_set_shared_data(_b(key), value, cas)
    if st:
        raise _error("proxy_set_shared_data", st)


def register_shared_queue(name: str) -> int:
    st, qid = raw_calls.proxy_register_shared_queue(_b(name))
    if st:
        raise _error("proxy_register_shared_queue", st)
    return qid


def resolve_shared_queue(vm_id: str, name: str) -> int | None:
    st, qid = raw_calls.proxy_resolve_shared_queue(_b(vm_id), _b(name))
    if st == _NOT_FOUND:
        return None
    if st:
        raise _error("proxy_resolve_shared_queue", st)
    return qid


def enqueue_shared_queue(queue_id: int, data: bytes) -> None:
    st = raw_calls.proxy_enqueue_shared_queue(queue_id, data)
    if st:
        raise _error("proxy_enqueue_shared_queue", st)


def dequeue_shared_queue(queue_id: int) -> bytes | None:
    st, data = raw_calls.proxy_dequeue_shared_queue(queue_id)
    if st == _EMPTY:
        return None
    if st:
        raise _error("proxy_dequeue_shared_queue", st)
    return data


# --- metrics ---

def define_metric(metric_type: MetricType, name: str) -> int:
    st, mid = raw_calls.proxy_define_metric(metric_type, _b(name))
    if st:
        raise _error("proxy_define_metric", st)
    return mid


def increment_metric(metric_id: int, offset: int) -> None:
    st = raw_calls.proxy_increment_metric(metric_id, offset)
    if st:
        raise _error("proxy_increment_metric", st)


def record_metric(metric_id: int, value: int) -> None:
    st = raw_calls.proxy_record_metric(metric_id, value)
    if st:
        raise _error("proxy_record_metric", st)


def get_metric(metric_id: int) -> int:
    st, value = raw_calls.proxy_get_metric(metric_id)
    if st:
        raise _error("proxy_get_metric", st)
    return value


# --- Redis (Higress's Envoy only; absent from modules built for stock Envoy) ---

def has_redis() -> bool:
    """Whether this module and host offer Higress's Redis calls (the "higress" build variant)."""
    return hasattr(raw_calls, "proxy_redis_call")


def redis_init(cluster: str, username: str = "", password: str = "", timeout_ms: int = 1000) -> None:
    """Set up the host's Redis client for ``cluster`` (Higress: ``name?db=N`` picks a database)."""
    if not has_redis():
        raise HostError("proxy_redis_init", int(Result.UNIMPLEMENTED))
    st = raw_calls.proxy_redis_init(_b(cluster), _b(username), _b(password), timeout_ms)
    if st:
        raise _error("proxy_redis_init", st)


def redis_call(cluster: str, query: bytes) -> int:
    """Send a RESP-encoded command; the reply comes to proxy_on_redis_call_response with this callout id."""
    if not has_redis():
        raise HostError("proxy_redis_call", int(Result.UNIMPLEMENTED))
    st, token = raw_calls.proxy_redis_call(_b(cluster), query)
    if st:
        raise _error("proxy_redis_call", st)
    return token


def call_foreign_function(name: str, args: bytes) -> bytes | None:
    st, out = raw_calls.proxy_call_foreign_function(_b(name), args)
    if st == _NOT_FOUND:
        return None
    if st:
        raise _error("proxy_call_foreign_function", st)
    return out
