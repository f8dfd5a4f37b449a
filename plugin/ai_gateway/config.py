"""The AI gateway's configuration: parsed and validated once, at plugin start.

Every error names its field (``models[1].fallback.mode: must be one of SEQ, RAND``).
An empty configuration ``{}`` is valid and passes all traffic through untouched.
"""

from __future__ import annotations

from proxywasm import ConfigError, Fields, factory, record

from .cache import CacheConfig
from .cache import parse as parse_cache
from .consumers.config import Consumers
from .consumers.config import parse as parse_consumers
from .content_routing import parse as parse_content_routes
from .fieldcheck import echo, header_name, header_value, token, url_path
from .keys import KeyPoolConfig, parse_pool
from .picker.config import DEFAULT_HEADER as PICKER_HEADER
from .picker.config import Pickers
from .providers.config import KEY_HEADERS, Provider
from .providers.config import parse as parse_provider

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ATTEMPT_HEADER = "x-ai-attempt-ticket"  # the router-level filter's ticket for the attempt filter (never a client's)
DEFAULT_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
                 "/v1/messages/count_tokens")


@record
class StatusSet:
    """HTTP statuses that trigger fallback: exact codes and classes ("5xx")."""

    codes: frozenset
    classes: frozenset

    def __contains__(self, status: int) -> bool:
        return status in self.codes or status // 100 in self.classes

    @classmethod
    def parse(cls, f: Fields, key: str, default: tuple[str, ...]) -> StatusSet:
        raw = f.raw(key, list(default))
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{f.path(key)}: must be a non-empty list like [\"5xx\", 429]")
        codes, classes = set(), set()
        for i, item in enumerate(raw):
            s = str(item).strip().lower()
            if len(s) == 3 and s[0] in "45" and s[1:] == "xx":
                classes.add(int(s[0]))
            elif s.isascii() and s.isdigit() and len(s) == 3 and 400 <= int(s) <= 599:
                codes.add(int(s))
            else:
                raise ConfigError(f"{f.path(key)}[{i}]: must be an error status (429, 400-599) or class "
                                  f"(\"4xx\", \"5xx\"), got {echo(str(item))}")
        return cls(frozenset(codes), frozenset(classes))


@record
class FallbackPolicy:
    models: tuple[str, ...]
    on_status: StatusSet
    mode: str  # SEQ: in order; RAND: random order
    max_attempts: int  # upstream attempts in all, the first one included
    timeout_ms: int  # total budget for the fallback attempts (callouts)
    cluster: str = ""  # an Envoy aggregate cluster: attempts are Envoy retries (see retries.py)
    first_byte_timeout_ms: int = 0  # per attempt, until response headers (Envoy retries); 0: none
    retry_headers: tuple = ()  # the request headers that give Envoy this policy (with ``cluster``)


@record
class Mirror:
    model: str
    percent: float


@record
class Model:
    name: str  # the name clients use (and targets of aliases)
    cluster: str  # Envoy cluster (Higress: outbound|port||host) serving it
    upstream_model: str  # the model name sent upstream
    authority: str  # :authority for callouts to this model ("" = the request's)
    fallback: FallbackPolicy | None
    mirror: Mirror | None
    keys: KeyPoolConfig | None = None  # upstream API keys, rotated
    provider: Provider | None = None  # the upstream's protocol when not OpenAI's (providers/)


@record
class Target:
    model: str
    weight: int


@record
class Alias:
    name: str
    targets: tuple[Target, ...]
    total_weight: int
    sticky_header: str


