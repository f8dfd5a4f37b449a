"""Deployment material: Higress WasmPlugin CRs (CRD schema + plugin configuration), the stock Envoy configs, the OCI
image layout (build/oci.py), the Higress console spec and the kind e2e's prerequisite check."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from itertools import takewhile
from pathlib import Path
from typing import Any

import oci
import pytest
import yaml

from ai_gateway.config import parse
from e2e.kind import check
from e2e.validate import discover
from proxywasm import ConfigError, Fields
from proxywasm.rules import RuleSet

from .conftest import REPO, wasm_path

CRD_FILE = REPO.parent / "shared" / "higress" / "crds.yaml"
HIGRESS = sorted((REPO / "wasm-config" / "higress").glob("*.yaml"))
KIND = REPO / "e2e" / "kind"
CR_FILES = [*HIGRESS, KIND / "manifests.yaml"]
ENVOY = sorted((REPO / "wasm-config" / "envoy").glob("*.yaml"))
CONSOLE = REPO / "wasm-config" / "console"
SPEC = yaml.safe_load((CONSOLE / "spec.yaml").read_text())
SCHEMA = SPEC["spec"]["configSchema"]["openAPIV3Schema"]


# ------------------------------------------------------------------------------------ a small schema checker

TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}


def schema_errors(v: Any, s: dict, path: str = "", closed: bool = False) -> list[str]:
    """Errors of ``v`` against the OpenAPI v3 subset used by CRDs and Higress plugin specs. ``closed``: unknown
    properties are errors unless ``x-kubernetes-preserve-unknown-fields`` (CRDs: kubectl's strict validation);
    otherwise only under ``additionalProperties: false``."""
    where = path or "<root>"
    if v is None and s.get("nullable"):
        return []
    if "anyOf" in s:
        return [] if any(not schema_errors(v, a, path, closed) for a in s["anyOf"]) else [f"{where}: matches no anyOf"]
    t = s.get("type")
    if t and (not isinstance(v, TYPES[t]) or (t in ("integer", "number") and isinstance(v, bool))):
        return [f"{where}: expected {t}, got {type(v).__name__}"]
    errs = []
    if "enum" in s and v not in s["enum"]:
        errs.append(f"{where}: {v!r} not in {s['enum']}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if v < s.get("minimum", v) or v > s.get("maximum", v):
            errs.append(f"{where}: {v} out of range")
    if isinstance(v, str) and (len(v) < s.get("minLength", 0) or ("pattern" in s and not re.search(s["pattern"], v))):
        errs.append(f"{where}: {v!r} too short or not matching")
    if isinstance(v, list):
        if len(v) < s.get("minItems", 0) or (s.get("uniqueItems") and len(set(map(repr, v))) != len(v)):
            errs.append(f"{where}: too few or repeated items")
        errs += [e for i, item in enumerate(v) for e in schema_errors(item, s.get("items", {}), f"{path}[{i}]", closed)]
    if isinstance(v, dict):
        props = s.get("properties", {})
        errs += [f"{where}.{k}: required" for k in s.get("required", []) if k not in v]
        open_ = s.get("x-kubernetes-preserve-unknown-fields") or (not closed and s.get("additionalProperties") is not False)
        errs += [f"{path}.{k}: unknown field".lstrip(".") for k in v if k not in props and not open_]
        errs += [e for k, x in v.items() if k in props for e in schema_errors(x, props[k], f"{path}.{k}".lstrip("."), closed)]
    return errs


def schema_paths(s: dict, prefix: str = "") -> dict[str, dict]:
    """Every property of a schema by path (``models[].fallback.mode``)."""
    out = {}
    for k, p in s.get("properties", {}).items():
        path = f"{prefix}{k}"
        out[path] = p
        inner = p.get("items", {}) if p.get("type") == "array" else p
        out.update(schema_paths(inner, path + ("[]." if p.get("type") == "array" else ".")))
    return out


# ------------------------------------------------------------------------------------ Higress WasmPlugin CRs


@pytest.fixture(scope="module")
def crd() -> dict:
    if not CRD_FILE.exists():
        pytest.skip(f"{CRD_FILE} not found (shared/ sits beside the repository)")
    return yaml.safe_load(CRD_FILE.read_text())


def crd_errors(doc: dict, crd: dict) -> list[str]:
    version = crd["spec"]["versions"][0]
    errs = [] if doc.get("apiVersion") == f"{crd['spec']['group']}/{version['name']}" else ["apiVersion"]
    errs += [] if doc.get("kind") == crd["spec"]["names"]["kind"] else ["kind"]
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    return errs + schema_errors(body, version["schema"]["openAPIV3Schema"], closed=True)


def docs_of(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def plugins_of(path: Path) -> list[dict]:
    return [d for d in docs_of(path) if d["kind"] == "WasmPlugin"]


PLUGINS = [(f"{p.relative_to(REPO)}#{i}", d) for p in CR_FILES for i, d in enumerate(plugins_of(p))]


def as_plugin_config(spec: dict) -> dict:
    """The JSON Higress hands the plugin: defaultConfig plus matchRules as _rules_."""
    keys = {"ingress": "_match_route_", "domain": "_match_domain_", "service": "_match_service_"}
    rules = [{**{keys[k]: r[k] for k in keys if k in r}, **r.get("config", {})}
             for r in spec.get("matchRules", []) if not r.get("configDisable")]
    return {**spec.get("defaultConfig", {}), **({"_rules_": rules} if rules else {})}


def test_every_setup_has_a_wasmplugin() -> None:
    assert {p.name for p in HIGRESS} >= {"llmaz-fallback.yaml", "canary.yaml", "lora.yaml"}
    assert all(len(plugins_of(p)) == 1 for p in CR_FILES)


@pytest.mark.parametrize("name,doc", PLUGINS, ids=[n for n, _ in PLUGINS])
def test_wasmplugin_matches_the_crd(name: str, doc: dict, crd: dict) -> None:
    assert crd_errors(doc, crd) == []
    assert doc["metadata"]["namespace"] == "higress-system"


@pytest.mark.parametrize("name,doc", PLUGINS, ids=[n for n, _ in PLUGINS])
def test_wasmplugin_configs_parse(name: str, doc: dict) -> None:
    spec = doc["spec"]
    assert parse(spec["defaultConfig"]).enabled
    for rule in spec.get("matchRules", []):
        assert {"ingress", "domain", "service"} & set(rule), rule
        assert parse(rule["config"]).enabled  # a rule's config is a whole config
    rules = RuleSet.parse(as_plugin_config(spec), parse)  # what the plugin gets from Higress
    assert len(rules.rules) == len(spec.get("matchRules", []))


def test_setups_cover_urls_rules_and_phases() -> None:
    specs = [plugins_of(p)[0]["spec"] for p in HIGRESS]
    assert {s["url"].split("://")[0] for s in specs} >= {"oci", "file", "https"}
    assert {k for s in specs for r in s["matchRules"] for k in ("ingress", "domain", "service") if k in r} == {
        "ingress", "domain", "service"}
    assert all({"phase", "priority", "failStrategy"} <= set(s) for s in specs)
    llmaz = plugins_of(REPO / "wasm-config/higress/llmaz-fallback.yaml")[0]["spec"]["defaultConfig"]
    qwen = parse(llmaz).models["qwen2-1-5b"]
    assert qwen.cluster == "outbound|8080||qwen2-1-5b-lb.llmaz.svc.cluster.local"
    assert qwen.fallback.models == ("gemma-2-2b",)


def cluster_of(ns: str, backend: dict) -> str:
    svc = backend["service"]
    return f"outbound|{svc['port']['number']}||{svc['name']}.{ns}.svc.cluster.local"


@pytest.mark.parametrize("path", CR_FILES, ids=lambda p: p.name)
def test_ingresses_route_every_model_and_rules_name_real_routes(path: Path) -> None:
    docs = docs_of(path)
    spec = plugins_of(path)[0]["spec"]
    entries, by_model, hosts, services = set(), {}, set(), set()
    for d in (d for d in docs if d["kind"] == "Ingress"):
        ns, annotations = d["metadata"]["namespace"], d["metadata"].get("annotations", {})
        assert d["spec"]["ingressClassName"] == "higress"
        clusters = {cluster_of(ns, p["backend"]) for r in d["spec"]["rules"] for p in r["http"]["paths"]}
        hosts |= {r["host"] for r in d["spec"]["rules"] if "host" in r}
        services |= {c.split("||")[1] + ":" + c.split("|")[1] for c in clusters}
        model = annotations.get("higress.io/exact-match-header-x-ai-model")
        if model:
            by_model[model] = clusters
        else:
            entries.add((f"{ns}/{d['metadata']['name']}", *clusters))
    configs = [spec["defaultConfig"], *(r["config"] for r in spec.get("matchRules", []) if "config" in r)]
    for cfg in map(parse, configs):
        for m in cfg.models.values():
            # a per-model route sends it to its own cluster, or every entry route's backend already is that cluster
            assert by_model.get(m.name, {m.cluster}) == {m.cluster}, m.name
            assert m.name in by_model or all(e[1:] == (m.cluster,) for e in entries), m.name
    for rule in spec.get("matchRules", []):
        assert set(rule.get("ingress", [])) <= {e[0] for e in entries}
        assert set(rule.get("domain", [])) <= hosts
        assert set(rule.get("service", [])) <= services


def test_crd_check_catches_broken_crs(crd: dict) -> None:
    good = plugins_of(REPO / "wasm-config/higress/llmaz-fallback.yaml")[0]
    assert crd_errors(good, crd) == []
    for edit, expect in [(lambda s: s.update(phase="LATE"), "spec.phase"),
                         (lambda s: s.update(failStrategy="FAIL_SOMETIMES"), "spec.failStrategy"),
                         (lambda s: s.update(priority="high"), "spec.priority: expected integer"),
                         (lambda s: s.update(urll="oci://x"), "spec.urll: unknown field"),
                         (lambda s: s["matchRules"][0].update(ingres=["a/b"]), "spec.matchRules[0].ingres: unknown"),
                         (lambda s: s["matchRules"][0].update(domain="x.example.com"),
                          "spec.matchRules[0].domain: expected array")]:
        bad = copy.deepcopy(good)
        edit(bad["spec"])
        assert any(e.startswith(expect) for e in crd_errors(bad, crd)), expect
    bad = copy.deepcopy(good)
    bad["spec"]["defaultConfig"]["modles"] = bad["spec"]["defaultConfig"].pop("models")
    assert crd_errors(bad, crd) == []  # defaultConfig is free-form for the CRD: the plugin's parser catches it
    with pytest.raises(ConfigError, match="modles: unknown field"):
        parse(bad["spec"]["defaultConfig"])
    bad["spec"]["matchRules"][0]["config"]["aliases"][0]["targets"][0]["model"] = "qwen"
    with pytest.raises(ValueError, match=r"_rules_\[0\]: aliases\[0\].targets\[0\].model: unknown model 'qwen'"):
        RuleSet.parse(as_plugin_config({**bad["spec"], "defaultConfig": {}}), parse)


# ------------------------------------------------------------------------------------ stock Envoy configs


def inline_config(path: Path) -> str:
    """The plugin configuration: the YAML block scalar after ``value: |``, as text."""
    lines = path.read_text().split("value: |\n", 1)[1].splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    return "\n".join(takewhile(lambda x: not x.strip() or len(x) - len(x.lstrip()) >= indent, lines))


def wasm_filter(doc: dict) -> tuple[dict, dict]:
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (wasm,) = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    return hcm, wasm["typed_config"]["config"]


@pytest.mark.parametrize("path", ENVOY, ids=lambda p: p.name)
def test_envoy_config_loads_the_gateway(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    hcm, wasm = wasm_filter(doc)
    text = inline_config(path)
    assert json.loads(text) == json.loads(wasm["configuration"]["value"])
    cfg = parse(json.loads(text))
    assert cfg.enabled
    assert wasm["allow_on_headers_stop_iteration"] is True
    assert wasm["vm_config"]["code"]["local"]["filename"] == "dist/ai-gateway.wasm"
    assert wasm["vm_config"]["runtime"] == "envoy.wasm.runtime.v8"
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["route"]["cluster_header"] == cfg.route_header
    assert routes[0]["match"]["headers"] == [{"name": cfg.route_header, "present_match": True}]
    clusters = {c["name"] for c in doc["static_resources"]["clusters"]}
    assert {m.cluster for m in cfg.models.values()} <= clusters
    assert path.relative_to(REPO) in discover()  # so e2e/test_validate.py runs envoy --mode validate on it


def test_envoy_configs_show_each_feature() -> None:
    cfgs = {p.stem.removeprefix("ai-gateway-"): (yaml.safe_load(p.read_text()), parse(json.loads(inline_config(p))))
            for p in ENVOY}
    assert {"routing", "fallback", "mirroring", "key-pool", "metrics"} <= set(cfgs)
    assert len(cfgs["routing"][1].aliases) >= 2 and any(a.sticky_header for a in cfgs["routing"][1].aliases.values())
    assert any(m.fallback and m.fallback.mode == "RAND" for m in cfgs["fallback"][1].models.values())
    assert any(m.mirror for m in cfgs["mirroring"][1].models.values())
    doc, cfg = cfgs["key-pool"]
    (pooled,) = [m for m in cfg.models.values() if m.keys]
    (cluster,) = [c for c in doc["static_resources"]["clusters"] if c["name"] == pooled.cluster]
    assert cluster["transport_socket"]["typed_config"]["sni"] == pooled.authority
    doc, _ = cfgs["metrics"]
    assert {t["tag_name"] for t in doc["stats_config"]["stats_tags"]} >= {"ai_route", "ai_cluster", "ai_model", "ai_consumer"}
    hcm, _ = wasm_filter(doc)
    assert "%FILTER_STATE(wasm.ai_log:PLAIN)%" in json.dumps(hcm["access_log"])


# ------------------------------------------------------------------------------------ OCI image layout


def read_layout(out: Path) -> tuple[dict, list[tuple[dict, bytes]]]:
    """(manifest, [(descriptor, blob)] for config + layers), checking every digest and size on the way."""
    def blob(desc: dict) -> bytes:
        data = (out / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")).read_bytes()
        assert (desc["digest"], desc["size"]) == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        return data

    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((out / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    (desc,) = index["manifests"]
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    manifest = json.loads(blob(desc))
    assert manifest["mediaType"] == desc["mediaType"] and manifest["schemaVersion"] == 2
    parts = [(d, blob(d)) for d in [manifest["config"], *manifest["layers"]]]
    referenced = {d["digest"].removeprefix("sha256:") for d, _ in parts} | {desc["digest"].removeprefix("sha256:")}
    assert {p.name for p in (out / "blobs" / "sha256").iterdir()} == referenced  # no stray blobs
    return {**manifest, "tag": desc["annotations"]["org.opencontainers.image.ref.name"]}, parts


def plugin_wasm(layer: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        (member,) = tar.getmembers()
        assert member.name == "plugin.wasm" and member.mtime == 0
        return tar.extractfile(member).read()


FAKE_WASM = b"\0asm\x01\0\0\0" + bytes(range(256)) * 64


def test_oci_layout_is_valid(tmp_path: Path) -> None:
    (tmp_path / "m.wasm").write_bytes(FAKE_WASM)
    oci.build_layout(tmp_path / "m.wasm", tmp_path / "out", "2.0.0", CONSOLE)
    manifest, parts = read_layout(tmp_path / "out")
    assert manifest["tag"] == "2.0.0"
    (config, config_blob), *layers = parts
    assert config["mediaType"] == "application/vnd.module.wasm.config.v1+json"
    assert json.loads(config_blob)["config"]["root_ids"] == ["ai_gateway"]
    types = [d["mediaType"] for d, _ in layers]
    assert types == ["application/vnd.module.wasm.spec.v1+yaml", "application/vnd.module.wasm.doc.v1+markdown",
                     "application/vnd.module.wasm.doc.v1.ZH+markdown", "application/vnd.oci.image.layer.v1.tar+gzip"]
    for d, data in layers[:-1]:
        assert data == (CONSOLE / d["annotations"]["org.opencontainers.image.title"]).read_bytes()
    assert plugin_wasm(layers[-1][1]) == FAKE_WASM  # Higress reads plugin.wasm from the last layer


def test_oci_layout_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "m.wasm").write_bytes(FAKE_WASM)
    a = oci.build_layout(tmp_path / "m.wasm", tmp_path / "a", "1.0.0", CONSOLE)
    b = oci.build_layout(tmp_path / "m.wasm", tmp_path / "b", "1.0.0", CONSOLE)
    files = lambda d: {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}  # noqa: E731
    assert a == b and files(tmp_path / "a") == files(tmp_path / "b")
    (tmp_path / "m.wasm").write_bytes(FAKE_WASM + b"\0")
    assert oci.build_layout(tmp_path / "m.wasm", tmp_path / "a", "1.0.0", CONSOLE)["manifest"] != a["manifest"]
    (tmp_path / "x.wasm").write_bytes(b"MZ")
    with pytest.raises(SystemExit, match="not a WebAssembly module"):
        oci.build_layout(tmp_path / "x.wasm", tmp_path / "c", "1.0.0", None)


def test_oci_cli_prints_the_digests_of_the_built_gateway(tmp_path: Path) -> None:
    wasm = wasm_path("ai_gateway")
    r = subprocess.run([sys.executable, str(REPO / "build" / "oci.py"), "--out", str(tmp_path / "oci")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    printed = dict(re.findall(r"^(manifest digest|wasm sha256): +(\S+)$", r.stdout, re.M))
    assert printed["wasm sha256"] == hashlib.sha256(wasm.read_bytes()).hexdigest()
    manifest, parts = read_layout(tmp_path / "oci")
    assert printed["manifest digest"] == json.loads((tmp_path / "oci" / "index.json").read_text())["manifests"][0]["digest"]
    assert plugin_wasm(parts[-1][1]) == wasm.read_bytes()
    assert f"oras cp --from-oci-layout {tmp_path / 'oci'}:1.0.0 " in r.stdout
    assert manifest["tag"] == SPEC["info"]["version"] == "1.0.0"  # the default tag is the console spec's version
    assert re.search(r'^oci tag="1.0.0": \(build "ai_gateway"\)\n +python build/oci.py --tag', (REPO / "justfile").read_text(), re.M)


# ------------------------------------------------------------------------------------ Higress console spec


def test_console_spec_has_higress_metadata(crd: dict) -> None:
    assert SPEC["apiVersion"] == "1.0.0"
    info = SPEC["info"]
    assert {"category", "name", "title", "description", "iconUrl", "version", "contact"} <= set(info)
    assert info["category"] in {"auth", "security", "protocol", "flow-control", "flow-monitor", "custom"}
    phases = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["phase"]
    assert SPEC["spec"]["phase"] in phases["enum"] and isinstance(SPEC["spec"]["priority"], int)
    assert SCHEMA["type"] == "object"


def validator_fields(doc: dict, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The fields ``parse`` reads (so accepts) while parsing ``doc``, as schema paths."""
    seen: set[str] = set()
    original = Fields._get

    def spy(self: Fields, key: str, *args: Any) -> Any:
        seen.add(re.sub(r"\[\d+\]", "[]", self.path(key)))
        return original(self, key, *args)

    monkeypatch.setattr(Fields, "_get", spy)
    parse(doc)
    monkeypatch.undo()
    return seen


# every object the validator knows, present once: it then reads every field it accepts
FULL = {"models": [{"name": "a", "cluster": "ca", "fallback": {"models": ["b"]}, "mirror": {"model": "b"},
                    "api_keys": {"keys": ["k1"], "probe": {}},
                    "endpoint_picker": {"endpoints": ["10.0.0.1:8000"], "weights": {}}}, {"name": "b", "cluster": "cb"}],
        "aliases": [{"name": "al", "targets": [{"model": "a"}]}], "fallback": {},
        "consumers": [{"name": "c", "keys": ["sk-0123456789"], "models": ["a"],
                       "limits": [{"requests": 1, "per": "second"}, {"tokens": 1, "per": "minute"},
                                  {"input_tokens": 1, "per": "hour"}, {"output_tokens": 1, "per": "day"}]}],
        "auth": {"allow": ["c"]},
        "limits": [{"requests": 1, "per": "second"}, {"tokens": 1, "per": "minute"},
                   {"input_tokens": 1, "per": "hour"}, {"output_tokens": 1, "per": "day"}],
        "store": {"redis": {"transport": "webdis", "cluster": "w"}},
        "admin": {},
        "cache": {"ttl_s": 1, "store": {"redis": {"transport": "webdis", "cluster": "w"}}},
        "content_routing": [{"name": "auto", "default": "a", "rules": [{"model": "b", "tools": True}],
                             "classifier": {"model": "a", "categories": {"x": "b"}}}]}


def test_schema_has_exactly_the_fields_the_validator_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = validator_fields(FULL, monkeypatch)
    paths = set(schema_paths(SCHEMA))
    # top-level fallback holds defaults the parser merges into each model's fallback (all but "models")
    fields |= {"fallback." + f.split(".")[-1] for f in fields if f.startswith("models[].fallback.")} - {
        "fallback.models", "fallback.cluster"}
    assert fields == paths
    for key in schema_paths(SCHEMA["properties"]["fallback"]):
        parse({**FULL, "fallback": {key: SCHEMA["properties"]["fallback"]["properties"][key].get("default", 3)}})
    with pytest.raises(ConfigError):
        parse({**FULL, "fallback": {"models": ["b"]}})


def put(doc: dict, path: str, value: Any) -> dict:
    doc = copy.deepcopy(doc)
    *parents, leaf = path.replace("[]", ".0").split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[leaf] = value
    return doc


def test_schema_defaults_are_the_validator_defaults() -> None:
    defaults = {p: s["default"] for p, s in schema_paths(SCHEMA).items() if "default" in s}
    assert len(defaults) >= 25
    for path, value in defaults.items():
        base = FULL if "." in path else {}
        assert parse(put(base, path, value)) == parse(base), path


def required_paths(s: dict, prefix: str = "") -> set[str]:
    out = {prefix + r for r in s.get("required", [])}
    for k, p in s.get("properties", {}).items():
        array = p.get("type") == "array"
        out |= required_paths(p.get("items", {}) if array else p, prefix + k + ("[]." if array else "."))
    return out


def test_schema_documents_every_field() -> None:
    dynamic = {"models[].upstream_model", "models[].fallback.max_attempts", "fallback.max_attempts",
               # absent means "all" / "not this kind of limit": no value stands for that
               "consumers[].models", "auth.allow", "consumers[].limits", "limits",
               *(f"{scope}limits[].{kind}" for scope in ("", "consumers[].")
                 for kind in ("requests", "tokens", "input_tokens", "output_tokens")),
               # absent means "either": a request with or without tools / images
               "content_routing[].rules[].tools", "content_routing[].rules[].images", "content_routing[].rules"}
    required = required_paths(SCHEMA)
    assert {"models[].name", "models[].cluster", "models[].api_keys.keys", "aliases[].targets[].model"} <= required
    for path, s in schema_paths(SCHEMA).items():
        assert s.get("title") and s.get("description"), path
        assert "default" in s or s["type"] == "object" or path in dynamic | required, path


def readme_table_fields(text: str, after: str, prefix: str = "") -> set[str]:
    """Field paths in the first column of the first markdown table after ``after``
    (``a.b`` / ``.c`` and ``a.b`` / ``c`` both name ``a.c`` too)."""
    lines = text.split(after, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    out = set()
    for row in list(takewhile(lambda line: line.startswith("|"), lines[start:]))[2:]:
        first, *more = (prefix + f for f in re.findall(r"`([^`]+)`", row.split("|")[1]))
        parent = first.rsplit(".", 1)[0]
        out |= {first} | {parent + ("" if m.startswith(prefix + ".") else ".") + m.removeprefix(prefix) for m in more}
    return {f.removesuffix("[]") for f in out}


def leaves(paths: dict[str, dict]) -> set[str]:
    return {p for p, s in paths.items() if s["type"] != "object" and s.get("items", {}).get("type") != "object"}


def test_readme_tables_list_the_schema_fields() -> None:
    paths = schema_paths(SCHEMA)
    root = (REPO / "README.md").read_text()
    main = readme_table_fields(root, "### Configuration reference")
    pool = readme_table_fields(root, "### Upstream API-key pools", "models[].api_keys.")
    console = readme_table_fields((CONSOLE / "README.md").read_text(), "## Configuration fields")
    # the Chinese console README lists the same fields
    assert readme_table_fields((CONSOLE / "README_ZH.md").read_text(), "## 配置字段") == console
    assert main - set(paths) == {"_rules_"}  # Higress builds _rules_ from matchRules
    assert pool == {p for p in leaves(paths) if p.startswith("models[].api_keys.")}
    assert console <= set(paths)
    # the top-level fallback's fields are described in its own row
    assert leaves(paths) - console == {"fallback.on_status", "fallback.mode", "fallback.max_attempts", "fallback.timeout_ms",
                                       "fallback.first_byte_timeout_ms"}


def readme_examples() -> list[tuple[str, dict]]:
    out = []
    for name in ("README.md", "README_ZH.md"):
        blocks = re.findall(r"```yaml\n(.*?)```", (CONSOLE / name).read_text(), re.S)
        out += [(f"{name}#{i}", yaml.safe_load(b)) for i, b in enumerate(blocks)]
    root = dict(re.findall(r"<!-- ai-gateway-config: (\S+) -->\n```json\n(.*?)```", (REPO / "README.md").read_text(), re.S))
    return out + [(f"README.md:{k}", json.loads(v)) for k, v in sorted(root.items())] + [("spec example", SCHEMA["example"])]


@pytest.mark.parametrize("name,doc", readme_examples(), ids=[n for n, _ in readme_examples()])
def test_readme_examples_match_the_schema_and_parse(name: str, doc: dict) -> None:
    assert schema_errors(doc, SCHEMA) == []
    assert parse(doc).enabled


def test_console_readmes_are_translations_with_the_same_examples() -> None:
    examples = readme_examples()
    en = [d for n, d in examples if n.startswith("README.md#")]
    zh = [d for n, d in examples if n.startswith("README_ZH.md#")]
    assert len(en) >= 4 and en == zh
    assert re.search(r"[\u4e00-\u9fff]", (CONSOLE / "README_ZH.md").read_text())


def test_schema_rejects_what_the_validator_rejects() -> None:
    good = SCHEMA["example"]
    for edit, expect in [(lambda d: d.update(modles=[]), "modles: unknown field"),
                         (lambda d: d["models"][0]["fallback"].update(mode="ROUND"), "models[0].fallback.mode"),
                         (lambda d: d["models"][1].update(cluster=7), "models[1].cluster: expected string"),
                         (lambda d: d["aliases"][0]["targets"][0].update(weight=-1), "aliases[0].targets[0].weight"),
                         (lambda d: d.update(ai_log="syslog"), "ai_log"),
                         (lambda d: d["models"][0]["fallback"].update(on_status=["6xx"]), "models[0].fallback.on_status")]:
        bad = copy.deepcopy(good)
        edit(bad)
        assert any(e.startswith(expect) for e in schema_errors(bad, SCHEMA)), expect
        with pytest.raises(ConfigError):
            parse(bad)


# ------------------------------------------------------------------------------------ kind e2e


def run_prereqs(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([shutil.which("bash") or "/bin/bash", str(KIND / "run.sh"), "--check-prereqs"], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env=env)


def test_kind_run_says_it_skips_here() -> None:
    missing = [t for t in ("docker", "kind", "helm", "kubectl") if not shutil.which(t)]
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode:
        missing.append("a running Docker engine")
    r = run_prereqs()
    assert r.returncode == 0, r.stderr
    if missing:
        assert r.stdout.startswith("kind e2e: skipping, missing: ")
        assert all(m in r.stdout for m in missing)
    else:
        assert "all prerequisites present" in r.stdout


@pytest.mark.parametrize("tools,engine,expect", [
    ((), False, "skipping, missing: docker, kind, helm, kubectl"),
    (("docker", "kind", "helm", "kubectl"), False, "skipping, missing: a running Docker engine"),
    (("docker", "kubectl"), True, "skipping, missing: kind, helm ("),
    (("docker", "kind", "helm", "kubectl"), True, "all prerequisites present")])
def test_kind_prereq_detection(tmp_path: Path, tools: tuple[str, ...], engine: bool, expect: str) -> None:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for util in ("paste", "sed", "timeout", "dirname"):
        (bin_ / util).symlink_to(shutil.which(util))
    calls = tmp_path / "calls"
    for tool in tools:  # fakes that record their arguments; `docker info` fails unless the engine "runs"
        fails = tool == "docker" and not engine
        (bin_ / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {calls}\nexit {int(fails)}\n")
        (bin_ / tool).chmod(0o755)
    r = run_prereqs({"PATH": str(bin_), "HOME": str(tmp_path)})
    assert r.returncode == 0 and expect in r.stdout, r.stdout + r.stderr
    assert (calls.read_text().split("\n") if calls.exists() else [""]) == (
        ["docker info", ""] if "docker" in tools else [""])  # --check-prereqs creates and runs nothing


def test_kind_workload_matches_the_checker() -> None:
    docs = docs_of(KIND / "manifests.yaml")
    services = {d["metadata"]["name"]: d["spec"]["ports"][0]["port"] for d in docs if d["kind"] == "Service"}
    assert services == {"qwen2-1-5b-lb": 8080, "gemma-2-2b-lb": 8080}
    cfg = parse(plugins_of(KIND / "manifests.yaml")[0]["spec"]["defaultConfig"])
    assert set(cfg.models) == {check.QWEN, check.GEMMA} and set(cfg.aliases) == {check.CANARY}
    assert cfg.models[check.QWEN].fallback.models == (check.GEMMA,)
    run_sh = (KIND / "run.sh").read_text()
    assert plugins_of(KIND / "manifests.yaml")[0]["spec"]["url"] == "__PLUGIN_URL__" and "__PLUGIN_URL__" in run_sh
    copied = re.findall(r"^COPY (.+) \S+/$", (KIND / "Dockerfile").read_text(), re.M)
    for src in " ".join(copied).split():
        assert f'"$REPO/{src}"' in run_sh, src  # run.sh puts every file the Dockerfile copies in the build context
    assert os.access(KIND / "run.sh", os.X_OK) and run_sh.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in run_sh
