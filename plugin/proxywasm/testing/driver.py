"""Drive a plugin the way Envoy does, whatever VM runs it.

Subclasses provide ``_export(name, *args)``: a call into the plugin (in-process
dispatcher or a wasm instance). Everything else — streams, callouts, ticks,
inspection of headers, bodies, local replies, metrics, logs, shared data — is
common, so the same behavioural tests run on both hosts.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from ..abi import Action, BufferType, LogLevel, MapType, MetricType, StreamType
from .state import Callout, GrpcCallout, HostState, LocalResponse, RedisCall, SharedState, StreamState, redis_roundtrip

HeadersIn = Iterable[tuple[str, str]] | Mapping[str, str]


class UnimplementedHostCall(AssertionError):
    """The plugin used a host call the emulator does not implement."""


def _pairs(headers: HeadersIn) -> list[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k.lower(), v) for k, v in items]


def _config_bytes(config: bytes | str | Mapping[str, Any] | None) -> bytes:
    if config is None:
        return b""
    if isinstance(config, Mapping):
        return json.dumps(config).encode()
    return config.encode() if isinstance(config, str) else config


class Host(ABC):
    """One plugin VM plus the emulated Envoy around it."""

    def __init__(self, shared: SharedState | None = None, vm_id: str = "") -> None:
        self.state = HostState(shared, vm_id)
        self.root_id = 1
        self._next_id = 2
        self.redis_auto = True  # answer Redis calls as soon as the callback that made them returns

    @abstractmethod
    def _export(self, name: str, *args: int) -> int | None: ...

    def call(self, name: str, context_id: int, *args: int) -> int | None:
        """Invoke one plugin callback with ``context_id`` as the current context."""
        st = self.state
        st.current = context_id
        st.unimplemented.clear()
        result = self._export(name, context_id, *args)
        if st.unimplemented:
            raise UnimplementedHostCall(f"{name} used host calls the emulator lacks: {st.unimplemented}")
        while st.queue_ready:
            root, qid = st.queue_ready.pop(0)
            if root == self.root_id:
                self.call("proxy_on_queue_ready", root, qid)
        while self.redis_auto and st.redis_calls:
            self.answer_redis(st.redis_calls[0])
        return result

    # -- lifecycle --

    def start(self, plugin_config: bytes | str | Mapping[str, Any] | None = b"", vm_config: bytes = b"") -> bool:
        """Create the root context, start the VM and configure the plugin; False if either fails."""
        st = self.state
        st.vm_config, st.plugin_config = vm_config, _config_bytes(plugin_config)
        st.root_id = self.root_id
        self.call("proxy_on_context_create", self.root_id, 0)
        if not self.call("proxy_on_vm_start", self.root_id, len(vm_config)):
            return False
        return bool(self.call("proxy_on_configure", self.root_id, len(st.plugin_config)))

    def configure(self, plugin_config: bytes | str | Mapping[str, Any]) -> bool:
        self.state.plugin_config = _config_bytes(plugin_config)
        return bool(self.call("proxy_on_configure", self.root_id, len(self.state.plugin_config)))

    def tick(self) -> None:
        self.call("proxy_on_tick", self.root_id)

    def advance(self, ms: float) -> None:
        self.state.shared.clock_ns += int(ms * 1_000_000)

    def http_stream(self, properties: Mapping[str, bytes | str] | None = None) -> Stream:
        cid = self._next_id
        self._next_id += 1
        return Stream(self, cid, properties or {})

    def set_property(self, path: str, value: bytes | str) -> None:
        self.state.properties[tuple(path.split("."))] = value.encode() if isinstance(value, str) else value

    # -- callouts --

    @property
    def callouts(self) -> list[Callout]:
        """Callouts made and not yet answered, oldest first."""
        return list(self.state.callouts.values())

    def respond_callout(self, token: int, status: int = 200, headers: HeadersIn = (), body: bytes = b"",
                        trailers: HeadersIn = ()) -> None:
        self._deliver(token, [(":status", str(status)), *_pairs(headers)], body, _pairs(trailers))

    def fail_callout(self, token: int) -> None:
        """Deliver a failed callout (reset, timeout): Envoy reports no headers and no body."""
        self._deliver(token, [], b"", [])

    def _deliver(self, token: int, headers: list[tuple[str, str]], body: bytes, trailers: list[tuple[str, str]]) -> None:
        self.state.callouts.pop(token)
        resp = StreamState()
        resp.maps[MapType.HTTP_CALL_RESPONSE_HEADERS] = headers
        resp.maps[MapType.HTTP_CALL_RESPONSE_TRAILERS] = trailers
        resp.buffers[BufferType.HTTP_CALL_RESPONSE_BODY] = body
        self.state.callout_response = resp
        try:
            self.call("proxy_on_http_call_response", self.root_id, token, len(headers), len(body), len(trailers))
        finally:
            self.state.callout_response = None

    @property
    def grpc_calls(self) -> list[GrpcCallout]:
        """gRPC calls and gRPC streams open (not closed by the service, not cancelled), oldest first."""
        return list(self.state.grpc_calls.values())

    def grpc_metadata(self, token: int, initial: HeadersIn = (), trailing: bool = False) -> None:
        """Deliver initial (or, with ``trailing``, trailing) metadata of a call."""
        mt = MapType.GRPC_RECEIVE_TRAILING_METADATA if trailing else MapType.GRPC_RECEIVE_INITIAL_METADATA
        resp = StreamState()
        resp.maps[mt] = _pairs(initial)
        name = "proxy_on_grpc_receive_trailing_metadata" if trailing else "proxy_on_grpc_receive_initial_metadata"
        self._grpc_deliver(resp, name, token, len(resp.maps[mt]))

    def grpc_message(self, token: int, message: bytes) -> None:
        """Deliver one message of a gRPC call or gRPC stream."""
        resp = StreamState()
        resp.buffers[BufferType.GRPC_RECEIVE_BUFFER] = message
        self._grpc_deliver(resp, "proxy_on_grpc_receive", token, len(message))

    def close_grpc(self, token: int, status: int = 0, message: str = "") -> None:
        """The service (or Envoy) closes a gRPC stream, or fails a unary call, with a gRPC status."""
        self.state.grpc_calls.pop(token)
        self.state.status = (status, message.encode())
        try:
            self._grpc_deliver(StreamState(), "proxy_on_grpc_close", token, status)
        finally:
            self.state.status = (0, b"")

    def respond_grpc(self, token: int, message: bytes) -> None:
        """A unary call's answer as Envoy delivers it: the message alone (no metadata, no close)."""
        assert self.state.grpc_calls[token].timeout_ms is not None, "a gRPC stream: use grpc_message / close_grpc"
        self.state.grpc_calls.pop(token)
        self.grpc_message(token, message)

    def _grpc_deliver(self, resp: StreamState, export: str, token: int, arg: int) -> None:
        self.state.grpc_response = resp
        try:
            self.call(export, self.root_id, token, arg)
        finally:
            self.state.grpc_response = None

    # -- Redis (Higress host calls) --

    def use_redis(self, cluster: str, port: int, host: str = "127.0.0.1") -> None:
        """Make Envoy cluster ``cluster`` a real redis-server (what Higress's redis cluster config does)."""
        self.state.shared.redis_clusters[cluster] = (host, port)

    def answer_redis(self, call: RedisCall, status: int | None = None) -> None:
        """Run a pending Redis call against the real server (or fail it with ``status``) and deliver the reply."""
        self.state.redis_calls.remove(call)
        if status is None:
            status, reply = redis_roundtrip(self.state.redis_clients[call.cluster], call.query)
        else:
            reply = b""
        self.state.redis_response = reply
        try:
            self.call("proxy_on_redis_call_response", self.root_id, call.token, status, len(reply))
        finally:
            self.state.redis_response = None

    # -- inspection --

    @property
    def logs(self) -> list[tuple[int, str]]:
        return self.state.logs

    def logs_at(self, level: LogLevel) -> list[str]:
        return [m for lv, m in self.state.logs if lv == level]

    def _metric(self, name: str):
        mid = self.state.shared.metric_ids.get(name)
        if mid is None:
            raise KeyError(f"metric {name!r} was never defined; defined: {sorted(self.state.shared.metric_ids)}")
        return self.state.shared.metrics[mid]

    def metric(self, name: str) -> int:
        m = self._metric(name)
        assert m.type != MetricType.HISTOGRAM, f"{name} is a histogram; use histogram()"
        return m.value

    def histogram(self, name: str) -> list[int]:
        return list(self._metric(name).samples)

    @property
    def metric_names(self) -> list[str]:
        return sorted(self.state.shared.metric_ids)

    def shared_data(self, key: str) -> bytes | None:
        entry = self.state.shared.data.get(key)
        return entry[0] if entry else None


