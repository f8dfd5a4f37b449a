"""Fallback as Envoy retries: the answer of whichever attempt succeeds streams to the client.

A model whose ``fallback.cluster`` names an Envoy aggregate cluster (its own cluster first, then
its fallback models' clusters) is routed to that cluster with Envoy's retry policy in request
headers (``FallbackPolicy.retry_headers``); the route's ``retry_priority``
(``envoy.retry_priorities.previous_priorities``) sends each retry to the next cluster. The same
plugin, loaded a second time as an upstream HTTP filter of the router (``{"attempt_filter": true}``,
same ``vm_config``, so the same VM), runs once per attempt: it finds the request's ``Attempts`` by
the ticket header the router-level filter set, learns which model the attempt goes to (the picked
endpoint's metadata ``ai_gateway.model``, else the attempt's place in the plan), and addresses the
attempt (``attempt.address``: ``model``, pool key, content-length). Each attempt's status goes to
its key's health and to the request's record of attempts; the router-level filter reads that
record when the answer comes (which model answered, ``x-ai-fallback-from``, the AI log).
"""

from __future__ import annotations

from proxywasm import Action, LogLevel
from proxywasm import hostcalls as hc

from .attempt import Attempt, address, credential_headers
from .config import ATTEMPT_HEADER, Config, FallbackPolicy, Model
from .errors import GatewayError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from typing import Any

    from proxywasm import HttpContext

HOST_MODEL = ("xds", "upstream_host_metadata", "filter_metadata", "ai_gateway", "model")
LIVE: dict[str, Attempts] = {}  # ticket -> the request's attempts (this VM: both filters share it)
# An attempt filter was configured in this VM: without one, a model's fallback.cluster is not used (Envoy would
# retry with the primary's body and key on the fallback clusters) and its fallback goes through callouts.
IN_VM = [False]
_warned = [False]


class Attempts:
    """One request's attempts: ``tried`` holds [model name, status] in order (status 0: no answer)."""

    __slots__ = ("answers", "cfg", "doc", "first", "order", "path", "primary", "rng", "ticket", "tried", "tried_keys")

    def __init__(self, cfg: Config, doc: Any, primary: Model, first: Attempt, ticket: str, rng: random.Random,
                 path: str) -> None:
        self.cfg, self.doc, self.primary, self.first, self.ticket, self.rng = cfg, doc, primary, first, ticket, rng
        self.path = path  # the client's path as sent upstream (an OpenAI-compatible model's attempt gets it back)
        self.answers = {primary.name: first.answer}  # model -> how its answer becomes OpenAI's (providers/)
        fb = primary.fallback
        self.order = (primary.name, *(fb.models if fb else ()))
        self.tried: list[list[Any]] = []
        self.tried_keys: dict[str, set[int]] = {primary.name: {first.key[1]}} if first.key else {}

    def answered(self) -> tuple[Model | None, int]:
        """The model whose answer the client gets (None: no attempt was seen) and how many attempts failed."""
        if not self.tried:
            return None, 0
        return self.cfg.models.get(self.tried[-1][0]), len(self.tried) - 1



def expect(ctx: HttpContext, first: Attempt, h: Any, fb: FallbackPolicy, doc: Any, rng: random.Random) -> Attempts:
    """Route the request to the aggregate cluster with the retry policy; register its attempts."""
    ticket = f"{rng.getrandbits(64):016x}"  # unguessable: a client cannot name another request's attempts
    att = LIVE[ticket] = Attempts(ctx.config, doc, first.model, first, ticket, rng, ctx.upstream_path)
    h.set(ctx.config.route_header, fb.cluster)
    h.set(ATTEMPT_HEADER, ticket)
    for k, v in fb.retry_headers:
        h.set(k, v)
    return att


def forget(att: Attempts) -> None:
    LIVE.pop(att.ticket, None)