@record
class Config:
    models: dict  # name -> Model
    aliases: dict  # name -> Alias
    route_header: str
    model_header: str
    max_body_bytes: int
    paths: frozenset
    models_endpoint: bool
    consumer_header: str
    inject_stream_usage: bool  # add stream_options.include_usage when the client did not
    strip_injected_usage: bool  # and remove the usage-only chunk it did not ask for
    ai_log: str  # filter_state | log | both | off
    metrics: bool
    pickers: dict = factory(dict)  # cluster -> picker.EndpointPicker (models[].endpoint_picker)
    picker_headers: tuple = ()  # their destination headers: never accepted from clients
    request_headers: tuple = ()  # every request header the gateway reads (bytes): only these are decoded
    consumers: Consumers | None = None  # the gateway's own API keys, limits and quotas (consumers/)
    strip_headers: tuple = ()  # routing, model and endpoint headers (of every configuration): removed from requests
    max_consumers: int = 1000  # distinct consumer labels in metrics (process-wide); then "_other"
    cache: CacheConfig | None = None  # the response cache (cache.py)
    content_routes: dict = factory(dict)  # name -> content_routing.ContentRoute
    attempt_filter: bool = False  # this instance is the upstream (per-attempt) filter, not the router-level one

    @property
    def enabled(self) -> bool:
        return bool(self.models)


def _fallback(f: Fields | None, defaults: Fields | None, own: str, keys: KeyPoolConfig | None) -> FallbackPolicy | None:
    if f is None:
        return None
    d = defaults.doc if defaults else {}
    merged = Fields({**d, **f.doc}, f.where)
    models = merged.str_list("models")
    if not models:
        raise ConfigError(f"{merged.path('models')}: must name at least one model")
    if own in models:
        raise ConfigError(f"{merged.path('models')}: must not contain the model itself ({own!r})")
    if len(set(models)) != len(models):
        raise ConfigError(f"{merged.path('models')}: has duplicates (each model is tried at most once)")
    on_status, mode, max_attempts, timeout_ms, first_byte_timeout_ms = _policy(merged, len(models))
    cluster = merged.str("cluster", "")
    if cluster and mode != "SEQ":
        raise ConfigError(f"{merged.path('mode')}: must be SEQ with cluster (Envoy tries the aggregate "
                          "cluster's clusters in their order)")
    policy = FallbackPolicy(models, on_status, mode, max_attempts, timeout_ms, cluster, first_byte_timeout_ms)
    if cluster:
        policy.retry_headers = retry_headers(policy, keys)  # still being built: set once, here
    merged.done()
    return policy


def retry_headers(policy: FallbackPolicy, keys: KeyPoolConfig | None) -> tuple[tuple[str, str], ...]:
    """Envoy's retry policy for ``policy`` as request headers (the router honours them over the route's):
    connection failures and resets always, the fallback statuses, the key pool's ejecting statuses (another
    attempt is another key), at most ``max_attempts`` attempts, the per-attempt first-byte timeout."""
    on = policy.on_status
    codes = set(on.codes) | set(keys.eject_on if keys else ())
    retry_on = ["connect-failure", "refused-stream", "reset"]
    if 5 in on.classes:
        retry_on.append("5xx")  # also a per-attempt timeout (Envoy's 504)
    elif 504 in on.codes:
        retry_on.append("gateway-error")  # a per-attempt timeout
    codes |= {c for cls in on.classes if cls != 5 for c in range(cls * 100, cls * 100 + 100)}
    out = [("x-envoy-max-retries", str(policy.max_attempts - 1))]
    if codes:
        retry_on.append("retriable-status-codes")
        out.append(("x-envoy-retriable-status-codes", ",".join(str(c) for c in sorted(codes))))
    out.append(("x-envoy-retry-on", ",".join(retry_on)))
    if policy.first_byte_timeout_ms:
        out.append(("x-envoy-upstream-rq-per-try-timeout-ms", str(policy.first_byte_timeout_ms)))
    return tuple(out)


def _policy(f: Fields, n_models: int) -> tuple[StatusSet, str, int, int, int]:
    """on_status, mode, max_attempts, timeout_ms, first_byte_timeout_ms of a fallback (or of the top-level
    defaults)."""
    return (StatusSet.parse(f, "on_status", ("5xx",)), f.choice("mode", ("SEQ", "RAND"), "SEQ"),
            f.int("max_attempts", n_models + 1, min=2, max=10), f.int("timeout_ms", 60_000, min=100, max=600_000),
            f.int("first_byte_timeout_ms", 0, min=0, max=600_000))