class Stream:
    """One HTTP stream through the plugin."""

    def __init__(self, host: Host, context_id: int, properties: Mapping[str, bytes | str]) -> None:
        self.host = host
        self.id = context_id
        self.s = StreamState()
        for k, v in properties.items():
            self.s.properties[tuple(k.split("."))] = v.encode() if isinstance(v, str) else v
        self.forwarded = {BufferType.HTTP_REQUEST_BODY: b"", BufferType.HTTP_RESPONSE_BODY: b""}
        host.state.streams[context_id] = self.s
        host.call("proxy_on_context_create", context_id, host.root_id)

    def _call(self, name: str, *args: int) -> Action:
        result = self.host.call(name, self.id, *args)
        return Action(result if result is not None else 0)

    def _headers(self, mt: MapType, name: str, headers: HeadersIn, eos: bool) -> Action:
        self.s.maps[mt] = _pairs(headers)
        return self._call(name, len(self.s.maps[mt]), int(eos))

    def _body(self, bt: BufferType, name: str, chunk: bytes, eos: bool) -> Action:
        self.s.buffers[bt] = self.s.buffers.get(bt, b"") + chunk
        action = self._call(name, len(self.s.buffers[bt]), int(eos))
        if action == Action.CONTINUE:  # Envoy passes the chunk on and empties its buffer
            self.forwarded[bt] += self.s.buffers[bt]
            self.s.buffers[bt] = b""
        return action

    def send_request_headers(self, headers: HeadersIn, end_of_stream: bool = False) -> Action:
        return self._headers(MapType.REQUEST_HEADERS, "proxy_on_request_headers", headers, end_of_stream)

    def send_request_body(self, chunk: bytes, end_of_stream: bool = True) -> Action:
        return self._body(BufferType.HTTP_REQUEST_BODY, "proxy_on_request_body", chunk, end_of_stream)

    def send_request_trailers(self, trailers: HeadersIn) -> Action:
        self.s.maps[MapType.REQUEST_TRAILERS] = _pairs(trailers)
        return self._call("proxy_on_request_trailers", len(self.s.maps[MapType.REQUEST_TRAILERS]))

    def send_response_headers(self, headers: HeadersIn, end_of_stream: bool = False) -> Action:
        return self._headers(MapType.RESPONSE_HEADERS, "proxy_on_response_headers", headers, end_of_stream)

    def send_response_body(self, chunk: bytes, end_of_stream: bool = True) -> Action:
        return self._body(BufferType.HTTP_RESPONSE_BODY, "proxy_on_response_body", chunk, end_of_stream)

    def send_response_trailers(self, trailers: HeadersIn) -> Action:
        self.s.maps[MapType.RESPONSE_TRAILERS] = _pairs(trailers)
        return self._call("proxy_on_response_trailers", len(self.s.maps[MapType.RESPONSE_TRAILERS]))

    def complete(self) -> None:
        """End the stream as Envoy does: on_log, on_done, on_delete."""
        self.host.call("proxy_on_log", self.id)
        self.host.call("proxy_on_done", self.id)
        self.host.call("proxy_on_delete", self.id)
        del self.host.state.streams[self.id]

    # -- what the plugin left --

    def _get(self, mt: MapType, name: str) -> str | None:
        values = [v for k, v in self.s.maps[mt] if k == name.lower()]
        return ",".join(values) if values else None

    @property
    def request_headers(self) -> list[tuple[str, str]]:
        return list(self.s.maps[MapType.REQUEST_HEADERS])

    @property
    def response_headers(self) -> list[tuple[str, str]]:
        return list(self.s.maps[MapType.RESPONSE_HEADERS])

    def request_header(self, name: str) -> str | None:
        return self._get(MapType.REQUEST_HEADERS, name)

    def response_header(self, name: str) -> str | None:
        return self._get(MapType.RESPONSE_HEADERS, name)

    def request_trailer(self, name: str) -> str | None:
        return self._get(MapType.REQUEST_TRAILERS, name)

    def response_trailer(self, name: str) -> str | None:
        return self._get(MapType.RESPONSE_TRAILERS, name)

    @property
    def request_body(self) -> bytes:
        """Request body bytes passed upstream plus any still held by the plugin."""
        bt = BufferType.HTTP_REQUEST_BODY
        return self.forwarded[bt] + self.s.buffers.get(bt, b"")

    @property
    def response_body(self) -> bytes:
        bt = BufferType.HTTP_RESPONSE_BODY
        return self.forwarded[bt] + self.s.buffers.get(bt, b"")

    @property
    def local_response(self) -> LocalResponse | None:
        return self.s.local_response

    @property
    def continued(self) -> list[StreamType]:
        return list(self.s.continued)

    def get_property(self, path: str) -> bytes | None:
        """What the plugin set with set_property (``path`` dotted), None if it did not."""
        return self.s.properties.get(tuple(path.split(".")))
