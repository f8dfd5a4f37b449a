"""The AI gateway plugin: model routing, weighted aliases, fallback and mirroring for
OpenAI-compatible inference servers (vLLM, SGLang, llama.cpp, hosted providers)."""

from __future__ import annotations

from proxywasm import RootContext, set_root_context
from proxywasm import hostcalls as hc

from . import config, observe, picker, retries
from .consumers.config import check_host
from .probe import probe_keys, probe_period_ms
from .stream import GatewayStream


class GatewayRoot(RootContext):
    http_context = GatewayStream

    def parse_config(self, doc: dict) -> config.Config:
        cfg = config.parse(doc)
        # the "higress" Redis transport needs the Higress build
        check_host(cfg.consumers.store if cfg.consumers is not None else None)
        check_host(cfg.cache.store if cfg.cache is not None else None, "cache.store")
        return cfg

    def configs(self) -> list[config.Config]:
        rules = self.rules
        if rules is None:
            return []
        return [c for c in (rules.global_config, *(r.config for r in rules.rules)) if c is not None]

    probe_ms = 0  # key probes' period
    next_probe_ms = 0
    pickers: list = []  # every config's endpoint pickers (scraped on ticks)
    # every config's routing, model and endpoint headers (no configuration: the defaults)
    strip_headers: tuple = ("x-ai-attempt-ticket", "x-ai-model", "x-ai-upstream", "x-gateway-destination-endpoint")

    def on_config_loaded(self) -> None:
        configs = self.configs()
        if any(c.attempt_filter for c in configs):  # the attempt filter: it addresses Envoy's retries in this VM,
            retries.IN_VM[0] = True  # and has no settings of its own (VM-wide ones are the router-level filter's)
            return
        union = tuple(sorted({n for c in configs for n in c.strip_headers}))
        for c in configs:  # _rules_ with other header names: each configuration strips every one of them
            if c.strip_headers != union:
                c.strip_headers = union
                c.request_headers = tuple(sorted({*c.request_headers, *(n.encode() for n in union)}))
        self.strip_headers = union or GatewayRoot.strip_headers
        observe.MAX_CONSUMERS = max([c.max_consumers for c in configs] or [observe.MAX_CONSUMERS])
        self.probe_ms = probe_period_ms(configs)
        self.pickers = [p for c in configs for p in c.pickers.values()]
        period = min(p for p in (self.probe_ms, picker.period_ms(self.pickers), 1 << 30) if p)
        if period < 1 << 30:
            self.set_tick_period_ms(period)

    def on_tick(self) -> None:
        now_ms = hc.now_ms()
        if self.probe_ms and now_ms >= self.next_probe_ms:
            self.next_probe_ms = now_ms + self.probe_ms - self.probe_ms // 4  # the tick may be a little early
            probe_keys(self, self.configs())
        if self.pickers:
            picker.scrape(self, self.pickers, now_ms)


set_root_context(GatewayRoot)
