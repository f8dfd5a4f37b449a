"""Fallback: when the upstream fails, ask the next model and answer the client with it.

The failed upstream response is held (its headers paused); each attempt is an HTTP
callout with the same request, ``model`` rewritten. The first answer whose status is
not a fallback trigger is sent to the client as a local reply. If every attempt
fails, the held original response continues to the client. Attempts are bounded by
``max_attempts`` and ``timeout_ms`` and never repeat a model.
"""

from __future__ import annotations

import random

from proxywasm import CalloutResponse, HostError, LogLevel
from proxywasm import hostcalls as hc

from .config import Config, Model
from .request import with_model
from .upstream import callout_headers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from proxywasm import HttpContext

# Headers of a callout answer that must not be copied onto the local reply.
_HOP = frozenset({":status", "content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"})


class Fallback:
    def __init__(self, stream: HttpContext, cfg: Config, primary: Model, doc: dict[str, Any],
                 request_headers: list[tuple[str, str]], rng: random.Random) -> None:
        policy = primary.fallback
        assert policy is not None
        self.stream = stream
        self.cfg = cfg
        self.primary = primary
        self.doc = doc
        self.request_headers = request_headers
        self.order = list(policy.models)
        if policy.mode == "RAND":
            rng.shuffle(self.order)
        self.attempts = 1  # the primary's
        self.deadline_ns = hc.get_current_time_ns() + policy.timeout_ms * 1_000_000
        self.current: Model | None = None

    @property
    def policy(self):
        return self.primary.fallback

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        remaining_ms = (self.deadline_ns - hc.get_current_time_ns()) // 1_000_000
        while self.order and self.attempts < self.policy.max_attempts and remaining_ms > 0:
            model = self.cfg.models[self.order.pop(0)]
            self.attempts += 1
            body = with_model(self.doc, model.upstream_model)
            headers = callout_headers(self.request_headers, model, self.cfg)
            try:
                self.stream.http_call(model.cluster, headers, body, callback=self._on_answer,
                                      timeout_ms=int(remaining_ms))
            except HostError as e:  # e.g. no such cluster: try the next one
                hc.log(LogLevel.WARN, f"fallback to {model.name} via {model.cluster!r} failed: {e}")
                continue
            self.current = model
            return
        self._exhausted()

    def _on_answer(self, resp: CalloutResponse) -> None:
        if resp.status == 0 or resp.status in self.policy.on_status:
            hc.log(LogLevel.INFO, f"fallback model {self.current.name if self.current else '?'} "
                                  f"answered {resp.status or 'nothing'}")
            self._next()
            return
        served = self.current
        assert served is not None
        headers = [(k, v) for k, v in resp.headers if k not in _HOP]
        headers += [("x-ai-fallback-from", self.primary.name), ("x-ai-served-model", served.name)]
        body = self.stream.on_fallback_answer(resp)
        self.stream.send_local_response(resp.status, body, headers)
        self.stream.on_fallback_done(served)

    def _exhausted(self) -> None:
        """No attempt succeeded: let the primary's own error response through."""
        self.stream.response_headers.set("x-ai-fallback-exhausted", str(self.attempts - 1))
        self.stream.resume_response()
        self.stream.on_fallback_done(None)
