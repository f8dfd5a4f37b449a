"""Root and HTTP contexts. Every callback defaults to a no-op that continues."""

from __future__ import annotations

import json

from . import grpc, streams, taps, vm
from . import hostcalls as hc
from .abi import Action, BufferType, LogLevel, MapType, StreamType
from .config import ConfigError
from .record import factory, record
from .rules import RuleSet

TYPE_CHECKING = False  # typing itself is not imported at VM start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, TypeVar

    C = TypeVar("C")
    CalloutCallback = Callable[["CalloutResponse"], None]
    RedisCallback = Callable[[int, bytes], None]


class _Generic:
    """``HttpContext[Config]`` for type checkers, without importing typing at VM start."""

    def __class_getitem__(cls, item: object) -> type:
        return cls


@record
class CalloutResponse:
    """An HTTP callout's answer (``status`` is 0 when the call failed or timed out)."""

    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = factory(list)

    @property
    def status(self) -> int:
        for k, v in self.headers:
            if k == ":status":
                return int(v) if v.isdigit() else 0
        return 0

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class _Context:
    context_id: int

    def http_call(self, cluster: str, headers: hc.HeaderInput, body: bytes = b"",
                  callback: CalloutCallback | None = None, timeout_ms: int = 5000,
                  trailers: hc.HeaderInput = ()) -> int:
        """Send an HTTP request to ``cluster``; ``callback`` runs bound to this context."""
        token = hc.http_call(cluster, headers, body, trailers, timeout_ms)
        vm.register_callout(token, self, callback)
        return token

    def grpc_call(self, cluster: str, service: str, method: str, message: bytes,
                  callback: Callable[[grpc.GrpcResponse], None] | None, metadata: hc.HeaderInput = (),
                  timeout_ms: int = 5000) -> int:
        """Unary gRPC call to ``service``/``method`` on ``cluster`` (an HTTP/2 cluster); ``callback`` runs bound to
        this context when it closes (see proxywasm.grpc)."""
        token = hc.grpc_call(cluster.encode(), service, method, metadata, message, timeout_ms)
        vm.grpc_calls[token] = grpc.GrpcCall(self, token, callback, None)
        return token

    def grpc_stream(self, cluster: str, service: str, method: str,
                    on_message: Callable[[bytes], None] | None = None,
                    on_close: Callable[[grpc.GrpcResponse], None] | None = None,
                    metadata: hc.HeaderInput = ()) -> grpc.GrpcStream:
        """Open a gRPC stream; each message received reaches ``on_message``, the close ``on_close``."""
        token = hc.grpc_stream(cluster.encode(), service, method, metadata)
        vm.grpc_calls[token] = grpc.GrpcCall(self, token, on_close, on_message)
        return grpc.GrpcStream(token)

    def redis_call(self, cluster: str, query: bytes, callback: RedisCallback | None = None) -> int:
        """Send a RESP command through Higress's Redis client for ``cluster`` (see hostcalls.redis_init);
        ``callback(status, reply)`` runs bound to this context: status 0 and the reply's RESP bytes, or
        a non-zero status (no connection, timeout) and b""."""
        token = hc.redis_call(cluster, query)
        vm.redis_callouts[token] = (self, callback)
        return token

    @staticmethod
    def log(level: LogLevel, message: str) -> None:
        hc.log(level, message)

    def on_done(self) -> bool:
        return True

    def on_log(self) -> None:
        pass

    def on_delete(self) -> None:
        pass


class RootContext(_Context, _Generic):
    """One per plugin per VM. Parses configuration and creates HTTP contexts.

    Subclasses set ``http_context`` to their HttpContext class and override
    :meth:`parse_config` to turn a config object (dict) into a typed config,
    raising :class:`ConfigError` for bad input.
    """

    http_context: ClassVar[type[HttpContext] | None] = None
    fail_closed: bool = False

    def __init__(self, context_id: int) -> None:
        self.context_id = context_id
        self.rules: RuleSet | None = None

    # -- configuration --

    def parse_config(self, config: dict[str, Any]) -> C:
        return config  # type: ignore[return-value]

    def on_config_loaded(self) -> None:
        """Called after a configuration was parsed and accepted (e.g. to start a tick)."""

    def on_vm_start(self, vm_config: bytes) -> bool:
        return True

    def on_configure(self, config: bytes) -> bool:
        """Parse JSON config with Higress ``_rules_``; a bad config fails plugin start."""
        try:
            doc = json.loads((config or b"{}").decode("utf-8"))  # bytes: json would guess codecs WASI lacks
            if not isinstance(doc, dict):
                raise ConfigError("configuration must be a JSON object")
            self.fail_closed = bool(doc.pop("_fail_closed_", type(self).fail_closed))
            self.rules = RuleSet.parse(doc, self.parse_config)
            self.on_config_loaded()
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            hc.log(LogLevel.CRITICAL, f"invalid plugin configuration: {e}")
            return False
        return True

    def on_tick(self) -> None:
        pass

    def on_queue_ready(self, queue_id: int) -> None:
        pass

    def on_foreign_function(self, function_id: int, data_size: int) -> None:
        pass

    def set_tick_period_ms(self, period: int) -> None:
        hc.set_tick_period_ms(period)

    def new_http_context(self, context_id: int) -> HttpContext | None:
        cls = type(self).http_context
        return cls(context_id, self) if cls else None