def _paths(f: Fields) -> frozenset:
    paths = f.str_list("paths", DEFAULT_PATHS)
    if not paths:
        raise ConfigError(f"{f.path('paths')}: must list at least one path")
    for i, p in enumerate(paths):
        url_path(f"{f.path('paths')}[{i}]", p)
        if p != "/" and (p.endswith("/") or "//" in p or "/./" in p + "/" or "/../" in p + "/"):
            raise ConfigError(f"{f.path('paths')}[{i}]: must be a normalised path (no //, dot segments or trailing /),"
                              f" got {echo(p)}")
    return frozenset(paths)


def _distinct_headers(f: Fields, models: dict[str, Model], route: str, model: str, consumer: str,
                      pickers: dict) -> None:
    """The headers the gateway sets (routing, endpoint, credentials) are distinct from each other and from the
    consumer header: a key must never become a cluster name or a metric label."""
    if route == "authorization" or model == "authorization":
        raise ConfigError(f"{f.path('route_header' if route == 'authorization' else 'model_header')}: "
                          "must not be authorization")
    if route == model:
        raise ConfigError(f"{f.path('model_header')}: must differ from route_header ({route!r})")
    headers = {p.header for p in pickers.values()}
    if consumer and consumer in (route, model, "authorization", *headers):
        raise ConfigError(f"{f.path('consumer_header')}: must not be {consumer!r} (a routing or credential header)")
    for i, m in enumerate(models.values()):
        pool = m.keys
        if pool is not None and pool.header in (route, model, consumer, *headers):
            raise ConfigError(f"models[{i}].api_keys.header: must not be {pool.header!r} (a routing or consumer "
                              "header)")
        picker = pickers.get(m.cluster)
        if picker is not None and picker.header in (route, model):
            raise ConfigError(f"models[{i}].endpoint_picker.header: must differ from route_header and model_header")


