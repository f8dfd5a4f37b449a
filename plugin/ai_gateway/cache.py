"""The response cache: exact-match, per consumer (or namespace) and per served model, in the consumers' store.

    "cache": {"ttl_s": 600, "store": {"backend": "shared" | "redis", "redis": {...}, "timeout_ms": 200},
              "namespace": "", "per_consumer": true, "max_entry_bytes": 262144, "max_entries": 1000,
              "any_temperature": false, "tool_calls": false, "charge_hits": false, "header": "x-ai-cache"}

Key: SHA-256 (in C) of the namespace, the consumer (unless ``per_consumer`` is false; without consumers, the
client's own credential when it is what goes upstream), the model that serves the request, the path and query it
goes to, and the request body's top-level members as sent, in order, without the whitespace between them and
without ``model`` (the served model stands for it) and the transport-only ``stream`` and ``stream_options``
(members found by the C JSON scan: no document is built). Looked up when the request is deterministic (``temperature`` 0, or no sampling at all: embeddings), or
when ``any_temperature`` is set, or the client sends ``<header>: allow``. ``cache-control: no-store`` or
``<header>: skip`` neither reads nor writes; ``cache-control: no-cache`` or ``<header>: refresh`` skips the
lookup and stores the fresh answer. Only a whole 200 answer is stored (no error, cut-off, cancelled stream or
fallback answer), at most ``max_entry_bytes``, tool calls only with ``tool_calls``. Every answer carries
``x-ai-cache: hit | miss | skip``.
"""

from __future__ import annotations

import json
from _sha256 import sha256

from proxywasm import Action, ConfigError, Counter, Fields, LogLevel, MetricCache, record
from proxywasm import hostcalls as hc
from proxywasm.jsonscan import members

from . import consumers, replay
from .consumers.config import Store, parse_store
from .consumers.store import store_for
from .fieldcheck import header_name
from .metric_names import cache_metric, cache_model_metric
from .observe import encode_basestring_ascii as _str
from .request import needs_usage
from .usage import Usage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_SKIP = (b'"stream"', b'"stream_options"', b'"model"')  # members left out of the key (as sent: escaped keys stay)
_COUNTERS = MetricCache(Counter)
RESPONSE_HEADER = "x-ai-cache"


@record
class CacheConfig:
    ttl_s: int
    store: Store
    namespace: str
    per_consumer: bool
    max_entry_bytes: int
    max_entries: int  # shared store: entries per Envoy (memory <= max_entries * max_entry_bytes)
    any_temperature: bool
    tool_calls: bool
    charge_hits: bool  # a hit goes through the consumer's limits and is charged its tokens
    header: str  # the request header with skip / refresh / allow


def parse(f: Fields) -> CacheConfig | None:
    c = f.obj("cache", None)
    if c is None:
        return None
    if "ttl_s" not in c.doc:
        raise ConfigError(f"{c.path('ttl_s')}: required (seconds an answer is replayed)")
    cfg = CacheConfig(
        ttl_s=c.int("ttl_s", min=1, max=30 * 86400), store=parse_store(c.obj("store", None)),
        namespace=c.str("namespace", ""), per_consumer=c.bool("per_consumer", True),
        max_entry_bytes=c.int("max_entry_bytes", 256 * 1024, min=1024, max=1 << 20),
        max_entries=c.int("max_entries", 1000, min=1, max=1_000_000),
        any_temperature=c.bool("any_temperature", False), tool_calls=c.bool("tool_calls", False),
        charge_hits=c.bool("charge_hits", False), header=header_name(c, "header", "x-ai-cache"))
    c.done()
    return cfg


_BY: dict[tuple[str, str], tuple[Any, Any]] = {}  # (what, model) -> its two counters, made once


def _counted(what: str, model: str, n: int = 1) -> None:
    """``aigw.cache.<what>`` and ``aigw.cache.model.<model>.<what>``: hit, miss, skip, stored, tokens_saved,
    store_unavailable (models are configured: the label set is bounded)."""
    pair = _BY.get((what, model))
    if pair is None:
        pair = _BY[what, model] = (_COUNTERS(cache_metric(what)), _COUNTERS(cache_model_metric(model, what)))
    pair[0].increment(n)
    pair[1].increment(n)


