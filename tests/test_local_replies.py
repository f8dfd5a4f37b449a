"""Envoy's own error replies as OpenAI-style JSON, and path normalisation, in every shipped configuration.

The HTTP connection manager settings (``local_reply_config`` mappers, ``merge_slashes``, ``normalize_path``,
``path_with_escaped_slashes_action``) are the same in every wasm-config/envoy/*.yaml and in the Higress
EnvoyFilter that merges them into Higress's gateway. e2e/test_validate.py runs ``envoy --mode validate`` on the
Envoy configs and e2e/test_ai_errors.py drives the replies with the official openai client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import REPO

ENVOY = sorted((REPO / "wasm-config" / "envoy").glob("*.yaml"))
ENVOY_FILTER = REPO / "wasm-config" / "higress" / "envoyfilter" / "openai-errors.yaml"
KEYS = ("merge_slashes", "normalize_path", "path_with_escaped_slashes_action", "local_reply_config")
CODES = {"upstream_unavailable": "server_error", "upstream_timeout": "server_error",
         "request_too_large": "invalid_request_error", "not_found": "invalid_request_error"}


def hcm(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    return doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def patch() -> dict:
    doc = yaml.safe_load(ENVOY_FILTER.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("networking.istio.io/v1alpha3", "EnvoyFilter")
    (p,) = doc["spec"]["configPatches"]
    assert p["applyTo"] == "NETWORK_FILTER" and p["match"]["context"] == "GATEWAY"
    assert p["match"]["listener"]["filterChain"]["filter"]["name"] == "envoy.filters.network.http_connection_manager"
    assert p["patch"]["operation"] == "MERGE"
    value = p["patch"]["value"]["typed_config"]
    assert value["@type"].endswith(".HttpConnectionManager")
    return {k: v for k, v in value.items() if k != "@type"}


@pytest.mark.parametrize("path", ENVOY, ids=lambda p: p.name)
def test_every_shipped_config_has_the_higress_patch(path: Path) -> None:
    got = hcm(path)
    assert {k: got.get(k) for k in KEYS} == patch()


def test_mappers_give_openai_errors_with_stable_codes() -> None:
    settings = patch()
    assert settings["merge_slashes"] is True and settings["normalize_path"] is True
    assert settings["path_with_escaped_slashes_action"] == "UNESCAPE_AND_FORWARD"
    seen = {}
    for m in settings["local_reply_config"]["mappers"]:
        f = m["filter"]["extension_filter"]
        assert f["name"] == "envoy.access_loggers.extension_filters.cel"
        expr = f["typed_config"]["expression"]
        assert "response.code_details" in expr  # Envoy's own replies only: the plugin's details never match
        err = m["body_format_override"]["json_format"]["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["param"] is None
        seen[err["code"]] = err["type"]
        assert "status_code" not in m  # Envoy's status stays
    assert seen == CODES


def test_plugin_error_codes_are_not_envoy_details() -> None:
    """The plugin passes its error code as the local reply's details: none may be one the mappers match."""
    import re

    literals = {c for p in (REPO / "plugin" / "ai_gateway").rglob("*.py")
                for c in re.findall(r'"([a-z]+(?:_[a-z]+)+)"', p.read_text())}  # every snake_case string
    assert {"model_not_found", "unsupported_content_type", "request_too_large", "no_available_key"} <= literals
    exprs = " ".join(m["filter"]["extension_filter"]["typed_config"]["expression"]
                     for m in patch()["local_reply_config"]["mappers"])
    envoy_details = set(re.findall(r"'([a-z_]+)'", exprs))
    assert envoy_details and not literals & envoy_details
