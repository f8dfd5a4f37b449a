"""The README's configuration examples are real: each parses and routes a request."""

from __future__ import annotations

import json
import re

import pytest

from ai_gateway.config import parse

from .conftest import REPO
from .gateway import chat, chat_body

EXAMPLES = dict(re.findall(r"<!-- ai-gateway-config: (\S+) -->\n```json\n(.*?)```", (REPO / "README.md").read_text(), re.S))


def test_readme_has_examples() -> None:
    assert {"demo", "lora-canary", "fallback", "consumers", "providers"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_routes_every_model(name: str, make_host) -> None:
    doc = json.loads(EXAMPLES[name])
    cfg = parse(doc)
    h = make_host("ai_gateway")
    assert h.start(doc)
    headers = {"x-user-id": "u1"}
    if cfg.consumers is not None:  # the example's first consumer allowed every model, by its key in clear
        first = next(c for c in doc["consumers"] if "models" not in c and not c["keys"][0].startswith("sha256:"))
        headers["authorization"] = "Bearer " + first["keys"][0]
    for model in [*cfg.models, *cfg.aliases]:
        s = chat(h, chat_body(model), headers)
        assert s.local_response is None
        routed = cfg.models[s.request_header("x-ai-model")]
        assert s.request_header("x-ai-upstream") == routed.cluster
        sent = json.loads(s.request_body)
        if routed.provider is None or routed.provider.kind == "azure-openai":  # Azure: the deployment's in the path
            assert sent["model"] == routed.upstream_model
        elif routed.provider.kind == "anthropic":
            assert sent["model"] == routed.provider.model
        else:
            assert f"/models/{routed.upstream_model}:" in s.request_header(":path") and "contents" in sent


def test_demo_example_is_the_shipped_envoy_config() -> None:
    yaml = (REPO / "wasm-config" / "envoy" / "ai-gateway.yaml").read_text()
    block = yaml.split("value: |\n", 1)[1].split("vm_config:", 1)[0]
    assert json.loads(block) == json.loads(EXAMPLES["demo"])
