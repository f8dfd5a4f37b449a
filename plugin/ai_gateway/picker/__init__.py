"""Load-aware endpoint picking from vLLM metrics, inside the plugin (the Gateway API inference
extension's endpoint picker protocol): the gateway sets ``x-gateway-destination-endpoint: ip:port``
and an Envoy ORIGINAL_DST cluster with ``use_http_header`` connects to that pod.

``config`` (``models[].endpoint_picker``, ``models[].criticality``), ``promtext`` (reading
``/metrics``), ``scrape`` (one worker per round, on ticks), ``state`` (shared data + per-VM view),
``score`` (the documented score and the rules for stale, down and saturated endpoints),
``affinity`` (prompt-prefix affinity learned from the picker's own routing). The functions here are the
gateway's hooks: ``route`` picks for a client request and ``finished`` is told when it ended (the picker
counts its own requests in flight per pod).
"""

from __future__ import annotations

from proxywasm import Counter, MetricCache

from ..errors import GatewayError
from ..metric_names import endpoint_metric, picker_metric
from . import score, state
from .affinity import chain
from .config import EndpointPicker
from .scrape import period_ms, scrape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["EndpointPicker", "add_destination", "finished", "period_ms", "pick", "scrape"]

_COUNTERS = MetricCache(Counter)


def criticality(picker: EndpointPicker, model: str, header_value: str | None) -> str:
    """The request's header (critical | standard | sheddable, any case) wins over the model's default."""
    if header_value:
        v = header_value.strip().lower()
        if v in ("critical", "standard", "sheddable"):
            return v
    return picker.criticality.get(model, "standard")


def _endpoints(picker: EndpointPicker) -> list[state.Endpoint]:
    eps = picker.states
    if eps is None:
        view = picker.view = state.view_of(picker.cluster, max(1, min(50, picker.scrape_interval_ms // 4)))
        eps = picker.states = [view.endpoint(a) for a in picker.endpoints]
    return eps


def pick(picker: EndpointPicker, model: str, upstream_model: str, doc: dict[str, Any], level: str, now_ms: int,
         metrics: bool) -> state.Endpoint | None:
    """The endpoint for a request to ``model`` on ``picker``; None: shed it."""
    eps = _endpoints(picker)
    view = picker.view
    view.refresh(now_ms)
    prefix = chain(doc, upstream_model, picker.prefix_chars) if picker.prefix_chars else None
    credit = (view.prefixes.credit(*prefix, (1 << len(view.endpoints)) - 1)
              if prefix is not None and picker.weights.prefix > 0 else None)
    e, how = score.choose(view, picker, eps, now_ms, level == "sheddable", upstream_model, credit)
    if e is None:
        if metrics:
            _COUNTERS(picker_metric(picker.cluster, "shed")).increment()
        return None
    e.picks += 1
    if prefix is not None:
        view.prefixes.sent(prefix[0], e.bit)
    if metrics:
        if e.counter is None:
            e.counter = Counter(endpoint_metric(picker.cluster, e.addr, "picks"))
        e.counter.increment()
        if how == score.UNSCORED:
            _COUNTERS(picker_metric(picker.cluster, "unscored")).increment()
    return e


def started(e: state.Endpoint, model: str) -> None:
    """A client request to ``model`` went to ``e``: it counts as in flight there until ``finished``."""
    e.inflight += 1
    if e.model and model != e.model:  # an adapter (the pod reported its base model): for adapter affinity
        e.adapters[model] = e.adapters.get(model, 0) + 1
        recent = e.recent
        if model in recent:
            recent.remove(model)
        recent.append(model)
        if len(recent) > score.RECENT_ADAPTERS:
            del recent[0]


def finished(e: state.Endpoint, model: str) -> None:
    """The request ``started`` on ``e`` ended (answered, failed, cut off or reset)."""
    e.inflight -= 1
    e.done += 1
    n = e.adapters.get(model)
    if n is not None:
        if n > 1:
            e.adapters[model] = n - 1
        else:
            del e.adapters[model]


def route(picker: EndpointPicker, model: Any, doc: dict[str, Any], header: Callable[[str], str | None], now_ms: int,
          metrics: bool) -> state.Endpoint:
    """The endpoint for a client request (in flight there until ``finished``); a sheddable one finding every
    endpoint saturated gets 429."""
    level = criticality(picker, model.name, header(picker.criticality_header) if picker.criticality_header else None)
    ep = pick(picker, model.name, model.upstream_model, doc, level, now_ms, metrics)
    if ep is None:
        raise GatewayError(429, f"every endpoint serving `{model.name}` is saturated; this request is sheddable, "
                                "retry later", "endpoints_saturated",
                           retry_after_s=max(1, -(-picker.scrape_interval_ms // 1000)))  # the next scrape may free one
    started(ep, model.upstream_model)
    return ep


def add_destination(pickers: dict[str, EndpointPicker], model: Any, doc: dict[str, Any] | None,
                    headers: list[tuple[str, str]], now_ms: int, metrics: bool,
                    sheddable: bool = False) -> list[tuple[str, str]] | None:
    """``headers`` of a callout (fallback, mirror) to ``model``, with the picked endpoint when its cluster
    has a picker; None if the request is shed (sheddable, or ``sheddable=True`` as for mirrors)."""
    picker = pickers.get(model.cluster)
    if picker is None:
        return headers
    level = "sheddable" if sheddable else criticality(
        picker, model.name, next((v for k, v in headers if k == picker.criticality_header), None))
    ep = pick(picker, model.name, model.upstream_model, doc or {}, level, now_ms, metrics)
    return None if ep is None else [*headers, (picker.header, ep.addr)]
