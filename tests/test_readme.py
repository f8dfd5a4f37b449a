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


def _abi_table() -> list[list[str]]:
    """The rows of "The ABI, part by part": [part, ABI, SDK, example, tested in]."""
    section = (REPO / "README.md").read_text().split("### The ABI, part by part\n", 1)[1].split("\n#", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| part ", "| --- "))]
    assert all(len(r) == 5 for r in rows), rows
    return rows


def _sdk_name(dotted: str) -> object:
    """``HttpContext.http_call``, ``shared.update``, ``streams.Headers.get``: an attribute path from proxywasm (its
    submodules imported on the way)."""
    import importlib

    obj: object = importlib.import_module("proxywasm")
    for part in dotted.split("."):
        if not hasattr(obj, part) and hasattr(obj, "__path__"):
            importlib.import_module(f"{obj.__name__}.{part}")  # type: ignore[attr-defined]
        obj = getattr(obj, part)
    return obj


def test_readme_abi_table_names_what_exists() -> None:
    """Each part of the ABI: its host calls and callbacks are in proxywasm.abi, its SDK calls exist, its example uses
    one of them, and the files and tests it names are there."""
    from proxywasm import abi

    abi_names = {f.name for f in abi.IMPORTS} | {e.name for e in abi.EXPORTS}
    rows = _abi_table()
    parts = {r[0].split(" (")[0] for r in rows}
    assert {"headers", "bodies", "trailers", "properties", "metrics", "shared data", "shared queues", "HTTP callouts",
            "root-owned callouts", "gRPC unary calls", "gRPC streams", "ticks", "local responses", "logging",
            "foreign functions", "Redis", "plugin configuration", "VM and context lifecycle"} <= parts
    named_abi: set[str] = set()
    for part, abi_cell, sdk_cell, example, tested in rows:
        calls = re.findall(r"`([^`]+)`", abi_cell)
        assert all(c in abi_names for c in calls if c.startswith("proxy_")), (part, calls)
        named_abi |= set(calls)
        sdk = re.findall(r"`([^`]+)`", sdk_cell)
        assert sdk, part
        for name in sdk:
            if name != "_rules_":  # a config key, not a name
                _sdk_name(name)  # AttributeError, ImportError: the README names what is not there
        (path,) = re.findall(r"`([^`]+)`", example)
        source = (REPO / path).read_text()
        assert any(re.search(rf"\b{n.rsplit('.', 1)[-1]}\b", source) for n in sdk), (part, path)
        tests = re.findall(r"`([^`]+)`", tested)
        assert tests, part
        for t in tests:
            file, test = t.split("::")
            assert re.search(rf"^def {test}\(", (REPO / file).read_text(), re.M), (part, t)
    assert abi_names - named_abi <= {"proxy_get_buffer_status", "proxy_get_header_map_size"}  # the rest is covered


def test_files_named_in_docs_and_comments_exist() -> None:
    """Every repository path (``plugin/…``, ``build/…``, ``tests/…``, ``e2e/…``, ``bench/…``, ``wasm-config/…``) that a
    source file, README or config names exists: a file renamed or removed takes its mentions along."""
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    path = re.compile(r"(?<![\w./-])((?:plugin|build|tests|e2e|bench|wasm-config)/[\w./-]*[\w/])(?![{<*\w-]|\.[{\w])")
    missing = []
    for name in files:
        if not name.endswith((".py", ".c", ".md", ".yaml", ".yml", ".lua", ".toml")) or not (REPO / name).is_file():
            continue
        for n, line in enumerate((REPO / name).read_text().splitlines(), 1):
            for m in path.findall(line):
                named = REPO / m.rstrip(".")
                if not named.exists() and not any(named.parent.glob(named.name + ".*")):  # a stem: results/x.{md,json}
                    missing.append(f"{name}:{n}: {m}")
    assert not missing, "\n".join(missing)
