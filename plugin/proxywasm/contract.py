"""The contract between the SDK, the C shim (build/shim) and the build (build/pwbuild).

The shim reads ``LAZY_HTTP_CONTEXTS`` and ``defer_delete()`` once at VM start and calls ``delete_many`` with
batched stream deletes; the build calls ``needed_exports()`` after importing the plugin to decide which
callbacks the module exports (a hot callback nobody overrides is left out, so the host never calls it).
"""

from __future__ import annotations

from . import vm
from .abi import EXPORTS
from .context import HttpContext, RootContext, _Context

# The C shim may skip proxy_on_context_create for streams of the only root context: their HttpContext is then
# made on the stream's first callback (dispatcher._lazy). Plugins whose contexts must exist from creation on can
# set this to False before the VM starts.
LAZY_HTTP_CONTEXTS = True


def defer_delete() -> bool:
    """Whether the shim may hand stream deletes over in batches: only if no one overrides on_delete."""
    root = vm.root_factory
    if not (isinstance(root, type) and issubclass(root, RootContext)):
        return False
    http = root.http_context
    return (root.new_http_context is RootContext.new_http_context and http is not None
            and http.on_delete is _Context.on_delete)


def delete_many(context_ids: tuple[int, ...]) -> None:
    """Forget stream contexts Envoy deleted (batched by the shim; their on_delete is the no-op)."""
    contexts = vm.contexts
    for cid in context_ids:
        contexts.pop(cid, None)


def needed_exports() -> list[str]:
    """Exports the registered plugin needs: every ``hot`` callback it does not override is left out."""
    root = vm.root_factory
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
