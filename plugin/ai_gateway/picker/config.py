"""Endpoint-picker configuration: ``models[].endpoint_picker`` and ``models[].criticality``.

A picker belongs to the model's *cluster* (an Envoy ORIGINAL_DST cluster reading the destination
header): every model on that cluster (a base model and its LoRA adapters, a "batch" variant with
another criticality) is picked for by it, and the endpoints are scraped once for all of them.
Declare ``endpoint_picker`` on one of those models (or identically on several).
"""

from __future__ import annotations

from _sha256 import sha256

from proxywasm import ConfigError, Fields, record

from ..fieldcheck import header_name

CRITICALITIES = ("critical", "standard", "sheddable")
DEFAULT_HEADER = "x-gateway-destination-endpoint"  # Gateway API inference extension, endpoint picker protocol
WEIGHTS = {"running": 1.0, "queue": 1.0, "kv_cache": 4.0, "lora": 4.0, "prefix": 8.0, "speed": 1.0}  # see score
PREFIX_CHARS = 32_768  # prefix affinity over the prompt's first 32k characters by default
MAX_ENDPOINTS = 64  # the shared record is one JSON document: keep it small


@record
class Weights:
    queue: float
    running: float
    kv_cache: float
    lora: float
    prefix: float
    speed: float


@record
class EndpointPicker:
    cluster: str  # the ORIGINAL_DST cluster the models route to
    endpoints: tuple  # "ip:port" of each model server
    header: str  # request header carrying the picked endpoint
    metrics_path: str
    scrape_cluster: str  # cluster scrape callouts go to ("" = cluster)
    scrape_interval_ms: int
    scrape_timeout_ms: int
    stale_after_ms: int
    queue_threshold: int  # waiting requests at which an endpoint is saturated
    kv_cache_threshold: float  # KV-cache usage (0..1) at which an endpoint is saturated
    weights: Weights
    prefix_chars: int  # characters of the prompt's start prefix affinity hashes (0: none)
    criticality_header: str  # "" = criticality from the model only
    criticality: dict  # model name -> critical | standard | sheddable

    view = None  # this VM's state of the cluster (state.View), set on first use
    states = None  # the View's Endpoint of each of this picker's endpoints, in order

    @property
    def target(self) -> str:
        return self.scrape_cluster or self.cluster


def endpoint_ok(ep: str) -> bool:
    """``a.b.c.d:port`` or ``[ipv6]:port``: IP literals, as an ORIGINAL_DST cluster needs them."""
    host, sep, port = ep.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        return False
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        return 2 <= len(inner) <= 45 and inner.count(":") >= 2 and all(c in "0123456789abcdefABCDEF:." for c in inner)
    parts = host.split(".")
    return len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)


def endpoint_id(ep: str) -> int:
    return int.from_bytes(sha256(ep.encode()).digest()[:8], "little")


def parse_picker(f: Fields, cluster: str, criticality: dict) -> EndpointPicker:
    endpoints = f.str_list("endpoints")
    if not endpoints or len(endpoints) > MAX_ENDPOINTS:
        raise ConfigError(f"{f.path('endpoints')}: must list 1 to {MAX_ENDPOINTS} endpoints")
    for i, ep in enumerate(endpoints):
        if not endpoint_ok(ep):
            raise ConfigError(f"{f.path('endpoints')}[{i}]: must be \"ip:port\" (an IP literal), got {ep!r}")
    if len(set(endpoints)) != len(endpoints):
        raise ConfigError(f"{f.path('endpoints')}: has duplicates")
    header = header_name(f, "header", DEFAULT_HEADER)
    path = f.str("metrics_path", "/metrics")
    if not path.startswith("/"):
        raise ConfigError(f"{f.path('metrics_path')}: must start with /")
    interval = f.int("scrape_interval_ms", 200, min=10, max=600_000)
    stale = f.int("stale_after_ms", max(1000, 3 * interval), min=1, max=3_600_000)
    if stale < 2 * interval:
        raise ConfigError(f"{f.path('stale_after_ms')}: must be at least twice scrape_interval_ms ({2 * interval})")
    timeout = f.int("scrape_timeout_ms", min(500, stale), min=1, max=60_000)
    if timeout > stale:
        raise ConfigError(f"{f.path('scrape_timeout_ms')}: must not exceed stale_after_ms ({stale})")
    wf = f.obj("weights", {})
    weights = Weights(**{k: float(wf.number(k, d, min=0, max=1000)) for k, d in WEIGHTS.items()})
    wf.done()
    picker = EndpointPicker(
        cluster=cluster, endpoints=endpoints,
        header=header, metrics_path=path, scrape_cluster=f.str("scrape_cluster", "", nonempty=False),
        scrape_interval_ms=interval, scrape_timeout_ms=timeout, stale_after_ms=stale,
        queue_threshold=f.int("queue_threshold", 5, min=1, max=1_000_000),
        kv_cache_threshold=float(f.number("kv_cache_threshold", 0.8, min=0.01, max=1)),
        weights=weights, prefix_chars=f.int("prefix_chars", PREFIX_CHARS, min=0, max=1_000_000),
        criticality_header=header_name(f, "criticality_header", "x-gateway-criticality", optional=True),
        criticality=criticality,
    )
    f.done()
    return picker


class Pickers:
    """Collects pickers and criticalities while ``models`` are parsed; ``finish()`` -> cluster -> picker."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[str, object]] = {}  # cluster -> (where, endpoint_picker doc)
        self.pickers: dict[str, EndpointPicker] = {}
        self.criticality: dict[str, dict[str, str]] = {}  # cluster -> model -> criticality
        self.levels: dict[str, str] = {}  # where -> model, for errors

    def add(self, m: Fields, name: str, cluster: str) -> None:
        """Read ``endpoint_picker`` and ``criticality`` of one ``models[]`` entry."""
        level = m.choice("criticality", CRITICALITIES, None)
        crit = self.criticality.setdefault(cluster, {})
        if level is not None and level != "standard":  # standard is what every model gets anyway
            crit[name] = level
            self.levels[name] = m.path("criticality")
        pf = m.obj("endpoint_picker", None)
        if pf is None:
            return
        seen = self.docs.get(cluster)
        if seen is None:
            self.docs[cluster] = (pf.where, pf.doc)
            self.pickers[cluster] = parse_picker(pf, cluster, crit)
        elif seen[1] != pf.doc:
            raise ConfigError(f"{pf.where}: differs from {seen[0]} on the same cluster {cluster!r} "
                              "(a cluster has one picker: declare it once)")

    def finish(self) -> dict[str, EndpointPicker]:
        for cluster, models in self.criticality.items():
            if cluster not in self.pickers and models:
                name = next(iter(models))
                raise ConfigError(f"{self.levels[name]}: only applies to models on an endpoint_picker cluster "
                                  f"({cluster!r} has none)")
        return self.pickers