def _deterministic(doc: Any) -> bool:
    t = doc.get("temperature")
    if t is not None:
        return t == 0 and not isinstance(t, bool)
    return doc.get("messages") is None and doc.get("prompt") is None  # embeddings: no sampling


def key(cfg: CacheConfig, consumer: str, model: str, body: bytes, path: str = "") -> str:
    """The entry's key for a request body (already validated as a JSON object) sent to ``path`` (with its query)."""
    who = consumer if cfg.per_consumer else ""
    h = sha256(b"%d:%s|%d:%s|%d:%s|%d:%s|" % (
        len(cfg.namespace), cfg.namespace.encode(), len(who), who.encode("utf-8", "surrogateescape"),
        len(model), model.encode(), len(path), path.encode("utf-8", "surrogateescape")))
    for ks, ke, vs, ve in members(body) or ():
        k = body[ks:ke]
        if k not in _SKIP:
            h.update(b"%s:%s," % (k, body[vs:ve]))
    return h.hexdigest()


def _client_credential(hd: dict[str, str], model: Any) -> str:
    """Without consumers, entries are split by the client's own credential when it goes upstream (no key pool,
    or one that forwards it): an answer the upstream gave one key's holder is not replayed to another. Only its
    hash is kept (in the key)."""
    keys = model.keys
    if keys is not None and (keys.header == "authorization" or not keys.forward_client_credential):
        return ""  # the pool's key answered: every client of the model shares it
    cred = hd.get("authorization", "")
    return "\0credential:" + cred if cred else ""


def lookup(stream: Any, cfg: CacheConfig, proceed: Any) -> Action:
    """On a routed request: answer it from the cache, or go on (``proceed()`` -> Action) and remember its key for
    storing the answer. Reads the store as the plugin's root context (consumers.as_root)."""
    hd, model = stream.headers_in, stream.model
    control = hd.get("cache-control", "").lower()
    mode = hd.get(cfg.header, "").strip().lower()
    if "no-store" in control or mode == "skip" or not (cfg.any_temperature or mode == "allow"
                                                         or _deterministic(stream.doc)):
        stream.cache_state = "skip"
        _counted("skip", model.name)
        return proceed()
    k = key(cfg, stream.consumer or _client_credential(hd, model), model.name, stream.body, stream.upstream_path)
    stream.cache_key, stream.cache_state, stream.keep_whole = k, "miss", cfg.max_entry_bytes
    if "no-cache" in control or mode == "refresh":
        _counted("miss", model.name)
        return proceed()
    state = {"action": None, "waiting": False}

    def got(value: bytes | None) -> None:
        if value is None:
            _counted("store_unavailable", model.name)
            hc.log(LogLevel.WARN, f"cache: the {cfg.store.backend} store did not answer: going upstream")
        entry = _entry(value) if value else None
        if not stream.make_current():  # the store answers as the root (at once, or later when Redis replies)
            return  # the client left meanwhile
        if entry is not None:
            act = _hit(stream, cfg, *entry)
        else:
            _counted("miss", model.name)
            act = proceed()
        if state["waiting"]:
            if act == Action.CONTINUE:
                stream.sent_headers = stream.request_headers.items()
                stream.resume_request()
        else:
            state["action"] = act

    st = store_for(cfg.store)
    consumers.as_root(stream, st, lambda root: st.get(root, k, got, cfg.max_entries))
    if state["action"] is None:
        state["waiting"] = True
        return Action.PAUSE
    return state["action"]


