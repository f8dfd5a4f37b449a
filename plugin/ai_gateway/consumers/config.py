"""Consumers' configuration: who may call (credentials), on which models, within which limits and quota,
and where the counters live. Parsed once at plugin start; every error names its field.

    "consumers": [{"name": "team-a", "keys": ["sk-...", "sha256:<hex>"], "models": ["qwen"],
                   "limits": [{"tokens": 10000, "per": "minute"}, {"requests": 5, "per": "second", "model": "qwen"}],
                   "quota": true, "admin": false}],
    "auth": {"headers": ["authorization", "x-api-key"], "query": "", "trust_consumer_header": false,
             "allow": ["team-a"]},
    "limits": [{"tokens": 100000, "per": "minute"}],          # global: every consumer together
    "store": {"backend": "shared" | "redis", "redis": {...}, "on_error": "allow" | "deny", "timeout_ms": 500},
    "admin": {"path": "/ai-gateway/consumers"}
"""

from __future__ import annotations

from _sha256 import sha256

from proxywasm import ConfigError, Fields, record
from proxywasm import hostcalls as hc

WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
KINDS = ("requests", "tokens", "input_tokens", "output_tokens")
TRANSPORTS = ("higress", "webdis")


@record
class Limit:
    kind: str  # requests | tokens (total) | input_tokens | output_tokens
    amount: int
    window_s: int
    model: str  # "" = every model
    scope: str  # the consumer's name, or "" for the global limit (everyone together)
    counter: str = ""  # the counter's name: limits of one scope, model, kind and window share it


@record
class Consumer:
    name: str
    models: frozenset | None  # models / aliases this consumer may request (None: all)
    limits: tuple  # Limit, scope = name
    quota: bool  # has a token balance (admin API); 0 or less refuses with insufficient_quota
    admin: bool  # may use the admin API


@record
class RedisConfig:
    transport: str  # higress (its Redis host calls) | webdis (HTTP front for Redis, via http_call)
    cluster: str  # Envoy cluster of Redis (higress) or of webdis
    authority: str  # :authority of webdis requests
    username: str
    password: str
    database: int
    prefix: str  # key prefix in Redis


@record
class Store:
    backend: str  # shared | redis
    redis: RedisConfig | None
    fail_open: bool  # the store failed or timed out: allow (True) or refuse with 503 (False)
    timeout_ms: int


@record
class Consumers:
    by_digest: dict  # sha256 hex of a key -> Consumer
    by_name: dict  # name -> Consumer
    headers: tuple  # request headers holding a key ("authorization" means "Bearer <key>")
    query: str  # query parameter holding a key ("" = none)
    trust_header: bool  # no key: accept the consumer header set by a trusted auth layer in front
    allow: frozenset | None  # consumers allowed on this route (None: every authenticated consumer)
    limits: tuple  # global Limit, scope ""
    store: Store
    admin_path: str  # admin API prefix
    limited: bool  # any limit or quota at all

    def __repr__(self) -> str:  # never print key digests' origins: the config holds secrets
        return f"Consumers({', '.join(self.by_name)})"


def digest(key: str) -> str:
    return sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _limits(fs: list[Fields], scope: str) -> tuple[Limit, ...]:
    out = []
    for f in fs:
        kinds = [k for k in KINDS if k in f.doc]
        if len(kinds) != 1:
            raise ConfigError(f"{f.where}: name exactly one of {', '.join(KINDS)} (the amount per window)")
        amount = f.int(kinds[0], min=1, max=1 << 53)
        per = f.choice("per", tuple(WINDOWS))
        model = f.str("model", "")
        out.append(Limit(kinds[0], amount, WINDOWS[per], model, scope,
                         f"{scope}|{model or '*'}|{kinds[0]}|{WINDOWS[per]}"))
        f.done()
    return tuple(out)


def _redis(f: Fields) -> RedisConfig:
    transport = f.choice("transport", TRANSPORTS)
    cfg = RedisConfig(transport=transport, cluster=f.str("cluster"), authority=f.str("authority", "webdis"),
                      username=f.str("username", ""), password=f.str("password", ""),
                      database=f.int("database", 0, min=0, max=15), prefix=f.str("prefix", "aigw:"))
    f.done()
    return cfg


