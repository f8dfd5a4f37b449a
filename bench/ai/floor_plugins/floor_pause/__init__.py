"""Floor 2: hold the request headers until the whole body is in, as body-based routing must; nothing else."""

from proxywasm import Action, HttpContext, RootContext, set_root_context


class Pause(HttpContext):
    def on_request_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        return Action.PAUSE

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action:
        return Action.CONTINUE if end_of_stream else Action.PAUSE


class PauseRoot(RootContext):
    http_context = Pause


set_root_context(PauseRoot)
