"""Load-aware endpoint picking from vLLM metrics, inside the plugin (the Gateway API inference
extension's endpoint picker protocol): the gateway sets ``x-gateway-destination-endpoint: ip:port``
and an Envoy ORIGINAL_DST cluster with ``use_http_header`` connects to that pod.

``config`` (``models[].endpoint_picker``, ``models[].criticality``), ``promtext`` (reading
``/metrics``), ``scrape`` (one worker per round, on ticks), ``state`` (shared data + per-VM view),
``score`` (the documented score and the rules for stale, down and saturated endpoints),
``affinity`` (prompt-prefix affinity). The functions here are the gateway's hooks.
"""

from __future__ import annotations

from proxywasm import Counter, MetricCache

from ..errors import GatewayError
from ..observe import label
from . import score, state
from .affinity import prefix_hash
from .config import EndpointPicker
from .scrape import metric, period_ms, scrape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["EndpointPicker", "add_destination", "period_ms", "pick", "scrape"]

_COUNTERS = MetricCache(Counter)


def criticality(pool: EndpointPicker, model: str, header_value: str | None) -> str:
    """The request's header (critical | standard | sheddable, any case) wins over the model's default."""
    if header_value:
        v = header_value.strip().lower()
        if v in ("critical", "standard", "sheddable"):
            return v
    return pool.criticality.get(model, "standard")


def _endpoints(pool: EndpointPicker) -> list[state.Endpoint]:
    eps = pool.states
    if eps is None:
        view = pool.view = state.view_of(pool.cluster, max(1, min(50, pool.scrape_interval_ms // 4)))
        eps = pool.states = [view.endpoint(a) for a in pool.endpoints]
    return eps


def pick(pool: EndpointPicker, model: str, upstream_model: str, doc: dict[str, Any], level: str, now_ms: int,
         metrics: bool) -> str | None:
    """The endpoint (``ip:port``) for a request to ``model`` on ``pool``; None: shed it."""
    eps = _endpoints(pool)
    view = pool.view
    view.refresh(now_ms)
    prefix = prefix_hash(doc, upstream_model, pool.prefix_chars) if pool.prefix_chars else None
    e, how = score.choose(view, pool, eps, now_ms, level == "sheddable", upstream_model, prefix)
    if e is None:
        if metrics:
            _COUNTERS(f"picker.{label(pool.cluster)}.metric.shed").increment()
        return None
    e.picks += 1
    if metrics:
        if e.counter is None:
            e.counter = Counter(metric(pool.cluster, e.addr, "picks"))
        e.counter.increment()
        if how == score.UNSCORED:
            _COUNTERS(f"picker.{label(pool.cluster)}.metric.unscored").increment()
    return e.addr


def route(pool: EndpointPicker, model: Any, doc: dict[str, Any], header: Callable[[str], str | None], now_ms: int,
          metrics: bool) -> str:
    """The endpoint for a client request; a sheddable one finding every endpoint saturated gets 429."""
    level = criticality(pool, model.name, header(pool.criticality_header) if pool.criticality_header else None)
    ep = pick(pool, model.name, model.upstream_model, doc, level, now_ms, metrics)
    if ep is None:
        raise GatewayError(429, f"every endpoint serving `{model.name}` is saturated; this request is sheddable, "
                                "retry later", "endpoints_saturated",
                           retry_after_s=max(1, -(-pool.scrape_interval_ms // 1000)))  # the next scrape may free one
    return ep


def add_destination(pickers: dict[str, EndpointPicker], model: Any, doc: dict[str, Any] | None,
                    headers: list[tuple[str, str]], now_ms: int, metrics: bool,
                    sheddable: bool = False) -> list[tuple[str, str]] | None:
    """``headers`` of a callout (fallback, mirror) to ``model``, with the picked endpoint when its cluster
    has a picker; None if the request is shed (sheddable, or ``sheddable=True`` as for mirrors)."""
    pool = pickers.get(model.cluster)
    if pool is None:
        return headers
    level = "sheddable" if sheddable else criticality(
        pool, model.name, next((v for k, v in headers if k == pool.criticality_header), None))
    ep = pick(pool, model.name, model.upstream_model, doc or {}, level, now_ms, metrics)
    return None if ep is None else [*headers, (pool.header, ep)]