def _decode(value: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(value)
    except (ValueError, RecursionError):
        return None
    return answer if isinstance(answer, dict) and isinstance(answer.get("choices", answer.get("data")), list) \
        else None


def _entry(value: bytes) -> tuple[bytes, Usage] | None:
    """A stored entry: ``b"<input> <output> <total>\\n"`` then the JSON answer."""
    head, _, answer = value.partition(b"\n")
    nums = head.split(b" ")
    if len(nums) != 3 or not all(n.isdigit() and len(n) < 16 for n in nums) or answer[:1] != b"{":
        return None
    return answer, Usage(int(nums[0]), int(nums[1]), int(nums[2]))


def _hit(stream: Any, cfg: CacheConfig, raw: bytes, usage: Usage) -> Action:
    """Answer from the cache: JSON as stored, or an SSE stream for a streamed request."""
    model = stream.model
    body, ctype = raw, "application/json"  # as stored: the upstream's own JSON answer, or the one a stream stood for
    if stream.sse_answer:
        answer = _decode(raw)
        try:
            body, ctype = replay.to_sse(answer, _wants_usage(stream)), "text/event-stream"  # type: ignore[arg-type]
        except (TypeError, AttributeError, ValueError):  # None, or a stored answer with parts of the wrong type
            _counted("miss", model.name)
            return stream._admit()  # unreadable: a miss, stored again
    stream.cache_state = "hit"
    cc = stream.config.consumers
    if cfg.charge_hits and cc is not None:
        sent = []

        def replay_now() -> bool:
            sent.append(_replay(stream, body, ctype, usage))
            consumers.charge(stream, cc, usage, model.name)
            return False  # answered here: nothing to resume

        act = consumers.admit(stream, cc, model.name, replay_now)
        return Action.PAUSE if sent else act
    _replay(stream, body, ctype, usage)
    return Action.PAUSE


def _replay(stream: Any, body: bytes, ctype: str, usage: Usage) -> bool:
    model = stream.model
    headers = [("content-type", ctype), (RESPONSE_HEADER, "hit"), ("x-ai-served-model", model.name)]
    if stream.gate is not None:
        headers += consumers.rate_headers(stream)
    stream.send_local_response(200, body, headers, "ai_cache_hit")
    _counted("hit", model.name)
    if usage.total:
        _counted("tokens_saved", model.name, usage.total)
    cfg = stream.config
    line = (f'{{"cache":"hit","model":{_str(stream.requested)},"served_model":{_str(model.name)},'
            f'"consumer":{_str(stream.consumer or "none")},"status":200,"stream":{_B[stream.sse_answer]},'
            f'"tokens_saved":{usage.total},"client":{_str(stream.client.protocol if stream.client else "openai")}}}')
    if cfg.ai_log in ("filter_state", "both"):
        hc.set_property("ai_log", line)
    if cfg.ai_log in ("log", "both"):
        hc.log(LogLevel.INFO, "ai_log " + line)
    stream.model = None  # nothing went upstream: nothing else to observe or charge
    return True


_B = {True: "true", False: "false"}


def _usage_of(answer: dict[str, Any]) -> Usage:
    u = answer.get("usage")
    u = u if isinstance(u, dict) else {}
    n = [v if isinstance(v, int) and v >= 0 else 0 for v in (u.get(k) for k in ("prompt_tokens",
                                                                                    "completion_tokens",
                                                                                    "total_tokens"))]
    return Usage(*n)


def _wants_usage(stream: Any) -> bool:
    """The client gets the usage chunk: it asked for it, or the gateway did and does not strip it."""
    return not stream.drop_usage and not needs_usage(stream.doc)


def store_answer(stream: Any, cfg: CacheConfig, raw: bytes | None, usage: Usage | None) -> None:
    """On a whole 200 answer to a cacheable miss: keep it (as JSON, after its usage) for ttl_s. A JSON answer is
    decoded only when it may be an error or call tools."""
    model = stream.model
    if not raw or len(raw) > cfg.max_entry_bytes:
        return
    if stream.sse is not None:
        answer = replay.from_sse(raw)
        if answer is None:
            return
        value = replay.to_json(answer)
    else:
        if raw.lstrip()[:1] != b"{" or (b'"choices"' not in raw and b'"data"' not in raw):
            return
        answer = _decode(raw) if b'"error"' in raw or b'"tool_calls"' in raw else {}
        if answer is None or "error" in answer:
            return
        value = raw
    if not cfg.tool_calls and replay.has_tool_calls(answer):
        return
    if len(value) > cfg.max_entry_bytes:
        return
    u = usage or _usage_of(answer)
    value = b"%d %d %d\n%s" % (u.input, u.output, u.total, value)

    def done(ok: Any) -> None:
        if ok:
            _counted("stored", model.name)
        else:
            _counted("store_unavailable", model.name)

    st = store_for(cfg.store)
    consumers.as_root(stream, st, lambda root: st.put(root, stream.cache_key, value, cfg.ttl_s, cfg.max_entries,
                                                      done))
