"""Every Envoy config in the repository passes ``envoy --mode validate`` (which also runs plugin config parsing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.validate import build_plugins, check, discover

CONFIGS = discover()


@pytest.fixture(scope="module")
def built(showcase_wasm: Path) -> None:
    # Configs load dist/*.wasm relative to the repo root: build every plugin they reference, not just the showcase.
    failed = build_plugins(CONFIGS)
    if failed:
        pytest.fail("\n".join(failed), pytrace=False)


def test_configs_found() -> None:
    assert CONFIGS, "no Envoy configs discovered"
    assert Path("plugin/examples/showcase/envoy.yaml") in CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_config_valid(config: Path, built: None) -> None:
    problem = check(config)
    assert problem is None, problem
