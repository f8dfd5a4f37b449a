"""Fixtures: the same plugin under the in-process host and as compiled .wasm under wasmtime."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from proxywasm.testing import Host, SharedState
from proxywasm.testing.fake import FakeHost

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "tests" / "plugins"

# entry module -> extra source roots
PLUGIN_PATHS = {"probe": [PLUGINS], "examples.showcase": [], "ai_gateway": []}


def build_wasm(entry: str) -> Path:
    """Build (or reuse) dist/<name>.wasm for a plugin; failures stop the test with the build output."""
    args = [sys.executable, str(REPO / "build" / "pwbuild"), entry]
    for p in PLUGIN_PATHS.get(entry, []):
        args += ["--path", str(p)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        pytest.fail(f"build of {entry} failed:\n{r.stdout}{r.stderr}")
    return REPO / "dist" / (entry.rsplit(".", 1)[-1].replace("_", "-") + ".wasm")


_built: dict[str, Path] = {}


def wasm_path(entry: str) -> Path:
    if entry not in _built:
        _built[entry] = build_wasm(entry)
    return _built[entry]


HostFactory = Callable[..., Host]


@pytest.fixture(params=["fake", "wasm"])
def make_host(request: pytest.FixtureRequest) -> HostFactory:
    """``make_host(entry, shared=None)`` -> a Host running that plugin on this test's host kind."""
    kind = request.param

    def make(entry: str, shared: SharedState | None = None) -> Host:
        if kind == "fake":
            for p in PLUGIN_PATHS.get(entry, []):
                if str(p) not in sys.path:
                    sys.path.insert(0, str(p))
            return FakeHost(entry, shared)
        from proxywasm.testing.wasm import WasmHost

        return WasmHost(wasm_path(entry), shared)

    make.kind = kind  # type: ignore[attr-defined]
    return make
