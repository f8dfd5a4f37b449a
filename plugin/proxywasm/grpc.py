"""gRPC callouts: unary calls and gRPC streams to a gRPC service behind an Envoy cluster.

``ctx.grpc_call(cluster, service, method, message, callback)`` sends one request message and calls
``callback(GrpcResponse)`` once the call closes; ``ctx.grpc_stream(cluster, service, method, on_message,
on_close)`` opens a gRPC stream (``GrpcStream.send / close / cancel``) whose messages reach ``on_message(bytes)``
as they come. Both bind their callbacks to the context that made the call, like ``http_call``; answers for the
context of an HTTP stream that is gone are dropped. Messages are bytes: serialise them with whatever the service
speaks (protobuf, or raw bytes for a generic handler).

How Envoy reports them (ABI 0.2.1, measured in Envoy 1.40): a unary call that succeeds gets one
``proxy_on_grpc_receive`` with the answer and nothing else (no metadata, no close); one that fails gets only
``proxy_on_grpc_close`` with the gRPC status (the message from ``proxy_get_status``): 14 UNAVAILABLE when nothing
answers; when the call's ``timeout_ms`` passes, 14 or 4 DEADLINE_EXCEEDED (Envoy 1.40 gives either). A gRPC stream
gets its initial metadata, each message, its trailing metadata and a close. Either way the callback sees one
``GrpcResponse``.
"""

from __future__ import annotations

from . import hostcalls as hc
from . import vm
from .abi import BufferType, MapType

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

Pairs = list[tuple[str, str]]


class GrpcResponse:
    """A finished gRPC call: ``status`` (0 OK), ``status_message``, a unary call's answer ``message`` (b"" for a
    gRPC stream: its messages went to ``on_message``), and a gRPC stream's metadata."""

    __slots__ = ("initial_metadata", "message", "status", "status_message", "trailing_metadata")

    def __init__(self, status: int, status_message: str, message: bytes, initial_metadata: Pairs,
                 trailing_metadata: Pairs) -> None:
        self.status, self.status_message, self.message = status, status_message, message
        self.initial_metadata, self.trailing_metadata = initial_metadata, trailing_metadata

    @property
    def ok(self) -> bool:
        return self.status == 0

    def __repr__(self) -> str:
        return f"GrpcResponse(status={self.status}, message={self.message!r})"


class GrpcCall:
    """One outstanding call as the dispatcher sees it (unary: collects; gRPC stream: forwards each message)."""

    __slots__ = ("ctx", "initial", "on_close", "on_message", "token", "trailing")

    def __init__(self, ctx: object, token: int, on_close: Callable[[GrpcResponse], None] | None,
                 on_message: Callable[[bytes], None] | None) -> None:
        self.ctx, self.token, self.on_close, self.on_message = ctx, token, on_close, on_message
        self.initial: Pairs = []
        self.trailing: Pairs = []

    def initial_metadata(self, count: int) -> None:
        self.initial = hc.get_header_map_pairs(MapType.GRPC_RECEIVE_INITIAL_METADATA) if count else []

    def receive(self, size: int) -> None:
        data = (hc.get_buffer(BufferType.GRPC_RECEIVE_BUFFER, 0, size) or b"") if size else b""
        if self.on_message is not None:
            self.on_message(data)
            return
        vm.grpc_calls.pop(self.token, None)  # a unary call's answer: it succeeded, nothing more comes
        if self.on_close is not None:
            self.on_close(GrpcResponse(0, "", data, self.initial, self.trailing))

    def trailing_metadata(self, count: int) -> None:
        self.trailing = hc.get_header_map_pairs(MapType.GRPC_RECEIVE_TRAILING_METADATA) if count else []

    def close(self, status: int) -> None:
        vm.grpc_calls.pop(self.token, None)
        message = ""
        try:
            _, raw = hc.get_status()
            message = (raw or b"").decode("utf-8", "replace")
        except hc.HostError:
            pass
        if self.on_close is not None:
            self.on_close(GrpcResponse(status, message, b"", self.initial, self.trailing))


class GrpcStream:
    """The plugin's side of an open gRPC stream."""

    __slots__ = ("token",)

    def __init__(self, token: int) -> None:
        self.token = token

    def send(self, message: bytes, end_stream: bool = False) -> None:
        """Send one message; ``end_stream`` half-closes the plugin's side."""
        hc.grpc_send(self.token, message, end_stream)

    def close(self) -> None:
        """Half-close: no more messages from the plugin; answers still arrive until the service closes."""
        hc.grpc_close(self.token)

    def cancel(self) -> None:
        """Abandon the gRPC stream: no more callbacks for it."""
        vm.grpc_calls.pop(self.token, None)
        hc.grpc_cancel(self.token)
