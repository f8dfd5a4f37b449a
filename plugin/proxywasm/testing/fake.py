"""The in-process host: plugin code runs on this CPython, host calls go to HostState."""

from __future__ import annotations

import importlib
import sys

from .. import dispatcher, hostcalls
from .driver import Host
from .state import SharedState


class FakeHost(Host):
    """Runs ``entry`` (a plugin module name) with fresh module state, like a new VM."""

    def __init__(self, entry: str, shared: SharedState | None = None) -> None:
        super().__init__(shared)
        hostcalls.bind(self.state)
        dispatcher.reset()
        top = entry.split(".")[0]
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]  # re-run module bodies: plugin globals are per VM
        importlib.import_module(entry)
        self._exports = {name: getattr(dispatcher, name, None) for name in dir(dispatcher) if name.startswith("proxy_on_")}

    def _export(self, name: str, *args: int) -> int | None:
        hostcalls.bind(self.state)  # several hosts may live in one test
        fn = self._exports.get(name)
        if fn is None:
            return None
        result = fn(*args)
        return None if result is None else int(result)
