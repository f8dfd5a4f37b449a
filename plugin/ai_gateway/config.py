"""The AI gateway's configuration: parsed and validated once, at plugin start.

Every error names its field (``models[1].fallback.mode: must be one of SEQ, RAND``).
An empty configuration ``{}`` is valid and passes all traffic through untouched.
"""

from __future__ import annotations

from proxywasm import ConfigError, Fields, factory, record

from .keys import KeyPoolConfig, parse_pool
from .picker.config import Pools

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ATTEMPT_HEADER = "x-ai-attempt-ticket"  # the router-level filter's ticket for the attempt filter (never a client's)
DEFAULT_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


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
            if len(s) == 3 and s[0] in "12345" and s[1:] == "xx":
                classes.add(int(s[0]))
            elif s.isascii() and s.isdigit() and 100 <= int(s) <= 599:
                codes.add(int(s))
            else:
                raise ConfigError(f"{f.path(key)}[{i}]: must be an HTTP status (429) or class (\"5xx\"), got {item!r}")
        return cls(frozenset(codes), frozenset(classes))


@record
class FallbackPolicy:
    models: tuple[str, ...]
    on_status: StatusSet
    mode: str  # SEQ: in order; RAND: random order
    max_attempts: int  # upstream attempts in all, the first one included
    timeout_ms: int  # total budget for the fallback attempts (callouts)
    cluster: str = ""  # an Envoy aggregate cluster: attempts are Envoy retries (see attempt_filter.py)
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
    mode = merged.choice("mode", ("SEQ", "RAND"), "SEQ")
    cluster = merged.str("cluster", "")
    if cluster and mode != "SEQ":
        raise ConfigError(f"{merged.path('mode')}: must be SEQ with cluster (Envoy tries the aggregate "
                          "cluster's clusters in their order)")
    policy = FallbackPolicy(
        models=models,
        on_status=StatusSet.parse(merged, "on_status", ("5xx",)),
        mode=mode,
        max_attempts=merged.int("max_attempts", len(models) + 1, min=2, max=10),
        timeout_ms=merged.int("timeout_ms", 60_000, min=100, max=600_000),
        cluster=cluster,
        first_byte_timeout_ms=merged.int("first_byte_timeout_ms", 0, min=0, max=600_000),
    )
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
    models: dict[str, Model] = {}
    pools = Pools()
    for m in f.objs("models", []):
        name = m.str("name")
        if name in models:
            raise ConfigError(f"{m.path('name')}: duplicate model {name!r}")
        mirror_f = m.obj("mirror", None)
        mirror = None
        if mirror_f is not None:
            mirror = Mirror(mirror_f.str("model"), mirror_f.number("percent", 100, min=0, max=100))
            mirror_f.done()
        keys_f = m.obj("api_keys", None)
        keys = parse_pool(keys_f, name) if keys_f is not None else None
        models[name] = Model(
            name=name,
            cluster=m.str("cluster"),
            upstream_model=m.str("upstream_model", name),
            authority=m.str("authority", ""),
            fallback=_fallback(m.obj("fallback", None), defaults, name, keys),
            mirror=mirror,
            keys=keys,
        )
        pools.add(m, name, models[name].cluster)
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
        aliases[name] = Alias(name, tuple(targets), total, a.str("sticky_header", "").lower())
        a.done()
    for m in models.values():
        for fb in m.fallback.models if m.fallback else ():
            if fb not in models:
                raise ConfigError(f"models[{m.name}].fallback.models: unknown model {fb!r}")
        if m.mirror and m.mirror.model not in models:
            raise ConfigError(f"models[{m.name}].mirror.model: unknown model {m.mirror.model!r}")
    pickers = pools.finish()
    route_header = f.str("route_header", "x-ai-upstream").lower()
    model_header = f.str("model_header", "x-ai-model").lower()
    consumer_header = f.str("consumer_header", "x-mse-consumer").lower()
    picker_headers = tuple({p.header for p in pickers.values()})
    read = {":method", ":path", "content-type", "content-length", "authorization", consumer_header, route_header,
            model_header, ATTEMPT_HEADER, *picker_headers, *(a.sticky_header for a in aliases.values()),
            *(p.criticality_header for p in pickers.values())}
    cfg = Config(
        models=models,
        aliases=aliases,
        route_header=route_header,
        model_header=model_header,
        max_body_bytes=f.int("max_body_bytes", 10 * 1024 * 1024, min=1024, max=1 << 30),
        paths=frozenset(f.str_list("paths", DEFAULT_PATHS)),
        models_endpoint=f.bool("models_endpoint", True),
        consumer_header=consumer_header,
        inject_stream_usage=f.bool("inject_stream_usage", True),
        strip_injected_usage=f.bool("strip_injected_usage", True),
        ai_log=f.choice("ai_log", ("filter_state", "log", "both", "off"), "filter_state"),
        metrics=f.bool("metrics", True),
        pickers=pickers,
        picker_headers=picker_headers,
        request_headers=tuple(sorted(n.encode() for n in read if n)),
    )
    f.done()
    return cfg
