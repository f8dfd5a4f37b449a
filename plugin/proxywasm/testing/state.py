"""Envoy's side of the ABI, emulated in Python.

``HostState`` implements every ``env.proxy_*`` import with the Python-level
convention of ``_proxywasm`` (see proxywasm.abi). The in-process host binds it
directly; the wasmtime host marshals wasm memory to and from it. What a call does
follows Envoy 1.40 (proxy-wasm-cpp-host): CAS on shared data, buffer splicing,
callout validation, effective contexts. Calls the emulator does not implement
are recorded in ``unimplemented`` and fail the test when the callback returns.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from ..abi import IMPORTS, BufferType, MapType, MetricType, Result, StreamType
from ..hostcalls import pack_pairs
from ..resp import Incomplete, command, parse
from .shim_twins import unpack_pairs

Pairs = list[tuple[str, str]]
OK = int(Result.OK)


@dataclass
class LocalResponse:
    status: int
    body: bytes
    headers: Pairs
    details: str
    grpc_status: int


@dataclass
class Callout:
    token: int
    context_id: int  # the context that was effective when the call was made
    cluster: str
    headers: Pairs
    body: bytes
    trailers: Pairs
    timeout_ms: int

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class RedisCall:
    token: int
    context_id: int  # the context effective when the call was made
    cluster: str
    query: bytes


@dataclass
class RedisClient:
    """What proxy_redis_init set up for a cluster (Higress: one client per cluster name, options after '?')."""

    address: tuple[str, int]
    username: str
    password: str
    timeout_ms: int
    db: int


def redis_roundtrip(client: RedisClient, query: bytes) -> tuple[int, bytes]:
    """Run one RESP query against a real redis-server as Higress's host does: (0, reply bytes), or (1, b"")
    when the server cannot be reached or does not answer within the client's timeout."""
    try:
        with socket.create_connection(client.address, timeout=client.timeout_ms / 1000) as sock:
            pre = b""
            if client.password:
                pre += command("AUTH", *((client.username,) if client.username else ()), client.password)
            if client.db:
                pre += command("SELECT", client.db)
            sock.sendall(pre + query)
            data, pos = b"", 0
            for _ in range((1 if client.password else 0) + (1 if client.db else 0)):
                while True:
                    try:
                        _, pos = parse(data, pos)
                        break
                    except Incomplete:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return 1, b""
                        data += chunk
            start = pos
            while True:
                try:
                    _, end = parse(data, start)
                    return 0, data[start:end]
                except Incomplete:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return 1, b""
                    data += chunk
    except OSError:
        return 1, b""


@dataclass
class GrpcCallout:
    """A gRPC call or gRPC stream the plugin opened (``timeout_ms`` None: a gRPC stream)."""

    token: int
    context_id: int  # the context that was effective when the call was made
    cluster: str
    service: str
    method: str
    metadata: Pairs
    messages: list[bytes]  # sent by the plugin, in order
    timeout_ms: int | None
    half_closed: bool = False  # the plugin sent end_stream or called grpc_close
    cancelled: bool = False


@dataclass
class StreamState:
    """One HTTP stream as the host sees it."""

    maps: dict[MapType, Pairs] = field(default_factory=lambda: {m: [] for m in MapType})
    buffers: dict[BufferType, bytes] = field(default_factory=dict)
    properties: dict[tuple[str, ...], bytes] = field(default_factory=dict)
    local_response: LocalResponse | None = None
    continued: list[StreamType] = field(default_factory=list)
    closed: list[StreamType] = field(default_factory=list)


@dataclass
class Metric:
    name: str
    type: MetricType
    value: int = 0
    samples: list[int] = field(default_factory=list)


