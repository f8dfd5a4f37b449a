"""The AI gateway plugin: model routing, weighted aliases, fallback and mirroring for
OpenAI-compatible inference servers (vLLM, SGLang, llama.cpp, hosted providers)."""

from __future__ import annotations

from proxywasm import RootContext, set_root_context

from . import config
from .probe import probe_keys, probe_period_ms
from .stream import GatewayStream


class GatewayRoot(RootContext):
    http_context = GatewayStream

    def parse_config(self, doc: dict) -> config.Config:
        return config.parse(doc)

    def configs(self) -> list[config.Config]:
        rules = self.rules
        if rules is None:
            return []
        return [c for c in (rules.global_config, *(r.config for r in rules.rules)) if c is not None]

    def on_config_loaded(self) -> None:
        period = probe_period_ms(self.configs())
        if period:
            self.set_tick_period_ms(period)

    def on_tick(self) -> None:
        probe_keys(self, self.configs())


set_root_context(GatewayRoot)
