"""Fixed-window limits: which apply to a request, what the counters say, what the client is told.

A limit's counter counts requests or tokens in its current window (``now // window``). Admission asks
"is every counter below its limit" (tokens are charged after the answer, so one request may overshoot: it
is charged in full, and the next is refused until the window turns). Requests are counted at admission.
"""

from __future__ import annotations

from .config import Consumer, Consumers, Limit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..usage import Usage


_APPLICABLE: dict[tuple[int, str, str], tuple[Consumers, list[Limit]]] = {}


def applicable(cc: Consumers, consumer: Consumer | None, model: str) -> list[Limit]:
    """The limits for ``consumer`` calling ``model``, one per counter (the lowest amount wins); worked out once
    per configuration, consumer and model (consumers and models are configured: the cache is bounded)."""
    key = (id(cc), consumer.name if consumer is not None else "", model)
    got = _APPLICABLE.get(key)
    if got is not None and got[0] is cc:
        return got[1]
    out = _applicable(cc, consumer, model)
    if len(_APPLICABLE) > 4096:
        _APPLICABLE.clear()
    _APPLICABLE[key] = (cc, out)
    return out


def _applicable(cc: Consumers, consumer: Consumer | None, model: str) -> list[Limit]:
    out: dict[str, Limit] = {}
    for lim in (*(consumer.limits if consumer is not None else ()), *cc.limits):
        if not lim.model or lim.model == model:
            have = out.get(lim.counter)
            if have is None or lim.amount < have.amount:
                out[lim.counter] = lim
    return list(out.values())


def window(lim: Limit, now_s: int) -> tuple[int, int]:
    """(index of the current window, seconds until it ends)."""
    idx = now_s // lim.window_s
    return idx, (idx + 1) * lim.window_s - now_s


def exceeded(limits: list[Limit], values: list[int]) -> int:
    """Index of the first limit its counter has reached, or -1."""
    for i, (lim, v) in enumerate(zip(limits, values, strict=False)):
        if v >= lim.amount:
            return i
    return -1


def amount(lim: Limit, usage: Usage) -> int:
    kind = lim.kind
    return usage.total if kind == "tokens" else usage.input if kind == "input_tokens" else usage.output \
        if kind == "output_tokens" else 0


def duration(s: int) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1h0m0s."""
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    return f"{s // 3600}h{s % 3600 // 60}m{s % 60}s"


def headers(limits: list[Limit], values: list[int], now_s: int, counted: bool) -> list[tuple[str, str]]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the tightest request and token limits.
    ``counted``: this request was counted in the request counters' values already (runs on every answer: lean)."""
    req = tok = None
    req_left = tok_left = 0
    for i, lim in enumerate(limits):
        if lim.kind == "requests":
            left = lim.amount - values[i] - counted
            if req is None or left < req_left:
                req, req_left = lim, left
        else:
            left = lim.amount - values[i]
            if tok is None or left < tok_left:
                tok, tok_left = lim, left
    out = []
    if req is not None:
        out += [("x-ratelimit-limit-requests", str(req.amount)), ("x-ratelimit-remaining-requests",
                str(req_left if req_left > 0 else 0)),
                ("x-ratelimit-reset-requests", duration(req.window_s - now_s % req.window_s))]
    if tok is not None:
        out += [("x-ratelimit-limit-tokens", str(tok.amount)), ("x-ratelimit-remaining-tokens",
                str(tok_left if tok_left > 0 else 0)),
                ("x-ratelimit-reset-tokens", duration(tok.window_s - now_s % tok.window_s))]
    return out
