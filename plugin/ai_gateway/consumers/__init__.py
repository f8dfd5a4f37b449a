"""Consumers: the gateway's own API keys, per-consumer token rate limits and quotas (see config.py).

What the request path calls (stream.py), one hook each:
  * ``authenticate`` in the request headers: 401 / 403, or the stream's consumer set and its key removed;
    the admin API answered (``admin.py``);
  * ``admit`` once the model is known, before anything goes upstream: 429 or on (now, or when Redis answers);
    ``precheck`` before that when the model waits for content routing's classifier (nothing counted);
  * ``charge`` when the answer is observed: tokens charged to the consumer's counters and balance;
  * ``rate_headers`` on the answer: OpenAI-style ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

from proxywasm import Action, Counter, LogLevel, MetricCache
from proxywasm import hostcalls as hc

from ..errors import GatewayError
from ..metric_names import CHARGE_FAILED, STORE_UNAVAILABLE, rejected_metric
from ..observe import consumer_label
from ..usage import Usage
from . import admin, auth
from .config import Consumer, Consumers, Limit

__all__ = ["Consumer", "Gate", "admin", "admit", "authenticate", "charge", "model_allowed", "precheck",
           "rate_headers"]
from .limits import amount, applicable, exceeded, headers, window
from .store import RedisStore, SharedStore, store_for

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_COUNTERS = MetricCache(Counter)


def count(name: str, n: int = 1) -> None:
    _COUNTERS(name).increment(n)  # type: ignore[attr-defined]


def rejected(consumer: str, reason: str) -> None:
    """Per consumer and reason: invalid_api_key, permission_denied, rate_limit_exceeded, insufficient_quota,
    rate_limit_unavailable (the label bounded and sanitised as for every metric; unknown callers are "none")."""
    count(rejected_metric(consumer_label(consumer), reason))


class Gate:
    """One request's admission: the limits that apply and what the store said."""

    __slots__ = ("counted", "limits", "now_s", "outcome", "quota", "store", "values", "waiting")

    def __init__(self, limits: list[Limit], quota: str | None, now_s: int, store: SharedStore | RedisStore) -> None:
        self.limits, self.quota, self.now_s, self.store = limits, quota, now_s, store
        self.values: list[int] = []
        self.counted = False  # the request counters include this request
        self.outcome: GatewayError | bool | None = None  # True: admitted; an error: refused; None: waiting
        self.waiting = False


def authenticate(stream: Any, cc: Consumers, hd: dict[str, str], consumer_header: str) -> Action | None:
    """Set the stream's consumer (``stream.consumer``, ``stream.who``), or answer; None: go on as usual."""
    try:
        name, who = auth.identify(cc, hd, consumer_header)
    except GatewayError as e:
        rejected("", e.code)
        return stream._reject(e)
    h = stream.request_headers
    auth.strip(cc, h, hd)
    h.set(consumer_header, name)
    hd[consumer_header] = name  # what the rest of the request path reads as the stream's consumer
    stream.set_consumer(name)
    stream.who = who
    path = hd.get(":path", "")
    if cc.admin_path and admin.matches(cc, path):
        return admin.on_headers(stream, cc, hd)
    if cc.allow is not None and name not in cc.allow:
        rejected(name, "permission_denied")
        return stream._reject(auth.forbidden(f"Consumer `{name}` may not use this route."))
    return None


def model_allowed(stream: Any, requested: str) -> GatewayError | None:
    who = stream.who
    if who is not None and who.models is not None and requested not in who.models:
        rejected(who.name, "permission_denied")
        return auth.forbidden(f"Consumer `{who.name}` may not use the model `{requested}`.")
    return None


def precheck(stream: Any, cc: Consumers, then: Callable[[], Action]) -> Action:
    """Before the gateway spends anything on a request whose model is not known yet (content routing's classifier
    call): a consumer already over a limit that holds for every model, or out of quota, is refused; nothing is
    counted (``admit`` counts the request once its model is known). Returns ``then()``'s action, or PAUSE."""
    acts: list[Action] = []

    def go() -> bool:
        acts.append(then())
        return acts[-1] == Action.CONTINUE  # False: ``then`` holds the request (or answered it) itself

    act = admit(stream, cc, "", go, counting=False)
    return acts[0] if acts and act == Action.CONTINUE else act