def _store(f: Fields | None) -> Store:
    f = f or Fields({}, "store")
    backend = f.choice("backend", ("shared", "redis"), "shared")
    redis_f = f.obj("redis", None)
    if backend == "redis" and redis_f is None:
        raise ConfigError(f"{f.path('redis')}: required with backend \"redis\"")
    store = Store(backend=backend, redis=_redis(redis_f) if redis_f is not None else None,  # checked even if unused
                  fail_open=f.choice("on_error", ("allow", "deny"), "allow") == "allow",
                  timeout_ms=f.int("timeout_ms", 500, min=10, max=10_000))
    f.done()
    return store


def check_host(store: Store | None, where: str = "store") -> None:
    """What only the running module can tell: whether it was built with Higress's Redis calls (a store of the
    consumers, or of the response cache)."""
    redis = store.redis if store is not None else None
    if redis is not None and redis.transport == "higress" and not hc.has_redis():
        raise ConfigError(f"{where}.redis.transport: \"higress\" needs Higress's Redis host calls: load the "
                          "ai-gateway-higress.wasm build in Higress, or use \"webdis\" with stock Envoy")


parse_store = _store  # the response cache keeps its answers in a store of its own kind (cache.py)


def parse(f: Fields) -> Consumers | None:
    """The consumers part of the gateway's config (None when it configures no consumers)."""
    cons_f = f.objs("consumers", [])
    auth = f.obj("auth", None)
    limits_f = f.objs("limits", [])
    store_f = f.obj("store", None)
    admin_f = f.obj("admin", None)
    if not cons_f and auth is None:
        for key, v in (("limits", limits_f), ("store", store_f), ("admin", admin_f)):
            if v:
                raise ConfigError(f"{f.path(key)}: needs consumers (or auth.trust_consumer_header)")
        return None
    by_digest: dict[str, Consumer] = {}
    by_name: dict[str, Consumer] = {}
    for c in cons_f:
        name = c.str("name")
        if name in by_name:
            raise ConfigError(f"{c.path('name')}: duplicate consumer {name!r}")
        if not name.isascii() or any(ch in name for ch in " \t\r\n,;\"'"):
            raise ConfigError(f"{c.path('name')}: must be ASCII without spaces, commas, semicolons or quotes")
        keys = c.str_list("keys")
        if not keys:
            raise ConfigError(f"{c.path('keys')}: needs at least one key (the key, or \"sha256:<hex>\")")
        models = c.str_list("models", None)
        consumer = Consumer(name, frozenset(models) if models is not None else None,
                            _limits(c.objs("limits", []), name), c.bool("quota", False), c.bool("admin", False))
        for i, k in enumerate(keys):
            d = k[7:].lower() if k.startswith("sha256:") else digest(k)
            if len(d) != 64 or any(ch not in "0123456789abcdef" for ch in d):
                raise ConfigError(f"{c.path('keys')}[{i}]: \"sha256:\" needs 64 hex digits")
            if len(k) < 8 and not k.startswith("sha256:"):
                raise ConfigError(f"{c.path('keys')}[{i}]: too short (8 characters at least)")
            if d in by_digest:
                raise ConfigError(f"{c.path('keys')}[{i}]: the same key is given to {by_digest[d].name!r}")
            by_digest[d] = consumer
        by_name[name] = consumer
        c.done()
    a = auth or Fields({}, "auth")
    headers = tuple(h.lower() for h in a.str_list("headers", ("authorization", "x-api-key", "api-key")))
    allow = a.str_list("allow", None)
    for i, n in enumerate(allow or ()):
        if n not in by_name:
            raise ConfigError(f"{a.path('allow')}[{i}]: unknown consumer {n!r}")
    trust = a.bool("trust_consumer_header", False)
    query = a.str("query", "")
    a.done()
    limits = _limits(limits_f, "")
    store = _store(store_f)
    admin = admin_f or Fields({}, "admin")
    admin_path = admin.str("path", "/ai-gateway/consumers").rstrip("/")
    admin.done()
    limited = bool(limits) or any(c.limits or c.quota for c in by_name.values())
    return Consumers(by_digest, by_name, headers, query, trust, frozenset(allow) if allow is not None else None,
                     limits, store, admin_path, limited)
