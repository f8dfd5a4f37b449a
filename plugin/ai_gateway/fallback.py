"""Fallback through HTTP callouts: when the upstream fails, ask again and answer the client with the result.

Used where Envoy retries cannot be (no ``fallback.cluster``: no aggregate cluster, or ``mode: RAND``; a key
retry on the same model); retries.py is the streaming path. The failed upstream response is held (its
headers paused); each attempt is an HTTP callout addressed by ``attempt.address``. The plan: first, if the failure was
the API key's (401/403/429), the same model once more with another healthy key; then the
fallback models, each of which also gets one more try with another key when its key fails. The first answer
that is not a trigger is sent to the client as a local reply; if every attempt fails, the held original
response continues to the client. Attempts are bounded by ``max_attempts`` and ``timeout_ms`` and repeat a
model only for its one key retry.
"""

from __future__ import annotations

import random

from proxywasm import CalloutResponse, HostError, LogLevel
from proxywasm import hostcalls as hc

from .attempt import address
from .config import Config, Model, StatusSet
from .consumers import rate_headers
from .errors import GatewayError
from .keys import KeyPool
from .picker import add_destination
from .upstream import callout_headers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from proxywasm import HttpContext

    from .providers import Answer
    from .reader import AnswerReader

# Headers of a callout answer that must not be copied onto the local reply.
_HOP = frozenset({":status", "content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"})
KEY_RETRY_BUDGET_MS = 60_000


class Fallback:
    def __init__(self, stream: HttpContext, cfg: Config, primary: Model, doc: dict[str, Any],
                 request_headers: list[tuple[str, str]], rng: random.Random, key_retry: bool, reader: AnswerReader,
                 done: Callable[[Model | None, int], None], key_idx: int | None = None, status: int = 0) -> None:
        """``reader`` reads the answer the client gets; ``done(served, status)`` follows the end (served None:
        every attempt failed, the primary's response goes on); ``key_idx``: the primary's key, not tried again;
        ``status``: the primary's answer."""
        policy = primary.fallback
        self.stream, self.cfg, self.primary, self.doc, self.rng = stream, cfg, primary, doc, rng
        self.reader, self.done = reader, done
        self.tried: list[list[Any]] = [[primary.name, status]]  # [model, status] per attempt (0: no answer)
        self.request_headers = request_headers
        order = list(policy.models) if policy else []
        if policy and policy.mode == "RAND":
            rng.shuffle(order)
        self.order = ([primary.name] if key_retry else []) + order
        codes: set[int] = set(primary.keys.eject_on) if key_retry and primary.keys else set()
        self.triggers = policy.on_status if policy else StatusSet(frozenset(), frozenset())
        self.key_triggers = frozenset(codes)
        self.max_attempts = (policy.max_attempts if policy else 1) + int(key_retry)
        budget = policy.timeout_ms if policy else KEY_RETRY_BUDGET_MS
        self.attempts = 1  # the primary's
        self.deadline_ns = hc.now_ns() + budget * 1_000_000
        self.current: Model | None = None
        self.key: tuple[KeyPool, int] | None = None
        self.answer: Answer | None = None  # how the current attempt's answer becomes OpenAI's (providers/)
        self.tried_keys = {primary.name: {key_idx}} if key_idx is not None else {}
        self.key_retried = {primary.name} if key_retry else set()  # models already given a second key

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        now = hc.now_ns()
        while self.order and self.attempts < self.max_attempts and now < self.deadline_ns:
            model = self.cfg.models[self.order.pop(0)]
            self.attempts += 1
            tried = frozenset(self.tried_keys.get(model.name, ()))
            try:
                attempt = address(self.cfg, self.doc, model, now // 1_000_000, self.rng, source=self.primary,
                                  tried_keys=tried, path=self.stream.upstream_path)
            except GatewayError as e:  # its provider cannot carry this request: skipped
                hc.log(LogLevel.INFO, f"fallback to {model.name} skipped: {e}")
                self.tried.append([model.name, e.status])
                continue
            if attempt is None:
                continue  # no healthy key left for this model
            self.key, self.answer = attempt.key, attempt.answer
            if attempt.key is not None:
                self.tried_keys.setdefault(model.name, set()).add(attempt.key[1])
            body = attempt.body
            headers = callout_headers(self.request_headers, attempt, self.cfg)
            if self.cfg.pickers:  # a model with an endpoint picker: its least loaded pod
                headers = add_destination(self.cfg.pickers, model, self.doc, headers, now // 1_000_000, self.cfg.metrics)
                if headers is None:
                    continue  # sheddable, and every pod of this model is saturated
            try:
                self.stream.http_call(model.cluster, headers, body, callback=self._on_answer,
                                      timeout_ms=max(1, (self.deadline_ns - now) // 1_000_000))
            except HostError as e:  # e.g. no such cluster: try the next one
                hc.log(LogLevel.WARN, f"fallback to {model.name} via {model.cluster!r} failed: {e}")
                self.tried.append([model.name, 0])
                continue
            self.current = model
            return
        self._exhausted()

    def _on_answer(self, resp: CalloutResponse) -> None:
        status, ctype, body = resp.status, resp.header("content-type"), resp.body
        if self.answer is not None and status:  # the provider's answer in OpenAI's shapes (whole: a callout's)
            status, ctype, translator = self.answer.begin(status, ctype, hc.now_ns() // 1_000_000_000)
            body = translator.feed(body, True)
        if self.current is not None:
            self.tried.append([self.current.name, status])
        if self.key is not None:
            pool, idx = self.key
            pool.report(idx, status, hc.now_ms(), resp.header("retry-after"))
            model = self.current
            if status in pool.cfg.eject_on and model is not None and model.name not in self.key_retried:
                # The key failed, not the model: once more with another of its keys, as on the direct path.
                hc.log(LogLevel.INFO, f"attempt on {model.name} answered {status}: retrying with another key")
                self.key_retried.add(model.name)
                self.order.insert(0, model.name)
                self.max_attempts += 1
                self._next()
                return
        if status == 0 or status in self.triggers or status in self.key_triggers:
            hc.log(LogLevel.INFO, f"attempt on {self.current.name if self.current else '?'} "
                                  f"answered {status or 'nothing'}")
            self._next()
            return
        served = self.current
        assert served is not None
        headers = [(k, v) for k, v in resp.headers if k not in _HOP and k != "content-type"]
        if ctype is not None:
            headers.append(("content-type", ctype))
        if served.name != self.primary.name:
            headers.append(("x-ai-fallback-from", self.primary.name))
        if self.stream.gate is not None:  # the consumer's limits, as on every answer
            headers += rate_headers(self.stream)
        headers.append(("x-ai-served-model", served.name))
        body = self.reader.whole_answer(ctype, body)
        self.stream.send_local_response(status, body, headers)
        self.done(served, status)

    def _exhausted(self) -> None:
        """No attempt succeeded: let the primary's own error response through."""
        self.stream.response_headers.set("x-ai-fallback-exhausted", str(self.attempts - 1))
        self.stream.response_headers.set("x-ai-served-model", self.primary.name)
        self.reader.held_answer()
        self.stream.resume_response()
        self.done(None, 0)
