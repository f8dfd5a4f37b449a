"""Test hosts for proxy-wasm plugins: in-process (FakeHost) and compiled .wasm (WasmHost)."""

from .driver import Host, Stream, UnimplementedHostCall
from .state import Callout, HostState, LocalResponse, SharedState

__all__ = ["Callout", "Host", "HostState", "LocalResponse", "SharedState", "Stream", "UnimplementedHostCall"]
