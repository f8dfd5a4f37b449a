"""Requests the gateway sends itself (fallback attempts, mirrors) through HTTP callouts."""

from __future__ import annotations

from proxywasm import hostcalls as hc

from .attempt import Attempt
from .config import Config, Model
from .picker import add_destination

TYPE_CHECKING = False
if TYPE_CHECKING:
    from proxywasm import HttpContext

# Not forwarded on a callout: Envoy frames the body itself; the rest is per-hop.
_DROP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade",
                   "expect", "proxy-connection", "x-envoy-expected-rq-timeout-ms", "x-envoy-attempt-count"})
MIRROR_TIMEOUT_MS = 60_000


def callout_headers(request: list[tuple[str, str]], attempt: Attempt, cfg: Config) -> list[tuple[str, str]]:
    """The request headers as sent upstream before, re-addressed as ``attempt`` says (a callout's list)."""
    drop = _DROP | {cfg.route_header, cfg.model_header, *cfg.picker_headers} | attempt.drop
    drop |= {k for k, _ in attempt.headers}
    return [*((k, v) for k, v in request if k not in drop), *attempt.headers]


def mirror(stream: HttpContext, model: Model, headers: list[tuple[str, str]], body: bytes, source: str) -> None:
    """Send a copy to ``model`` and forget it: the call belongs to the root context, so it
    neither delays the client's stream nor is cancelled when that stream ends. A model with an
    endpoint picker gets a pod like a sheddable request: no copy when every pod is saturated."""
    cfg: Config = stream.config
    if cfg.pickers:
        picked = add_destination(cfg.pickers, model, None, headers, hc.now_ms(),
                                 cfg.metrics, sheddable=True)
        if picked is None:
            return
        headers = picked
    stream.http_call_as_root(model.cluster, [*headers, ("x-ai-mirror-of", source)], body,
                             timeout_ms=MIRROR_TIMEOUT_MS)
