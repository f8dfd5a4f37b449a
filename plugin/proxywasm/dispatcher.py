"""The callbacks the C shim calls: each finds its context and delegates.

Exceptions never reach the host: they are logged with their traceback and the
stream continues, or gets a 500 when the plugin is configured fail-closed.
"""

from __future__ import annotations

from . import hostcalls as hc
from .abi import Action, BufferType, LogLevel
from .context import HttpContext, RootContext, _Context, read_callout_response
from .taps import _py_taps
from .taps import handles as _tapped

TYPE_CHECKING = False  # typing itself is not imported at VM start
if TYPE_CHECKING:
    from collections.abc import Callable

    from .context import CalloutCallback, RedisCallback

_root_factory: Callable[[int], RootContext] | None = None
_contexts: dict[int, _Context] = {}
_roots: list[RootContext] = []

# The C shim may skip proxy_on_context_create for streams of the only root context: their
# HttpContext is then made on the stream's first callback (see _lazy). Plugins whose
# contexts must exist from creation on can set this to False before the VM starts.
LAZY_HTTP_CONTEXTS = True
_callouts: dict[int, tuple[_Context, CalloutCallback | None]] = {}
_redis_callouts: dict[int, tuple[_Context, RedisCallback | None]] = {}

_FAIL_BODY = b'{"error":{"message":"internal plugin error","type":"server_error","code":500}}'


def set_root_context(factory: Callable[[int], RootContext]) -> None:
    """Register the plugin: ``factory(context_id)`` builds its root context."""
    global _root_factory
    _root_factory = factory


def reset() -> None:
    """Forget all contexts (test hosts call this when they start a new VM)."""
    _contexts.clear()
    _callouts.clear()
    _redis_callouts.clear()
    _roots.clear()
    _py_taps.clear()


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


def defer_delete() -> bool:
    """Whether the shim may hand stream deletes over in batches: only if no one overrides on_delete."""
    root = _root_factory
    if not (isinstance(root, type) and issubclass(root, RootContext)):
        return False
    http = root.http_context
    return (root.new_http_context is RootContext.new_http_context and http is not None
            and http.on_delete is _Context.on_delete)


def delete_many(context_ids: tuple[int, ...]) -> None:
    """Forget stream contexts Envoy deleted (batched by the shim; their on_delete is the no-op)."""
    for cid in context_ids:
        _contexts.pop(cid, None)
        if _py_taps:
            _py_taps.pop(cid, None)


def register_callout(token: int, ctx: _Context, callback: CalloutCallback | None) -> None:
    _callouts[token] = (ctx, callback)


def register_redis_callout(token: int, ctx: _Context, callback: RedisCallback | None) -> None:
    _redis_callouts[token] = (ctx, callback)


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
            if _root_factory is None:
                raise RuntimeError("no plugin registered: call proxywasm.set_root_context()")
            root = _contexts[context_id] = _root_factory(context_id)
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
    if _py_taps and _tapped(context_id, body_size, end_of_stream != 0):  # in-process host (the shim does it in C)
        return 0
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


def proxy_on_http_call_response(root_id: int, token: int, num_headers: int, body_size: int,
                                num_trailers: int) -> None:
    ctx, callback = _callouts.pop(token, (None, None))
    if ctx is None or callback is None or ctx.context_id not in _contexts:
        return  # the stream that made the call is gone
    try:
        if ctx.context_id != root_id:
            hc.set_effective_context(ctx.context_id)
        callback(read_callout_response(num_headers, body_size, num_trailers))
    except Exception:
        _failed(ctx, "on_http_call_response")


def proxy_on_redis_call_response(root_id: int, token: int, status: int, size: int) -> None:
    """Higress: a Redis reply (RESP in buffer 9) or, with a non-zero status, the call's failure."""
    ctx, callback = _redis_callouts.pop(token, (None, None))
    if ctx is None or callback is None or ctx.context_id not in _contexts:
        return  # the stream that made the call is gone
    try:
        if ctx.context_id != root_id:
            hc.set_effective_context(ctx.context_id)
        body = b""
        if status == 0 and size:
            body = hc.get_buffer(BufferType.REDIS_CALL_RESPONSE, 0, size) or b""
        callback(status, body)
    except Exception:
        _failed(ctx, "on_redis_call_response")


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


def needed_exports() -> list[str]:
    """Exports the registered plugin needs: every ``hot`` callback it does not override is left out.

    Called by the build (after importing the plugin) to decide what the module exports.
    """
    from .abi import EXPORTS

    root = _root_factory
    known = isinstance(root, type) and issubclass(root, RootContext)
    http = root.http_context if known else None  # type: ignore[union-attr]
    custom = not known or root.new_http_context is not RootContext.new_http_context  # type: ignore[union-attr]

    def overrides(cls: type | None, base: type, method: str) -> bool:
        return cls is not None and getattr(cls, method, None) is not getattr(base, method, None)

    out = []
    for ex in EXPORTS:
        method = ex.name.removeprefix("proxy_")
        if (not ex.hot or custom or overrides(http, HttpContext, method)
                or (method in ("on_log", "on_done") and overrides(root, RootContext, method))):
            out.append(ex.name)
    return out


def proxy_on_delete(context_id: int) -> None:
    ctx = _contexts.pop(context_id, None)
    if _py_taps:
        _py_taps.pop(context_id, None)
    if isinstance(ctx, RootContext) and ctx in _roots:
        _roots.remove(ctx)
    if ctx is not None:
        try:
            ctx.on_delete()
        except Exception:
            _failed(ctx, "on_delete")
