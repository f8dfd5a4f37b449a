"""Session fixtures: the built showcase plugin and an Envoy (concurrency 2) running it in front of an echo upstream."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e import ai_stack, echo
from e2e.envoy import REPO, Envoy, build_plugin, free_port, render

E2E = Path(__file__).resolve().parent
SHOWCASE_YAML = REPO / "plugin/examples/showcase/envoy.yaml"
# Histograms only reach the admin endpoints at a stats flush (default 5 s); flush often so tests need not wait.
FLUSH = "stats_flush_interval: 0.25s\n"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Hooks see every collected item of the session, so mark only the ones under e2e/.
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)


@dataclass(frozen=True)
class Stack:
    url: str  # listener base URL, e.g. http://127.0.0.1:PORT
    port: int  # listener port
    envoy: Envoy
    upstream: echo.EchoServer


def showcase_config(listener: int, admin: int, upstream: int, replace: Mapping[str, str] | None = None) -> str:
    return FLUSH + render(SHOWCASE_YAML, {18000: listener, 19000: admin, 18101: upstream}, replace)


@contextmanager
def running_showcase(replace: Mapping[str, str] | None = None, concurrency: int = 2) -> Iterator[Stack]:
    """Echo upstream + Envoy running the showcase config on free ports; ``replace`` edits the config text."""
    listener, admin = free_port(), free_port()
    upstream = echo.serve(free_port())
    envoy = Envoy(showcase_config(listener, admin, upstream.port, replace), admin, concurrency)
    try:
        envoy.start()  # raises RuntimeError with the log tail when Envoy refuses the config
        yield Stack(f"http://127.0.0.1:{listener}", listener, envoy, upstream)
    finally:
        envoy.stop()
        shutil.rmtree(envoy.dir, ignore_errors=True)  # also when start() failed, unlike Envoy.__exit__
        upstream.shutdown()
        upstream.server_close()


@pytest.fixture(scope="session")
def showcase_wasm() -> Path:
    """Build dist/showcase.wasm once per session (a no-op when it is up to date)."""
    try:
        return build_plugin("examples.showcase")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def launch(showcase_wasm: Path) -> Callable[..., AbstractContextManager[Stack]]:
    """``with launch(replace={...}) as stack:`` starts a private showcase Envoy (for configs tests change)."""
    return running_showcase


@pytest.fixture(scope="session")
def showcase(launch: Callable[..., AbstractContextManager[Stack]]) -> Iterator[Stack]:
    """The shared showcase Envoy; tests must compare deltas since earlier tests also send requests."""
    with launch() as stack:
        yield stack


@pytest.fixture(scope="session")
def ai_gateway_wasm() -> Path:
    """Build dist/ai-gateway.wasm once per session (a no-op when it is up to date)."""
    try:
        return ai_stack.build_wasm()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def ai_launch(ai_gateway_wasm: Path) -> Callable[..., AbstractContextManager[ai_stack.AiStack]]:
    """``with ai_launch(replace=..., route_timeout=..., buffer_limit=...) as stack:`` starts a private AI gateway
    (mock vLLM processes + Envoy) on free ports; see e2e/ai_stack.py."""
    return ai_stack.running_ai_stack
