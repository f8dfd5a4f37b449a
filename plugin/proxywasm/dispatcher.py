"""The callbacks the C shim calls: each finds its context and delegates.

Exceptions never reach the host: they are logged with their traceback and the
stream continues, or gets a 500 when the plugin is configured fail-closed.
"""

from __future__ import annotations

from . import hostcalls as hc
from . import vm
from .abi import Action, BufferType, LogLevel
from .context import HttpContext, RootContext, _Context, read_callout_response
from .grpc import GrpcCall

TYPE_CHECKING = False  # typing itself is not imported at VM start
if TYPE_CHECKING:
    from collections.abc import Callable

_contexts = vm.contexts  # the same dict object for the VM's life (vm.reset clears it in place)
_roots = vm.roots
_callouts = vm.callouts
_grpc_calls = vm.grpc_calls
_redis_callouts = vm.redis_callouts
_FAIL_BODY = b'{"error":{"message":"internal plugin error","type":"server_error","code":500}}'


def _lazy(context_id: int) -> _Context | None:
    """The HttpContext of a stream whose creation the shim did not report (one root only)."""
    if len(_roots) != 1:
        return None
    try:
        ctx = _roots[0].new_http_context(context_id)
    except Exception:
        _failed(None, "on_context_create")
        return None
    if ctx is not None:
        _contexts[context_id] = ctx
    return ctx


def _failed(ctx: _Context | None, where: str) -> int:
    import traceback  # only on errors: it costs VM start time

    hc.log(LogLevel.ERROR, f"{where}: {traceback.format_exc()}")
    if isinstance(ctx, HttpContext) and ctx.root.fail_closed:
        try:
            hc.send_local_response(500, _FAIL_BODY, [("content-type", "application/json")], "plugin_error")
        except hc.HostError:
            pass
        return Action.PAUSE
    return Action.CONTINUE


def proxy_on_context_create(context_id: int, parent_id: int) -> None:
    try:
        if parent_id == 0:
            if vm.root_factory is None:
                raise RuntimeError("no plugin registered: call proxywasm.set_root_context()")
            root = _contexts[context_id] = vm.root_factory(context_id)
            _roots.append(root)
            return
        root = _contexts.get(parent_id)
        if isinstance(root, RootContext):
            ctx = root.new_http_context(context_id)
            if ctx is not None:
                _contexts[context_id] = ctx
    except Exception:
        _failed(None, "on_context_create")


def _root(context_id: int) -> RootContext | None:
    ctx = _contexts.get(context_id)
    return ctx if isinstance(ctx, RootContext) else None


def proxy_on_vm_start(root_id: int, size: int) -> int:
    root = _root(root_id)
    if root is None:
        return 0
    try:
        return int(bool(root.on_vm_start(hc.get_buffer(BufferType.VM_CONFIGURATION, 0, size) or b"")))
    except Exception:
        _failed(root, "on_vm_start")
        return 0


def proxy_on_configure(root_id: int, size: int) -> int:
    root = _root(root_id)
    if root is None:
        return 0
    try:
        config = hc.get_buffer(BufferType.PLUGIN_CONFIGURATION, 0, size) if size else b""
        return int(bool(root.on_configure(config or b"")))
    except Exception:
        _failed(root, "on_configure")
        return 0


def proxy_on_tick(root_id: int) -> None:
    root = _root(root_id)
    if root is not None:
        try:
            root.on_tick()
        except Exception:
            _failed(root, "on_tick")


def proxy_on_queue_ready(root_id: int, queue_id: int) -> None:
    root = _root(root_id)
    if root is not None:
        try:
            root.on_queue_ready(queue_id)
        except Exception:
            _failed(root, "on_queue_ready")


def proxy_on_foreign_function(root_id: int, function_id: int, size: int) -> None:
    root = _root(root_id)
    if root is not None:
        try:
            root.on_foreign_function(function_id, size)
        except Exception:
            _failed(root, "on_foreign_function")


# Stream callbacks run on every request, and Python frames are costly inside V8: each
# export is written out (no getattr, no generic wrapper) so a call is one dict lookup
# and one method call.


def proxy_on_request_headers(context_id: int, num_headers: int, end_of_stream: int) -> int:
    ctx = _contexts.get(context_id) or _lazy(context_id)
    if ctx is None:
        return 0
    try:
        return ctx.on_request_headers(num_headers, end_of_stream != 0)  # type: ignore[attr-defined]
    except Exception:
        return _failed(ctx, "on_request_headers")


def proxy_on_request_body(context_id: int, body_size: int, end_of_stream: int) -> int:
    ctx = _contexts.get(context_id) or _lazy(context_id)
    if ctx is None:
        return 0
    try:
        return ctx.on_request_body(body_size, end_of_stream != 0)  # type: ignore[attr-defined]
    except Exception:
        return _failed(ctx, "on_request_body")


