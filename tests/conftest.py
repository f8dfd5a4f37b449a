"""Fixtures: the same plugin under the in-process host and as compiled .wasm under wasmtime."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxywasm.testing import Host, SharedState
from proxywasm.testing.fake import FakeHost
from tests.redis_server import Redis, redis_server

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "tests" / "plugins"

# entry module -> extra source roots
PLUGIN_PATHS = {"sdk_ops": [PLUGINS], "sdk_trailers": [PLUGINS], "examples.showcase": [], "ai_gateway": []}


def build_wasm(entry: str, variant: str = "") -> Path:
    """Build (or reuse) dist/<name>[-variant].wasm for a plugin; failures stop the test with the build output."""
    args = [sys.executable, str(REPO / "build" / "pwbuild"), entry] + (["--variant", variant] if variant else [])
    for p in PLUGIN_PATHS.get(entry, []):
        args += ["--path", str(p)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        pytest.fail(f"build of {entry} failed:\n{r.stdout}{r.stderr}")
    return REPO / "dist" / (entry.rsplit(".", 1)[-1].replace("_", "-") + (f"-{variant}" if variant else "") + ".wasm")


_built: dict[tuple[str, str], Path] = {}


def wasm_path(entry: str, variant: str = "") -> Path:
    if (entry, variant) not in _built:
        _built[entry, variant] = build_wasm(entry, variant)
    return _built[entry, variant]


HostFactory = Callable[..., Host]


@pytest.fixture(params=["fake", "wasm"])
def make_host(request: pytest.FixtureRequest) -> HostFactory:
    """``make_host(entry, shared=None)`` -> a Host running that plugin on this test's host kind."""
    kind = request.param

    def make(entry: str, shared: SharedState | None = None, variant: str = "") -> Host:
        if kind == "fake":
            for p in PLUGIN_PATHS.get(entry, []):
                if str(p) not in sys.path:
                    sys.path.insert(0, str(p))
            return FakeHost(entry, shared)
        from proxywasm.testing.wasm import WasmHost

        return WasmHost(wasm_path(entry, variant), shared)

    make.kind = kind  # type: ignore[attr-defined]
    return make


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    """A real redis-server on a free loopback port (no persistence), for the session."""
    with redis_server() as r:
        yield r