def admit(stream: Any, cc: Consumers, model: str, proceed: Callable[[], bool | None],
          counting: bool = True) -> Action:
    """Check the limits before the request goes upstream. CONTINUE (``proceed`` ran), or PAUSE: refused (the
    answer is sent) or waiting for Redis (the request resumes, after ``proceed``, or is refused then).
    ``counting=False``: the limits are read, the request is not counted (``precheck``)."""
    who = stream.who
    limits = applicable(cc, who, model)
    quota = who.name if who is not None and who.quota else None
    if not limits and quota is None:
        proceed()
        return Action.CONTINUE
    g = stream.gate = Gate(limits, quota, hc.now_ns() // 1_000_000_000, store_for(cc.store))

    def done(r: Any) -> None:
        if r is None:
            count(STORE_UNAVAILABLE)
            hc.log(LogLevel.WARN, f"consumers: the {cc.store.backend} store did not answer: "
                                  f"{'allowing' if cc.store.fail_open else 'refusing'} the request")
            g.outcome = True if cc.store.fail_open else GatewayError(
                503, "The rate limit service is unavailable; retry later.", "rate_limit_unavailable",
                retry_after_s=1)
        else:
            g.values, balance, g.counted = r
            i = exceeded(limits, g.values)
            if g.counted:
                g.outcome = True
            elif i >= 0:
                lim = limits[i]
                g.outcome = GatewayError(
                    429, f"Rate limit reached for consumer `{stream.consumer}` on {lim.kind} per "
                         f"{lim.window_s}s: limit {lim.amount}, used {g.values[i]}.",
                    "rate_limit_exceeded", retry_after_s=max(1, window(lim, g.now_s)[1]),
                    extra_headers=tuple(headers(limits, g.values, g.now_s, False)),
                    kind="requests" if lim.kind == "requests" else "tokens")
            else:
                g.outcome = GatewayError(
                    429, f"Consumer `{stream.consumer}` has exceeded its token quota (balance {balance}).",
                    "insufficient_quota")
        if g.waiting:  # Redis answered: the request was held until now
            if not stream.make_current():
                return  # the stream is gone (client left)
            if g.outcome is True:
                if proceed() is False:  # it answered the request itself (a cache hit)
                    return
                # Envoy 1.40 (measured): once a request is resumed from a callout's answer, its header map reads
                # empty in the response callbacks; fallback needs the headers as sent: kept here.
                stream.sent_headers = stream.request_headers.items()
                stream.resume_request()
            else:
                refuse(stream, g.outcome)

    as_root(stream, g.store, lambda root: g.store.admit(root, limits, quota, g.now_s, done, counting))
    if g.outcome is None:
        g.waiting = True
        return Action.PAUSE
    if g.outcome is True:
        proceed()
        return Action.CONTINUE
    return refuse(stream, g.outcome)


def refuse(stream: Any, err: GatewayError) -> Action:
    rejected(stream.consumer, err.code)
    stream.model = None  # nothing went upstream: nothing to observe or charge
    return stream._reject(err)


def rate_headers(stream: Any) -> list[tuple[str, str]]:
    g = stream.gate
    if g is None or not g.values:
        return []
    return headers(g.limits, g.values, g.now_s, g.counted)


def charge(stream: Any, cc: Consumers, usage: Usage | None, served: str) -> None:
    """Charge the answer's tokens (the server's usage, or the gateway's estimate for a served answer without it:
    usage.py) to every token counter of the model that answered and to the balance."""
    g = stream.gate
    if g is None or g.outcome is not True or usage is None:
        return  # no limits, refused (nothing went upstream), or no answer served
    who = stream.who
    items = [(lim, amount(lim, usage)) for lim in applicable(cc, who, served) if lim.kind != "requests"]
    if not items and g.quota is None:
        return

    def done(ok: Any) -> None:
        if not ok:
            count(CHARGE_FAILED)
            hc.log(LogLevel.WARN, f"consumers: charging {usage.total} tokens to {stream.consumer} failed")

    # The charge belongs to the plugin, not the stream: Envoy cancels a stream's callouts when it goes.
    as_root(stream, g.store, lambda root: g.store.charge(root, items, g.quota, usage.total,
                                                         hc.now_ns() // 1_000_000_000, done))


def as_root(stream: Any, store: SharedStore | RedisStore, fn: Callable[[Any], None]) -> None:
    """Call the store as the plugin's root context: its callouts then never mix with the stream's own (fallback
    attempts), and outlive the stream. Shared data needs no callout: called at once."""
    if type(store) is not RedisStore:
        fn(stream.root)
        return
    stream.as_root(fn)