class SharedState:
    """What all VMs of one host share: shared data, queues, metrics, the clock."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self.next_cas = 1
        self.queues: dict[int, tuple[str, list[bytes], int]] = {}  # id -> (name, items, owner root)
        self.queue_ids: dict[tuple[str, str], int] = {}
        self.metrics: dict[int, Metric] = {}
        self.metric_ids: dict[str, int] = {}
        self.clock_ns = time.time_ns()
        self.next_token = 1
        self.redis_clusters: dict[str, tuple[str, int]] = {}  # Envoy cluster name -> a real redis-server


def _sl(start: int, max_size: int, data: bytes) -> bytes:
    return data[start : start + max_size]


class HostState:
    """One VM's view of the host. Method names and signatures mirror the ABI table."""

    def __init__(self, shared: SharedState | None = None, vm_id: str = "") -> None:
        self.shared = shared or SharedState()
        self.vm_id = vm_id
        self.logs: list[tuple[int, str]] = []
        self.log_level = 0
        self.vm_config = b""
        self.plugin_config = b""
        self.properties: dict[tuple[str, ...], bytes] = {}
        self.streams: dict[int, StreamState] = {}
        self.current = 0  # context the host is calling into (or made effective)
        self.root_id = 0
        self.tick_period_ms = 0
        self.callouts: dict[int, Callout] = {}
        self.callout_response: StreamState | None = None
        self.grpc_calls: dict[int, GrpcCallout] = {}
        self.grpc_response: StreamState | None = None  # what a gRPC callback is delivering
        self.status: tuple[int, bytes] = (0, b"")  # proxy_get_status
        self.clusters: set[str] | None = None  # None: any cluster name is accepted
        self.unimplemented: list[str] = []
        self.queue_ready: list[tuple[int, int]] = []  # (root id, queue id) to deliver
        self.redis_clients: dict[str, RedisClient] = {}
        self.redis_calls: list[RedisCall] = []  # made and not yet answered
        self.redis_response: bytes | None = None  # buffer 9 while a reply is delivered

    # -- helpers used by drivers --

    def stream(self, context_id: int | None = None) -> StreamState | None:
        return self.streams.get(self.current if context_id is None else context_id)

    def _map(self, map_type: int) -> Pairs | None:
        if map_type in (MapType.HTTP_CALL_RESPONSE_HEADERS, MapType.HTTP_CALL_RESPONSE_TRAILERS):
            return self.callout_response.maps[MapType(map_type)] if self.callout_response else None
        if map_type in (MapType.GRPC_RECEIVE_INITIAL_METADATA, MapType.GRPC_RECEIVE_TRAILING_METADATA):
            return self.grpc_response.maps[MapType(map_type)] if self.grpc_response else None
        s = self.stream()
        return s.maps[MapType(map_type)] if s and map_type in MapType._value2member_map_ else None

    def _unimplemented(self, name: str) -> int:
        self.unimplemented.append(name)
        return int(Result.UNIMPLEMENTED)

    # -- logging, time, lifecycle --

    def proxy_log(self, level: int, message: bytes) -> int:
        self.logs.append((level, message.decode("utf-8", "replace")))
        return OK

    def proxy_get_log_level(self) -> tuple[int, int]:
        return OK, self.log_level

    def now_ns(self) -> int:
        """The clock hostcalls.now_ns reads (WASI's clock_time_get inside the VM)."""
        return self.shared.clock_ns

    def proxy_get_current_time_nanoseconds(self) -> tuple[int, int]:
        return OK, self.shared.clock_ns

    def proxy_set_tick_period_milliseconds(self, period: int) -> int:
        self.tick_period_ms = period
        return OK

    def proxy_set_effective_context(self, context_id: int) -> int:
        if context_id != self.root_id and context_id not in self.streams:
            return int(Result.BAD_ARGUMENT)
        self.current = context_id
        return OK

    def proxy_done(self) -> int:
        return OK

    def proxy_get_status(self) -> tuple[int, int | None, bytes | None]:
        return OK, *self.status

    # -- properties --

    def proxy_get_property(self, path: bytes) -> tuple[int, bytes | None]:
        key = tuple(p.decode() for p in path.split(b"\0"))
        s = self.stream()
        value = s.properties.get(key) if s else None
        if value is None:
            value = self.properties.get(key)
        return (OK, value) if value is not None else (int(Result.NOT_FOUND), None)

    def proxy_set_property(self, path: bytes, value: bytes) -> int:
        key = tuple(p.decode() for p in path.split(b"\0"))
        s = self.stream()
        (s.properties if s else self.properties)[key] = value
        return OK

    # -- buffers --

    def _buffer(self, bt: int) -> bytes | None:
        if bt == BufferType.VM_CONFIGURATION:
            return self.vm_config
        if bt == BufferType.PLUGIN_CONFIGURATION:
            return self.plugin_config
        if bt == BufferType.REDIS_CALL_RESPONSE:
            return self.redis_response
        if bt == BufferType.HTTP_CALL_RESPONSE_BODY:
            return self.callout_response.buffers.get(BufferType(bt), b"") if self.callout_response else None
        if bt == BufferType.GRPC_RECEIVE_BUFFER:
            return self.grpc_response.buffers.get(BufferType(bt), b"") if self.grpc_response else None
        s = self.stream()
        return s.buffers.get(BufferType(bt)) if s and bt in BufferType._value2member_map_ else None

    def proxy_get_buffer_bytes(self, bt: int, start: int, max_size: int) -> tuple[int, bytes | None]:
        data = self._buffer(bt)
        if data is None:
            return int(Result.NOT_FOUND), None
        return OK, _sl(start, max_size, data)

    def proxy_get_buffer_status(self, bt: int) -> tuple[int, int | None, int | None]:
        data = self._buffer(bt)
        if data is None:
            return int(Result.NOT_FOUND), None, None
        return OK, len(data), 0

    def proxy_set_buffer_bytes(self, bt: int, start: int, size: int, data: bytes) -> int:
        s = self.stream()
        if s is None or bt not in (BufferType.HTTP_REQUEST_BODY, BufferType.HTTP_RESPONSE_BODY):
            return int(Result.BAD_ARGUMENT)
        cur = s.buffers.get(BufferType(bt), b"")
        # Envoy: (0, 0) prepends, start >= len appends, (0, >= len) replaces; nothing else.
        if start == 0 and size == 0:
            new = data + cur
        elif start >= len(cur):
            new = cur + data
        elif start == 0 and size >= len(cur):
            new = data
        else:
            return int(Result.BAD_ARGUMENT)
        s.buffers[BufferType(bt)] = new
        return OK

    # -- header maps --

    def proxy_get_header_map_pairs(self, mt: int) -> tuple[int, bytes | None]:
        m = self._map(mt)
        return (OK, pack_pairs(m)) if m is not None else (int(Result.NOT_FOUND), None)

    def proxy_set_header_map_pairs(self, mt: int, data: bytes) -> int:
        m = self._map(mt)
        if m is None:
            return int(Result.NOT_FOUND)
        m[:] = [(k.lower(), v) for k, v in unpack_pairs(data)]
        return OK

    def proxy_get_header_map_size(self, mt: int) -> tuple[int, int | None]:
        m = self._map(mt)
        return (OK, len(m)) if m is not None else (int(Result.NOT_FOUND), None)

    def proxy_get_header_map_value(self, mt: int, key: bytes) -> tuple[int, bytes | None]:
        m = self._map(mt)
        k = key.decode().lower()
        values = [v for kk, v in m or () if kk == k]
        if not values:
            return int(Result.NOT_FOUND), None
        return OK, ",".join(values).encode("utf-8", "surrogateescape")

    def proxy_replace_header_map_value(self, mt: int, key: bytes, value: bytes) -> int:
        m = self._map(mt)
        if m is None:
            return int(Result.NOT_FOUND)
        k, v = key.decode().lower(), value.decode("utf-8", "surrogateescape")
        idx = next((i for i, (kk, _) in enumerate(m) if kk == k), None)
        m[:] = [(kk, vv) for kk, vv in m if kk != k]
        m.insert(len(m) if idx is None else idx, (k, v))
        return OK

    def proxy_remove_header_map_value(self, mt: int, key: bytes) -> int:
        m = self._map(mt)
        if m is None:
            return int(Result.NOT_FOUND)
        k = key.decode().lower()
        m[:] = [(kk, vv) for kk, vv in m if kk != k]
        return OK

    def proxy_add_header_map_value(self, mt: int, key: bytes, value: bytes) -> int:
        m = self._map(mt)
        if m is None:
            return int(Result.NOT_FOUND)
        m.append((key.decode().lower(), value.decode("utf-8", "surrogateescape")))
        return OK

    # -- stream control --

    def proxy_continue_stream(self, stream_type: int) -> int:
        s = self.stream()
        if s is None:
            return int(Result.BAD_ARGUMENT)
        s.continued.append(StreamType(stream_type))
        return OK

    def proxy_close_stream(self, stream_type: int) -> int:
        s = self.stream()
        if s is None:
            return int(Result.BAD_ARGUMENT)
        s.closed.append(StreamType(stream_type))
        return OK

    def proxy_send_local_response(self, status: int, details: bytes, body: bytes, headers: bytes,
                                  grpc_status: int) -> int:
        s = self.stream()
        if s is None:
            return int(Result.BAD_ARGUMENT)
        grpc_status -= (grpc_status >= 2**31) << 32  # an i32 (-1: not gRPC), however it arrived
        s.local_response = LocalResponse(status, body, unpack_pairs(headers), details.decode(), grpc_status)
        return OK

    # -- callouts --

    def proxy_http_call(self, upstream: bytes, headers: bytes, body: bytes, trailers: bytes,
                        timeout_ms: int) -> tuple[int, int | None]:
        cluster = upstream.decode()
        hdrs = unpack_pairs(headers)
        names = {k for k, _ in hdrs}
        # Envoy rejects callouts without these pseudo-headers or to unknown clusters.
        if not {":method", ":path", ":authority"} <= names:
            return int(Result.BAD_ARGUMENT), None
        if self.clusters is not None and cluster not in self.clusters:
            return int(Result.BAD_ARGUMENT), None
        token = self.shared.next_token
        self.shared.next_token += 1
        self.callouts[token] = Callout(token, self.current, cluster, hdrs, body, unpack_pairs(trailers), timeout_ms)
        return OK, token

    def _grpc_open(self, service: bytes, service_name: bytes, method: bytes, metadata: bytes,
                   messages: list[bytes], timeout_ms: int | None) -> tuple[int, int | None]:
        cluster = service.decode("utf-8", "replace")
        # Envoy takes a serialized GrpcService or a cluster name, and refuses an unknown cluster.
        if not cluster or (self.clusters is not None and cluster not in self.clusters):
            return int(Result.BAD_ARGUMENT), None
        token = self.shared.next_token
        self.shared.next_token += 1
        self.grpc_calls[token] = GrpcCallout(token, self.current, cluster, service_name.decode(), method.decode(),
                                             unpack_pairs(metadata), messages, timeout_ms)
        return OK, token

    def proxy_grpc_call(self, service: bytes, service_name: bytes, method: bytes, metadata: bytes, message: bytes,
                        timeout_ms: int) -> tuple[int, int | None]:
        return self._grpc_open(service, service_name, method, metadata, [message], timeout_ms)

    def proxy_grpc_stream(self, service: bytes, service_name: bytes, method: bytes,
                          metadata: bytes) -> tuple[int, int | None]:
        return self._grpc_open(service, service_name, method, metadata, [], None)

    def _grpc_stream(self, token: int) -> GrpcCallout | None:
        call = self.grpc_calls.get(token)
        return call if call is not None and call.timeout_ms is None else None

    def proxy_grpc_send(self, token: int, message: bytes, end_stream: int) -> int:
        call = self._grpc_stream(token)
        if call is None:
            return int(Result.NOT_FOUND)
        if call.half_closed:
            return int(Result.BAD_ARGUMENT)
        call.messages.append(message)
        call.half_closed = bool(end_stream)
        return OK

    def proxy_grpc_cancel(self, token: int) -> int:
        call = self.grpc_calls.pop(token, None)
        if call is None:
            return int(Result.NOT_FOUND)
        call.cancelled = True
        return OK

    def proxy_grpc_close(self, token: int) -> int:
        call = self.grpc_calls.get(token)
        if call is None:
            return int(Result.NOT_FOUND)
        call.half_closed = True
        return OK

    def proxy_call_foreign_function(self, name: bytes, args: bytes) -> tuple[int, None]:
        return int(Result.NOT_FOUND), None  # Envoy: unknown foreign function

    # -- Redis (Higress's host calls), against a real redis-server --

    def proxy_redis_init(self, upstream: bytes, username: bytes, password: bytes, timeout_ms: int) -> int:
        name, _, opts = upstream.decode().partition("?")
        address = self.shared.redis_clusters.get(name)
        if address is None:
            return int(Result.BAD_ARGUMENT)  # no such cluster
        params = dict(p.partition("=")[::2] for p in opts.split("&") if p)
        db = params.get("db", "0")
        self.redis_clients[name] = RedisClient(address, username.decode(), password.decode(), timeout_ms,
                                               int(db) if db.isdigit() else 0)
        return OK

    def proxy_redis_call(self, upstream: bytes, query: bytes) -> tuple[int, int | None]:
        name = upstream.decode().partition("?")[0]
        if name not in self.redis_clients or not query:
            return int(Result.BAD_ARGUMENT), None
        token = self.shared.next_token
        self.shared.next_token += 1
        self.redis_calls.append(RedisCall(token, self.current, name, query))
        return OK, token

    # -- shared data and queues --

    def proxy_get_shared_data(self, key: bytes) -> tuple[int, bytes | None, int | None]:
        entry = self.shared.data.get(key.decode())
        return (OK, *entry) if entry else (int(Result.NOT_FOUND), None, None)

    def proxy_set_shared_data(self, key: bytes, value: bytes, cas: int) -> int:
        k = key.decode()
        entry = self.shared.data.get(k)
        if cas and entry is not None and entry[1] != cas:
            return int(Result.CAS_MISMATCH)
        self.shared.next_cas += 1
        self.shared.data[k] = (value, self.shared.next_cas)
        return OK

    def proxy_register_shared_queue(self, name: bytes) -> tuple[int, int]:
        key = (self.vm_id, name.decode())
        qid = self.shared.queue_ids.get(key)
        if qid is None:
            qid = self.shared.queue_ids[key] = len(self.shared.queues) + 1
        self.shared.queues[qid] = (key[1], self.shared.queues.get(qid, ("", [], 0))[1], self.root_id)
        return OK, qid

    def proxy_resolve_shared_queue(self, vm_id: bytes, name: bytes) -> tuple[int, int | None]:
        qid = self.shared.queue_ids.get((vm_id.decode(), name.decode()))
        return (OK, qid) if qid else (int(Result.NOT_FOUND), None)

    def proxy_enqueue_shared_queue(self, qid: int, data: bytes) -> int:
        q = self.shared.queues.get(qid)
        if q is None:
            return int(Result.NOT_FOUND)
        q[1].append(data)
        self.queue_ready.append((q[2], qid))
        return OK

    def proxy_dequeue_shared_queue(self, qid: int) -> tuple[int, bytes | None]:
        q = self.shared.queues.get(qid)
        if q is None:
            return int(Result.NOT_FOUND), None
        if not q[1]:
            return int(Result.EMPTY), None
        return OK, q[1].pop(0)

    # -- metrics (shared by all VMs, like Envoy stats) --

    def proxy_define_metric(self, metric_type: int, name: bytes) -> tuple[int, int | None]:
        if metric_type not in MetricType._value2member_map_:
            return int(Result.BAD_ARGUMENT), None
        n = name.decode()
        mid = self.shared.metric_ids.get(n)
        if mid is None:
            mid = self.shared.metric_ids[n] = len(self.shared.metric_ids) + 1
            self.shared.metrics[mid] = Metric(n, MetricType(metric_type))
        return OK, mid

    def proxy_increment_metric(self, metric_id: int, offset: int) -> int:
        m = self.shared.metrics.get(metric_id)
        if m is None or m.type == MetricType.HISTOGRAM:
            return int(Result.NOT_FOUND if m is None else Result.BAD_ARGUMENT)
        if m.type == MetricType.COUNTER and offset <= 0:  # Envoy: counters only grow, and 0 is refused too
            return int(Result.BAD_ARGUMENT)
        m.value += offset
        return OK

    def proxy_record_metric(self, metric_id: int, value: int) -> int:
        m = self.shared.metrics.get(metric_id)
        if m is None:
            return int(Result.NOT_FOUND)
        if m.type == MetricType.HISTOGRAM:
            m.samples.append(value)
        elif m.type == MetricType.GAUGE:
            m.value = value
        else:  # Envoy adds to a counter
            m.value += value
        return OK

    def proxy_get_metric(self, metric_id: int) -> tuple[int, int | None]:
        m = self.shared.metrics.get(metric_id)
        if m is None:
            return int(Result.NOT_FOUND), None
        if m.type == MetricType.HISTOGRAM:
            return int(Result.BAD_ARGUMENT), None
        return OK, m.value


missing = [f.name for f in IMPORTS if not hasattr(HostState, f.name)]
assert not missing, f"HostState lacks ABI imports: {missing}"
