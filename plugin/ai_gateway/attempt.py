"""One upstream attempt: a model turned into the request that goes to it.

``address`` is the one place that decides, for a target model, the upstream request's
credential (a healthy pool key, not one already tried), the headers that name the
target (route and model headers, ``:authority``), the credentials that must not go
along (another model's pool key, the client's when the target has a pool) and the body
(``model`` rewritten). For a model whose provider speaks another protocol (providers/) it also
sets the attempt's ``:path`` and the provider's headers, translates the body, and carries the
``answer`` that turns the provider's answer back into OpenAI's shapes; an OpenAI-compatible
model after such a one gets the client's path back and none of the provider's headers (Envoy's
retry attempts share one header map). The direct path, every fallback attempt (Envoy retries
through the attempt filter, or HTTP callouts), key retries, the mirror and the intent classifier
use it; each applies the result to what it sends (a live header map, or a callout's header list).
"""

from __future__ import annotations

from .config import Config, Model
from .keys import KeyPool
from .providers import PROVIDER_HEADERS, Answer, translate
from .request import with_model

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from typing import Any

_POOLS: dict[str, KeyPool] = {}  # this VM's view of each model's key pool
_NONE: frozenset = frozenset()
NO_KEYS = _NONE  # no key tried yet
_AUTH = frozenset({"authorization"})
CHAT_PATH = "/v1/chat/completions"


def pool_of(model: Model) -> KeyPool:
    pool = _POOLS.get(model.name)
    if pool is None or pool.cfg is not model.keys:
        assert model.keys is not None
        pool = _POOLS[model.name] = KeyPool(model.name, model.keys)
    return pool


def credential_headers(model: Model | None) -> frozenset[str]:
    """Headers that carry an upstream credential for ``model`` (its pool's key), and its provider's own headers."""
    if model is None:
        return _NONE
    own = PROVIDER_HEADERS if model.provider is not None else _NONE
    return frozenset({"authorization", model.keys.header}) | own if model.keys else own


class Attempt:
    """What goes to ``model``: ``headers`` set (replacing), ``drop`` removed, ``body`` (None: as it is);
    ``answer``: how its answer becomes OpenAI's (None: it is already)."""

    __slots__ = ("answer", "body", "drop", "headers", "key", "model")

    def __init__(self, model: Model, headers: list[tuple[str, str]], drop: frozenset[str], body: bytes | None,
                 key: tuple[KeyPool, int] | None, answer: Answer | None = None) -> None:
        self.model, self.headers, self.drop, self.body, self.key = model, headers, drop, body, key
        self.answer = answer

    def apply(self, h: Any) -> None:
        """Apply to a live header map (the direct path, the attempt filter)."""
        if self.drop:
            for name in self.drop:
                h.remove(name)
        for k, v in self.headers:
            h.set(k, v)
        if self.body is not None:
            h.set("content-length", str(len(self.body)))

    def report(self, status: int, now_ms: int, retry_after: str | None) -> bool:
        """Account the answer to this attempt's key; True if the key is to be retried with another."""
        if self.key is None:
            return False
        pool, idx = self.key
        pool.report(idx, status, now_ms, retry_after)
        return status in pool.cfg.eject_on


def path_of(attempt: Attempt, default: str = CHAT_PATH) -> str:
    """The ``:path`` the attempt sets (a provider's), else ``default``."""
    return next((v for k, v in attempt.headers if k == ":path"), default)


def address(cfg: Config, doc: Any, model: Model, now_ms: int, rng: random.Random, source: Model | None = None,
            client_auth: bool = True, tried_keys: frozenset = _NONE, rewrite: bool = True,
            authority: bool = True, path: str = CHAT_PATH, keyless: bool = False) -> Attempt | None:
    """The attempt on ``model`` for the request ``doc``; None when ``model`` has no usable key left; a
    GatewayError (400) when ``model``'s provider cannot carry the request.

    ``source``: the model the request was addressed to before (its pool key is dropped); ``client_auth``:
    the request carries the client's ``authorization``; ``rewrite``: the body needs ``model`` rewritten;
    ``authority``: set the model's ``:authority`` (requests the gateway re-addresses; the direct path
    leaves the host to the route); ``path``: the client's path, as sent upstream (a provider has its own);
    ``keyless``: without a usable key, the attempt goes without one instead of None.
    """
    headers = [(cfg.route_header, model.cluster), (cfg.model_header, model.name)]
    drop = credential_headers(source) if source is not None and source is not model else _NONE
    key = None
    keys = model.keys
    if keys is not None:
        pool = pool_of(model)
        idx = pool.pick(now_ms, rng, tried_keys)
        if idx is None:
            if not keyless:
                return None
            drop = drop | credential_headers(model)  # it goes without a key (and fails), never with another's
        else:
            key = (pool, idx)
            name = keys.header
            if client_auth and name != "authorization" and not keys.forward_client_credential:
                drop = drop | _AUTH  # the client's credential stays here
            if name in drop:
                drop = drop - {name}  # replaced below
            headers.append(pool.credential(idx))
    if authority and model.authority:
        headers.append((":authority", model.authority))
    if model.provider is not None:
        t = translate(model.provider, doc, path)
        headers.append((":path", t.path))
        headers += t.headers
        body = t.body if t.body is not None else with_model(doc, model.upstream_model) if rewrite else None
        return Attempt(model, headers, drop - {k for k, _ in headers}, body, key, t.answer)
    if source is not None and source.provider is not None:  # back to the client's path, without its headers
        headers.append((":path", path))
    return Attempt(model, headers, drop, with_model(doc, model.upstream_model) if rewrite else None, key)