class HttpContext(_Context, _Generic):
    """One per HTTP stream."""

    request_headers = streams.REQUEST_HEADERS
    request_trailers = streams.REQUEST_TRAILERS
    response_headers = streams.RESPONSE_HEADERS
    response_trailers = streams.RESPONSE_TRAILERS
    request_body = streams.REQUEST_BODY
    response_body = streams.RESPONSE_BODY

    def __init__(self, context_id: int, root: RootContext) -> None:
        self.context_id = context_id
        self.root = root
        self._config: C | None = None

    @property
    def config(self) -> C | None:
        """The config of the first ``_rules_`` entry matching this stream, else the global one."""
        if self._config is None and self.root.rules is not None:
            self._config = self.root.rules.select()
        return self._config

    def on_request_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        return Action.CONTINUE

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action:
        return Action.CONTINUE

    def on_request_trailers(self, num_trailers: int) -> Action:
        return Action.CONTINUE

    def on_response_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        return Action.CONTINUE

    def on_response_body(self, body_size: int, end_of_stream: bool) -> Action:
        return Action.CONTINUE

    def on_response_trailers(self, num_trailers: int) -> Action:
        return Action.CONTINUE

    def http_call_as_root(self, cluster: str, headers: hc.HeaderInput, body: bytes = b"",
                          callback: CalloutCallback | None = None, timeout_ms: int = 5000,
                          trailers: hc.HeaderInput = ()) -> int:
        """Send an HTTP request that belongs to the root context: it neither holds this stream nor is cancelled
        when the stream ends (e.g. a mirrored copy); ``callback`` runs bound to the root."""
        token = self.as_root(lambda root: hc.http_call(cluster, headers, body, trailers, timeout_ms))
        vm.register_callout(token, self.root, callback)
        return token

    def as_root(self, fn: Callable[[Any], C]) -> C:
        """``fn(root)`` with the plugin's root context as the effective one: the calls it makes (callouts, Redis
        calls) belong to the root, are never cancelled with this stream nor mixed with its own, and answer the
        root. This stream is the effective context again afterwards."""
        hc.set_effective_context(self.root.context_id)
        try:
            return fn(self.root)
        finally:
            hc.set_effective_context(self.context_id)

    def make_current(self) -> bool:
        """In a callback bound to another context (a root-owned call's answer): make this stream the effective
        context again, to act on it. False when it is gone (the client left meanwhile): leave it alone."""
        try:
            hc.set_effective_context(self.context_id)
        except hc.HostError:
            return False
        return True

    # -- actions on this stream --

    @staticmethod
    def send_local_response(status: int, body: bytes | str = b"", headers: hc.HeaderInput = (),
                            details: str = "") -> None:
        hc.send_local_response(status, body, headers, details.replace(" ", "_"))

    def tap_response_body(self, keep: int, whole_upto: int = 0) -> None:
        """From the next chunk on, pass the response body on without calling on_response_body, except at its end.

        The VM keeps every byte while the body is at most ``whole_upto`` bytes long, then only its last ``keep``
        bytes, and the time its first bytes came; ``take_response_tap()`` hands them over. Inside the VM this
        costs one host call per chunk instead of a Python callback. See proxywasm.taps.
        """
        taps.start(self.context_id, keep, whole_upto)

    def skip_response_events(self, markers: taps.Markers) -> None:
        """Arm skipping: the next response chunks that each end an SSE event and hold none of ``markers``
        (``(needle, unless)`` pairs, see proxywasm.taps) go on without on_response_body; the first that does not,
        and the end of the body, reach it as usual and disarm skipping until this is called again."""
        taps.skip_events(self.context_id, markers)

    def count_response_strings(self, keys: tuple[bytes, ...]) -> None:
        """Count, in every response chunk from the next on (whether on_response_body sees it or not), the JSON
        members named by one of ``keys`` (1..6, without quotes) whose value is a non-empty string, their bytes,
        and when the first came; ``take_response_tap()`` reports them. See proxywasm.taps."""
        taps.count_keys(self.context_id, keys)

    def take_response_tap(self) -> taps.Tapped | None:
        """What the response tap kept (None without one); the tap is gone afterwards."""
        return taps.take(self.context_id)

    @staticmethod
    def resume_request() -> None:
        hc.continue_stream(StreamType.REQUEST)

    @staticmethod
    def resume_response() -> None:
        hc.continue_stream(StreamType.RESPONSE)

    @staticmethod
    def close_request() -> None:
        hc.close_stream(StreamType.REQUEST)


def read_callout_response(num_headers: int, body_size: int, num_trailers: int) -> CalloutResponse:
    headers = hc.get_header_map_pairs(MapType.HTTP_CALL_RESPONSE_HEADERS) if num_headers else []
    body = (hc.get_buffer(BufferType.HTTP_CALL_RESPONSE_BODY, 0, body_size) or b"") if body_size else b""
    trailers = hc.get_header_map_pairs(MapType.HTTP_CALL_RESPONSE_TRAILERS) if num_trailers else []
    return CalloutResponse(headers, body, trailers)
