"""Active probes of ejected API keys: on a tick, one worker (by lease) asks the upstream
with each ejected key; a 2xx answer puts the key back before its cooldown ends. A key the
provider took out with a 429 and ``Retry-After`` is not probed: it comes back when that time is up."""

from __future__ import annotations

from proxywasm import CalloutResponse, HostError, LogLevel
from proxywasm import hostcalls as hc

from .attempt import pool_of
from .config import Config, Model
from .lease import VM_TOKEN
from .providers import PAIRS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from proxywasm import RootContext


def probe_period_ms(configs: list[Config]) -> int:
    periods = [m.keys.probe.interval_ms for c in configs for m in c.models.values() if m.keys and m.keys.probe]
    return min(periods) if periods else 0


def probe_keys(root: RootContext, configs: list[Config]) -> None:
    now_ms = hc.now_ms()
    seen: set[str] = set()
    for cfg in configs:
        for model in cfg.models.values():
            if model.keys is None or model.keys.probe is None or model.name in seen:
                continue
            seen.add(model.name)
            pool = pool_of(model)
            if not pool.take_probe_lease(VM_TOKEN, now_ms):
                continue  # another worker probes this round
            for idx, rec in enumerate(pool.state()):
                if rec[0] > now_ms and not rec[3]:  # a provider's Retry-After beats the probe
                    _probe(root, model, idx)


def _probe(root: RootContext, model: Model, idx: int) -> None:
    keys = model.keys
    assert keys is not None and keys.probe is not None
    pool = pool_of(model)
    headers = [(":method", "GET"), (":path", keys.probe.path), (":authority", model.authority or model.cluster),
               pool.credential(idx)]
    if model.provider is not None:  # the provider's own headers (e.g. Anthropic's anthropic-version) go along
        headers += PAIRS[model.provider.kind][0].headers(model.provider)

    def done(resp: CalloutResponse) -> None:
        if 200 <= resp.status < 300:
            pool.restore(idx)

    try:
        root.http_call(model.cluster, headers, b"", callback=done, timeout_ms=keys.probe.timeout_ms)
    except HostError as e:
        hc.log(LogLevel.WARN, f"probe of a {model.name} key failed to start: {e}")
