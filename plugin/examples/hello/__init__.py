"""Smallest plugin: adds a response header."""

from proxywasm import Action, HttpContext, RootContext, set_root_context


class Hello(HttpContext):
    def on_response_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        self.response_headers.set("x-hello", "from python")
        return Action.CONTINUE


class HelloRoot(RootContext):
    http_context = Hello


set_root_context(HelloRoot)
