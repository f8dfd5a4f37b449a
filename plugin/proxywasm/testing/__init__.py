"""Test hosts for proxy-wasm plugins: in-process (FakeHost) and compiled .wasm (WasmHost)."""

from .driver import Host, Stream, UnimplementedHostCall
from .state import Callout, GrpcCallout, HostState, LocalResponse, SharedState

__all__ = ["Callout", "GrpcCallout", "Host", "HostState", "LocalResponse", "SharedState", "Stream", "UnimplementedHostCall"]
