"""The wasmtime host: the compiled .wasm runs with every env.proxy_* import emulated.

Import marshalling is generated from the ABI table: for each parameter kind the
host reads wasm memory (``in``), allocates in the module and writes back
(``out``), or writes an integer through a pointer (``u32o``/``u64o``).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from ..abi import EXPORTS_BY_NAME, IMPORTS, Fn, Result, export_signature, import_signature
from . import wasi
from .driver import Host
from .state import SharedState

_VAL = {"i32": wasmtime.ValType.i32(), "i64": wasmtime.ValType.i64()}
_ENGINES: dict[bool, wasmtime.Engine] = {}  # by fuel metering on/off
_WASMTIME_VERSION = importlib.metadata.version("wasmtime")
_MODULES: dict[str, wasmtime.Module] = {}
CACHE = Path(__file__).resolve().parents[3] / ".cache" / "wasmtime"


def engine(fuel: bool = False) -> wasmtime.Engine:
    """The process's engine; ``fuel``: one that meters instructions (wasmtime fuel), for counting them."""
    e = _ENGINES.get(fuel)
    if e is None:
        cfg = wasmtime.Config()
        cfg.consume_fuel = fuel
        e = _ENGINES[fuel] = wasmtime.Engine(cfg)
    return e


def load_module(path: Path, fuel: bool = False) -> wasmtime.Module:
    """Compile once per process; keep compiled code on disk keyed by the module's hash."""
    data = path.read_bytes()
    key = hashlib.sha256(data).hexdigest()[:32] + "-" + _WASMTIME_VERSION + ("-fuel" if fuel else "")
    mod = _MODULES.get(key)
    if mod is None:
        cached = CACHE / f"{key}.cwasm"
        if cached.exists():
            mod = wasmtime.Module.deserialize_file(engine(fuel), str(cached))
        else:
            mod = wasmtime.Module(engine(fuel), data)
            CACHE.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            tmp.write_bytes(mod.serialize())
            tmp.rename(cached)
        _MODULES[key] = mod
    return mod


def _functype(sig: tuple[tuple[str, ...], tuple[str, ...]]) -> wasmtime.FuncType:
    return wasmtime.FuncType([_VAL[t] for t in sig[0]], [_VAL[t] for t in sig[1]])


class WasmHost(Host):
    """One wasm VM (instance) of ``module``; VMs given the same ``shared`` act as Envoy workers.

    ``fuel`` > 0 runs it metered with that much fuel (``fuel_used()``: VM instructions so far); with ``fuel_clock``
    WASI's clock then answers the fuel used, in ns (a profiler inside the VM measures instructions). ``env``: the
    VM's environment variables (WASI environ_get; Envoy's ``vm_config.environment_variables``).
    """

    def __init__(self, module: Path | str, shared: SharedState | None = None, vm_id: str = "",
                 env: dict[str, str] | None = None, fuel: int = 0, fuel_clock: bool = False) -> None:
        super().__init__(shared, vm_id)
        self._start_store(fuel, fuel_clock, env)
        linker = wasmtime.Linker(engine(bool(fuel)))
        for fn in IMPORTS:
            linker.define_func("env", fn.name, _functype(import_signature(fn)), self._marshal(fn), access_caller=True)
        wasi.define(linker, self)
        self.instance = linker.instantiate(self.store, load_module(Path(module), bool(fuel)))
        ex = self.instance.exports(self.store)
        self.memory: wasmtime.Memory = ex["memory"]  # type: ignore[assignment]
        self._alloc = ex["proxy_on_memory_allocate"]
        self._exports = {name: ex[name] for name in EXPORTS_BY_NAME if name in ex}
        self.trap: Exception | None = None
        ex["_initialize"](self.store)

    def _start_store(self, fuel: int, fuel_clock: bool, env: dict[str, str] | None) -> None:
        self.env = dict(env or {})
        self.fuel, self.fuel_clock = fuel, fuel_clock and fuel > 0
        self.store = wasmtime.Store(engine(bool(fuel)))
        if fuel:
            self.store.set_fuel(fuel)

    def fuel_used(self, caller: Any = None) -> int:
        """VM instructions run so far (a metered host only); inside a host call pass its ``caller``."""
        left = ctypes.c_uint64()
        ctx = caller._context() if caller is not None else self.store._context()
        ffi.wasmtime_context_get_fuel(ctx, ctypes.byref(left))
        return self.fuel - left.value

    # -- memory helpers (also used by the WASI layer) --

    def read(self, caller: Any, ptr: int, size: int) -> bytes:
        return bytes(self.memory.read(caller, ptr, ptr + size)) if size else b""

    def write(self, caller: Any, ptr: int, data: bytes) -> None:
        if data:
            self.memory.write(caller, data, ptr)

    def write_u32(self, caller: Any, ptr: int, value: int) -> None:
        self.memory.write(caller, struct.pack("<I", value & 0xFFFFFFFF), ptr)

    def write_u64(self, caller: Any, ptr: int, value: int) -> None:
        self.memory.write(caller, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF), ptr)

    def memory_size(self) -> int:
        return self.memory.data_len(self.store)

    def _marshal(self, fn: Fn) -> Callable[..., int]:
        impl = getattr(self.state, fn.name)
        kinds = fn.params

        def call(caller: Any, *raw: int) -> int:
            args: list[Any] = []
            outs: list[tuple[str, int, int]] = []
            i = 0
            for kind in kinds:
                if kind in ("i32", "i64"):
                    args.append(raw[i] & 0xFFFFFFFF if kind == "i32" else raw[i])
                    i += 1
                elif kind == "in":
                    args.append(self.read(caller, raw[i] & 0xFFFFFFFF, raw[i + 1] & 0xFFFFFFFF))
                    i += 2
                elif kind == "out":
                    outs.append((kind, raw[i] & 0xFFFFFFFF, raw[i + 1] & 0xFFFFFFFF))
                    i += 2
                else:
                    outs.append((kind, raw[i] & 0xFFFFFFFF, 0))
                    i += 1
            result = impl(*args)
            if not outs:
                return int(result)
            status, *values = result
            if status == Result.OK:
                for (kind, p1, p2), v in zip(outs, values, strict=True):
                    if kind == "out":
                        data = v or b""
                        ptr = self._alloc(caller, max(len(data), 1)) if data else 0
                        self.write(caller, ptr, data)
                        self.write_u32(caller, p1, ptr)
                        self.write_u32(caller, p2, len(data))
                    elif kind == "u32o":
                        self.write_u32(caller, p1, v)
                    else:
                        self.write_u64(caller, p1, v)
            return int(status)

        call.__name__ = fn.name
        return call

    def _export(self, name: str, *args: int) -> int | None:
        fn = self._exports.get(name)
        if fn is None:
            return None
        try:
            result = fn(self.store, *args)
        except wasmtime.Trap as e:  # the VM died: Envoy would fail the plugin
            self.trap = e
            raise
        return None if not export_signature(EXPORTS_BY_NAME[name])[1] else int(result)