def parse(doc: dict[str, Any]) -> Config:
    f = Fields(doc)
    if f.bool("attempt_filter", False):
        if len(doc) > 1:
            extra = next(k for k in doc if k != "attempt_filter")
            raise ConfigError(f"{f.path(extra)}: the attempt filter takes no other field (it follows the "
                              "router-level filter's configuration)")
        return Config(models={}, aliases={}, route_header="", model_header="", max_body_bytes=0, paths=frozenset(),
                      models_endpoint=False, consumer_header="", inject_stream_usage=False,
                      strip_injected_usage=False, ai_log="off", metrics=False, attempt_filter=True)
    defaults = f.obj("fallback", None)
    if defaults is not None:
        for key in defaults.doc:
            if key not in ("on_status", "mode", "max_attempts", "timeout_ms", "first_byte_timeout_ms"):
                raise ConfigError(f"{defaults.path(key)}: unknown field (set models per model)")
        _policy(defaults, 1)  # checked even where no model uses them
    models: dict[str, Model] = {}
    picker_cfg = Pickers()
    where: dict[str, str] = {}  # model name -> "models[i]", for errors found after the loop
    for m in f.objs("models", []):
        name = header_value(m, "name", m.str("name"))  # sent upstream in model_header
        if name in models:
            raise ConfigError(f"{m.path('name')}: duplicate model {name!r}")
        where[name] = m.where
        mirror_f = m.obj("mirror", None)
        mirror = None
        if mirror_f is not None:
            mirror = Mirror(mirror_f.str("model"), mirror_f.number("percent", 100, min=0, max=100))
            if mirror.model == name:
                raise ConfigError(f"{mirror_f.path('model')}: must not be the model itself ({name!r})")
            mirror_f.done()
        upstream_model = m.str("upstream_model", name)
        if not upstream_model.strip():
            raise ConfigError(f"{m.path('upstream_model')}: must not be empty")
        provider = parse_provider(m, upstream_model)
        keys_f = m.obj("api_keys", None)
        keys = parse_pool(keys_f, name, KEY_HEADERS[provider.kind] if provider else "authorization") \
            if keys_f is not None else None
        models[name] = Model(
            name=name,
            cluster=token(m, "cluster"),
            upstream_model=upstream_model,
            authority=token(m, "authority", ""),
            fallback=_fallback(m.obj("fallback", None), defaults, name, keys),
            mirror=mirror,
            keys=keys,
            provider=provider,
        )
        picker_cfg.add(m, name, models[name].cluster)
        m.done()
    aliases: dict[str, Alias] = {}
    for a in f.objs("aliases", []):
        name = a.str("name")
        if name in models or name in aliases:
            raise ConfigError(f"{a.path('name')}: {name!r} is already a model or alias name")
        targets = []
        for t in a.objs("targets"):
            target = Target(t.str("model"), t.int("weight", 1, min=0, max=1_000_000))
            if target.model not in models:
                raise ConfigError(f"{t.path('model')}: unknown model {target.model!r}")
            targets.append(target)
            t.done()
        total = sum(t.weight for t in targets)
        if total <= 0:
            raise ConfigError(f"{a.path('targets')}: needs at least one target with a positive weight")
        aliases[name] = Alias(name, tuple(targets), total, header_name(a, "sticky_header", ""))
        a.done()
    for m in models.values():
        for fb in m.fallback.models if m.fallback else ():
            if fb not in models:
                raise ConfigError(f"{where[m.name]}.fallback.models: unknown model {fb!r}")
        if m.mirror and m.mirror.model not in models:
            raise ConfigError(f"{where[m.name]}.mirror.model: unknown model {m.mirror.model!r}")
    pickers = picker_cfg.finish()
    content_routes = parse_content_routes(f, set(models), {*models, *aliases})
    route_header = header_name(f, "route_header", "x-ai-upstream")
    model_header = header_name(f, "model_header", "x-ai-model")
    consumer_header = header_name(f, "consumer_header", "")  # "" = no header is trusted to name the consumer
    picker_headers = tuple(sorted({p.header for p in pickers.values()}))
    _distinct_headers(f, models, route_header, model_header, consumer_header, pickers)
    consumers = parse_consumers(f)
    cache_cfg = parse_cache(f)
    if consumers is not None and not consumer_header:
        consumer_header = "x-mse-consumer"  # where the gateway names the authenticated consumer (Higress's header)
    read = {":method", ":path", "content-type", "content-length", "authorization", "accept-encoding", consumer_header,
            route_header, model_header, ATTEMPT_HEADER, *picker_headers, *(a.sticky_header for a in aliases.values()),
            *(consumers.headers if consumers is not None else ()),
            *(p.criticality_header for p in pickers.values()),
            *(("cache-control", cache_cfg.header) if cache_cfg is not None else ())}
    cfg = Config(
        models=models,
        aliases=aliases,
        route_header=route_header,
        model_header=model_header,
        max_body_bytes=f.int("max_body_bytes", 10 * 1024 * 1024, min=1024, max=1 << 30),
        paths=_paths(f),
        models_endpoint=f.bool("models_endpoint", True),
        consumer_header=consumer_header,
        inject_stream_usage=f.bool("inject_stream_usage", True),
        strip_injected_usage=f.bool("strip_injected_usage", True),
        ai_log=f.choice("ai_log", ("filter_state", "log", "both", "off"), "filter_state"),
        metrics=f.bool("metrics", True),
        pickers=pickers,
        picker_headers=picker_headers,
        request_headers=tuple(sorted(n.encode() for n in {*read, PICKER_HEADER} if n)),
        # the endpoint picker's standard header even without a picker: an ORIGINAL_DST cluster may read it
        strip_headers=tuple(sorted({route_header, model_header, PICKER_HEADER, ATTEMPT_HEADER, *picker_headers})),
        max_consumers=f.int("max_consumers", 1000, min=1, max=100_000),
        consumers=consumers,
        cache=cache_cfg,
        content_routes=content_routes,
    )
    f.done()
    return cfg
