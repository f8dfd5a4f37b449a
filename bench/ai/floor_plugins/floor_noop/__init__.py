"""Floor 1: a Python plugin that overrides no stream callback (Envoy still makes and deletes a context per stream)."""

from proxywasm import HttpContext, RootContext, set_root_context


class Noop(HttpContext):
    pass


class NoopRoot(RootContext):
    http_context = Noop


set_root_context(NoopRoot)
