"""Requests the gateway sends itself (fallback attempts, mirrors) through HTTP callouts."""

from __future__ import annotations

from proxywasm import hostcalls as hc

from .config import Config, Model
from .picker import add_destination

TYPE_CHECKING = False
if TYPE_CHECKING:
    from proxywasm import HttpContext

# Not forwarded on a callout: Envoy frames the body itself; the rest is per-hop.
_DROP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade",
                   "expect", "proxy-connection", "x-envoy-expected-rq-timeout-ms", "x-envoy-attempt-count"})
MIRROR_TIMEOUT_MS = 60_000


def credential_headers(model: Model | None) -> frozenset[str]:
    """Headers that carry an upstream credential for ``model`` (its pool's key)."""
    return frozenset({"authorization", model.keys.header}) if model and model.keys else frozenset()


def callout_headers(request: list[tuple[str, str]], model: Model, cfg: Config, source: Model | None = None,
                    credential: tuple[str, str] | None = None) -> list[tuple[str, str]]:
    """The request headers as sent to ``source``, re-addressed to ``model``.

    ``source``'s pool key is never copied to another request; ``credential`` is ``model``'s.
    """
    drop = _DROP | {cfg.route_header, cfg.model_header, *cfg.picker_headers} | credential_headers(source)
    if model.keys is not None and not model.keys.forward_client_credential:
        drop |= credential_headers(model)  # as on the direct path: the client's credential stays here
    if credential:
        drop |= {credential[0]}
    out = [(k, v) for k, v in request if k not in drop and not (k == ":authority" and model.authority)]
    if model.authority:
        out.append((":authority", model.authority))
    out += [(cfg.route_header, model.cluster), (cfg.model_header, model.name)]
    if credential:
        out.append(credential)
    return out


def mirror(stream: HttpContext, model: Model, headers: list[tuple[str, str]], body: bytes, source: str) -> None:
    """Send a copy to ``model`` and forget it: the call belongs to the root context, so it
    neither delays the client's stream nor is cancelled when that stream ends. A model with an
    endpoint picker gets a pod like a sheddable request: no copy when every pod is saturated."""
    cfg: Config = stream.config
    if cfg.pickers:
        picked = add_destination(cfg.pickers, model, None, headers, hc.get_current_time_ns() // 1_000_000,
                                 cfg.metrics, sheddable=True)
        if picked is None:
            return
        headers = picked
    stream.http_call_as_root(model.cluster, [*headers, ("x-ai-mirror-of", source)], body,
                             timeout_ms=MIRROR_TIMEOUT_MS)
