"""The AI gateway plugin: model routing, weighted aliases, fallback and mirroring for
OpenAI-compatible inference servers (vLLM, SGLang, llama.cpp, hosted providers)."""

from __future__ import annotations

from proxywasm import RootContext, set_root_context

from . import config
from .stream import GatewayStream


class GatewayRoot(RootContext):
    http_context = GatewayStream

    def parse_config(self, doc: dict) -> config.Config:
        return config.parse(doc)


set_root_context(GatewayRoot)
