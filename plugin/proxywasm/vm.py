"""This VM's state: the registered plugin, its live contexts and pending callouts.

A leaf module (it imports nothing of the SDK), so contexts and the dispatcher both read it without importing
each other. Envoy runs one VM per worker thread: everything here is per worker.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported at VM start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

root_factory: Callable[[int], Any] | None = None  # builds the plugin's root context (set_root_context)
contexts: dict[int, Any] = {}  # context id -> RootContext | HttpContext
roots: list[Any] = []  # the root contexts, in creation order
callouts: dict[int, tuple[Any, Callable[..., None] | None]] = {}  # callout token -> (context, callback)
grpc_calls: dict[int, Any] = {}  # gRPC call (or gRPC stream) token -> proxywasm.grpc.GrpcCall
redis_callouts: dict[int, tuple[Any, Callable[..., None] | None]] = {}  # Higress Redis call -> (context, callback)


def set_root_context(factory: Callable[[int], Any]) -> None:
    """Register the plugin: ``factory(context_id)`` builds its root context."""
    global root_factory
    root_factory = factory


def register_callout(token: int, ctx: Any, callback: Callable[..., None] | None) -> None:
    """Route the answer to callout ``token`` to ``callback``, bound to ``ctx`` (dropped if ``ctx`` is gone)."""
    callouts[token] = (ctx, callback)


def reset() -> None:
    """Forget all contexts (test hosts call this when they start a new VM)."""
    contexts.clear()
    callouts.clear()
    grpc_calls.clear()
    redis_callouts.clear()
    roots.clear()