def proxy_on_request_trailers(context_id: int, num_trailers: int) -> int:
    ctx = _contexts.get(context_id) or _lazy(context_id)
    if ctx is None:
        return 0
    try:
        return ctx.on_request_trailers(num_trailers)  # type: ignore[attr-defined]
    except Exception:
        return _failed(ctx, "on_request_trailers")


def proxy_on_response_headers(context_id: int, num_headers: int, end_of_stream: int) -> int:
    ctx = _contexts.get(context_id) or _lazy(context_id)
    if ctx is None:
        return 0
    try:
        return ctx.on_response_headers(num_headers, end_of_stream != 0)  # type: ignore[attr-defined]
    except Exception:
        return _failed(ctx, "on_response_headers")


def proxy_on_response_body(context_id: int, body_size: int, end_of_stream: int) -> int:
    ctx = _contexts.get(context_id) or _lazy(context_id)
    if ctx is None:
        return 0
    try:
        return ctx.on_response_body(body_size, end_of_stream != 0)  # type: ignore[attr-defined]
    except Exception:
        return _failed(ctx, "on_response_body")


def proxy_on_response_trailers(context_id: int, num_trailers: int) -> int:
    ctx = _contexts.get(context_id) or _lazy(context_id)
    if ctx is None:
        return 0
    try:
        return ctx.on_response_trailers(num_trailers)  # type: ignore[attr-defined]
    except Exception:
        return _failed(ctx, "on_response_trailers")


def _answer(pending: dict, token: int, root_id: int, where: str, deliver: Callable[[Callable], None]) -> None:
    """A callout's answer to the callback registered for ``token``, bound to the context that made the call."""
    ctx, callback = pending.pop(token, (None, None))
    if ctx is None or callback is None or ctx.context_id not in _contexts:
        return  # the context that made the call is gone
    try:
        if ctx.context_id != root_id:
            hc.set_effective_context(ctx.context_id)
        deliver(callback)
    except Exception:
        _failed(ctx, where)


def proxy_on_http_call_response(root_id: int, token: int, num_headers: int, body_size: int,
                                num_trailers: int) -> None:
    _answer(_callouts, token, root_id, "on_http_call_response",
            lambda callback: callback(read_callout_response(num_headers, body_size, num_trailers)))


def _grpc(context_id: int, token: int, step: Callable[[GrpcCall, int], None], arg: int) -> None:
    call = _grpc_calls.get(token)
    if call is None:
        return  # cancelled, or not ours
    ctx = call.ctx
    if ctx.context_id not in _contexts:
        _grpc_calls.pop(token, None)
        return  # the stream that made the call is gone
    try:
        if ctx.context_id != context_id:
            hc.set_effective_context(ctx.context_id)
        step(call, arg)
    except Exception:
        _failed(ctx, "on_grpc")


def proxy_on_grpc_receive_initial_metadata(context_id: int, token: int, num_headers: int) -> None:
    _grpc(context_id, token, GrpcCall.initial_metadata, num_headers)


def proxy_on_grpc_receive(context_id: int, token: int, message_size: int) -> None:
    _grpc(context_id, token, GrpcCall.receive, message_size)


def proxy_on_grpc_receive_trailing_metadata(context_id: int, token: int, num_trailers: int) -> None:
    _grpc(context_id, token, GrpcCall.trailing_metadata, num_trailers)


def proxy_on_grpc_close(context_id: int, token: int, status_code: int) -> None:
    _grpc(context_id, token, GrpcCall.close, status_code)


def proxy_on_redis_call_response(root_id: int, token: int, status: int, size: int) -> None:
    """Higress: a Redis reply (RESP in buffer 9) or, with a non-zero status, the call's failure."""
    def deliver(callback: Callable[[int, bytes], None]) -> None:
        ok = status == 0 and size
        callback(status, (hc.get_buffer(BufferType.REDIS_CALL_RESPONSE, 0, size) or b"") if ok else b"")

    _answer(_redis_callouts, token, root_id, "on_redis_call_response", deliver)

def proxy_on_done(context_id: int) -> int:
    ctx = _contexts.get(context_id) or _lazy(context_id)
    if ctx is None:
        return 1
    try:
        return int(bool(ctx.on_done()))
    except Exception:
        _failed(ctx, "on_done")
        return 1


def proxy_on_log(context_id: int) -> None:
    ctx = _contexts.get(context_id) or _lazy(context_id)
    if ctx is not None:
        try:
            ctx.on_log()
        except Exception:
            _failed(ctx, "on_log")


def proxy_on_delete(context_id: int) -> None:
    ctx = _contexts.pop(context_id, None)
    if isinstance(ctx, RootContext) and ctx in _roots:
        _roots.remove(ctx)
    if ctx is not None:
        try:
            ctx.on_delete()
        except Exception:
            _failed(ctx, "on_delete")
