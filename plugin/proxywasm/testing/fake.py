"""The in-process host: plugin code runs on this CPython, host calls go to HostState."""

from __future__ import annotations

import importlib
import sys

from .. import dispatcher, hostcalls, vm
from .driver import Host
from .shim_twins import ShimTwins
from .state import SharedState


class FakeHost(Host):
    """Runs ``entry`` (a plugin module name) with fresh module state, like a new VM.

    The shim's C helpers (header maps, JSON scan, response taps) are this host's Python twins (``self.shim``):
    as the shim does before calling Python, they decide whether a response chunk reaches the plugin's
    on_response_body (a tapped stream's), and drop a stream's tap when it is deleted.
    """

    def __init__(self, entry: str, shared: SharedState | None = None) -> None:
        super().__init__(shared)
        self.shim = ShimTwins(self.state)
        hostcalls.bind(self.state, self.shim)
        vm.reset()
        top = entry.split(".")[0]
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]  # re-run module bodies: plugin globals are per VM
        importlib.import_module(entry)
        self._exports = {name: getattr(dispatcher, name, None) for name in dir(dispatcher) if name.startswith("proxy_on_")}

    def _export(self, name: str, *args: int) -> int | None:
        hostcalls.bind(self.state, self.shim)  # several hosts may live in one test
        if name == "proxy_on_response_body" and self.shim.tap_handles(args[0], args[1], args[2] != 0):
            return 0  # kept or skipped by the stream's tap: the plugin does not see this chunk
        if name == "proxy_on_delete":
            self.shim.tap_remove(args[0])
        fn = self._exports.get(name)
        if fn is None:
            return None
        result = fn(*args)
        return None if result is None else int(result)