class UpstreamAttempt:
    """The attempt filter's state for one attempt: its addressing, its [model, status] record, the body to send
    (None: the request's, as the router-level filter left it)."""

    __slots__ = ("attempt", "body", "record")

    def __init__(self, attempt: Attempt, record: list[Any], body: bytes | None) -> None:
        self.attempt, self.record, self.body = attempt, record, body


def _target(att: Attempts, n: int) -> Model:
    try:
        name = hc.get_property(HOST_MODEL)
    except hc.HostError:
        name = None
    if name:
        model = att.cfg.models.get(name.decode("utf-8", "replace"))
        if model is not None:
            return model
    return att.cfg.models[att.order[min(n, len(att.order) - 1)]]


def on_attempt_headers(ctx: HttpContext) -> Action:
    """The attempt filter, request headers: address this attempt."""
    h = ctx.request_headers
    ticket = h.get(ATTEMPT_HEADER)
    if ticket is None:
        return Action.CONTINUE
    # Envoy hands every attempt the same header map, so the ticket stays for the next attempt: the model server
    # sees a random value that means nothing outside this request (clients cannot send one: the router-level
    # filter removes theirs).
    att = LIVE.get(ticket)
    if att is None:
        if not _warned[0]:
            _warned[0] = True
            hc.log(LogLevel.WARN, "attempt filter: no request holds this ticket; the router-level filter and the "
                                  "attempt filter must share one vm_config (vm_id and code)")
        return Action.CONTINUE
    n = len(att.tried)
    target = _target(att, n)
    record = [target.name, 0]
    att.tried.append(record)
    if n == 0 and target is att.primary:
        ctx.upstream = UpstreamAttempt(att.first, record, None)  # addressed by the router-level filter already
        return Action.CONTINUE
    try:  # without a usable key for this model it goes without one (and fails), never with another model's
        a = address(att.cfg, att.doc, target, hc.now_ms(), att.rng, source=att.primary,
                    tried_keys=frozenset(att.tried_keys.get(target.name, ())), path=att.path, keyless=True)
    except GatewayError as e:  # this model's provider cannot carry the request: the client is told why
        record[1] = e.status
        ctx.send_local_response(e.status, e.body, e.headers, e.code)
        return Action.PAUSE
    assert a is not None
    if a.key is None and target.keys is not None:
        hc.log(LogLevel.WARN, f"attempt {n + 1} on {target.name}: no upstream API key is available")
    back = False
    for m, _ in att.tried[:-1]:  # an earlier attempt's pool key (and provider headers) never go to another model
        other = att.cfg.models.get(m)
        if other is not None and other is not target:
            a.drop |= credential_headers(other) - {k for k, _ in a.headers}
            back = back or other.provider is not None
    if back and target.provider is None:  # the attempts share one header map: the client's path again
        a.headers.append((":path", att.path))
    att.answers[target.name] = a.answer
    if a.key is not None:
        att.tried_keys.setdefault(target.name, set()).add(a.key[1])
    a.apply(h)
    ctx.upstream = UpstreamAttempt(a, record, a.body)
    return Action.CONTINUE


def on_attempt_body(ctx: HttpContext, up: UpstreamAttempt, end_of_stream: bool) -> Action:
    body = up.body
    if body is None:
        return Action.CONTINUE
    if not end_of_stream:
        return Action.PAUSE  # the whole body is replaced at its end
    ctx.request_body.replace(body)
    return Action.CONTINUE


def on_attempt_response(ctx: HttpContext, up: UpstreamAttempt) -> Action:
    """The attempt filter, response headers: this attempt's status, for its key and the record."""
    hd = ctx.response_headers.snapshot((b":status", b"retry-after"))
    s = hd.get(":status", "0")
    status = int(s) if s.isascii() and s.isdigit() else 0
    up.record[1] = status
    up.attempt.report(status, hc.now_ms(), hd.get("retry-after") if status == 429 else None)
    return Action.CONTINUE
