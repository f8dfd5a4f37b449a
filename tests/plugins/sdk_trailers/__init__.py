"""Test plugin: request and response trailers read and rewritten (proxy_on_request_trailers, on_response_trailers).

Apart from tests/plugins/sdk_ops, whose module leaves the trailer callbacks out (the build drops hot callbacks a plugin
does not override; tests/test_build.py checks that on it).
"""

from __future__ import annotations

from proxywasm import Action, HttpContext, RootContext, set_root_context


class Trailers(HttpContext[dict]):
    def on_request_trailers(self, num_trailers: int) -> Action:  # read, set, add, remove: upstream gets them changed
        t = self.request_trailers
        t.set("x-trailers-seen", str(num_trailers))
        t.add("x-added", t.get("grpc-status") or "none")
        t.remove("x-drop")
        return Action.CONTINUE

    def on_response_trailers(self, num_trailers: int) -> Action:
        self.response_trailers.set("x-response-trailers", ",".join(k for k, _ in self.response_trailers.items()))
        return Action.CONTINUE


class TrailersRoot(RootContext[dict]):
    http_context = Trailers


set_root_context(TrailersRoot)
