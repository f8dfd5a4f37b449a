"""The wasmtime host with raw calls: the same module, HostState and import marshalling, ~10x cheaper per call.

wasmtime-py's generic call path (type checks and value boxing on every export and import call) costs ~2 ms a
request through the AI gateway. ``FastWasmHost`` replaces only that layer with wasmtime's unchecked raw calls; the
module, the HostState emulation of Envoy and the import marshalling (``WasmHost._marshal``) are the same code, so
the plugin runs exactly the same paths (tests/test_memory.py checks that both hosts agree on a mixed run). Long
runs use it: the 100,000-request memory test and the benchmarks' instruction counts.
"""

from __future__ import annotations

import ctypes
import struct
from ctypes import POINTER, byref, c_void_p
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._func import Caller

from ..abi import EXPORTS_BY_NAME, IMPORTS, export_signature, import_signature
from . import wasi
from .driver import Host
from .state import SharedState
from .wasm import WasmHost, _functype, engine, load_module

_NO_FINALIZER = ctypes.cast(None, ctypes.CFUNCTYPE(None, c_void_p))


class FastWasmHost(WasmHost):
    """WasmHost with raw (unchecked) wasmtime calls for exports, imports, memory access and allocation."""

    def __init__(self, module: Path | str, shared: SharedState | None = None, vm_id: str = "",
                 env: dict[str, str] | None = None, fuel: int = 0, fuel_clock: bool = False) -> None:
        Host.__init__(self, shared, vm_id)  # WasmHost.__init__, with fast imports
        self._start_store(fuel, fuel_clock, env)
        linker = wasmtime.Linker(engine(bool(fuel)))
        self._keep: list[Any] = []  # ctypes callbacks and types wasmtime holds pointers to
        self._exception: BaseException | None = None
        self._mem = (0, 0)  # (host address, size) of linear memory, see _span
        for fn in IMPORTS:
            self._define(linker, fn)
        wasi.define(linker, self)
        self.instance = linker.instantiate(self.store, load_module(Path(module), bool(fuel)))
        ex = self.instance.exports(self.store)
        self.memory = ex["memory"]  # type: ignore[assignment]
        self._memref = byref(self.memory._memory)
        self._alloc_func = ex["proxy_on_memory_allocate"]._func  # type: ignore[union-attr]
        self._alloc = self._fast_alloc  # type: ignore[assignment]
        self._exports = {name: ex[name] for name in EXPORTS_BY_NAME if name in ex}  # type: ignore[misc]
        self._raw: dict[str, tuple[Any, tuple[str, ...], str | None]] = {}
        for name, f in self._exports.items():
            params, results = export_signature(EXPORTS_BY_NAME[name])
            self._raw[name] = (f._func, tuple(params), results[0] if results else None)  # type: ignore[union-attr]
        self.trap = None
        ex["_initialize"](self.store)  # type: ignore[operator]

    def _define(self, linker: wasmtime.Linker, fn: Any) -> None:
        params, results = import_signature(fn)
        marshal = self._marshal(fn)  # the same marshalling as WasmHost
        kinds = tuple(params)
        result = results[0] if results else None

        def callback(env: Any, caller_ptr: Any, vals: Any, nvals: int) -> int:
            caller = Caller(caller_ptr)
            try:
                raw = [vals[i].i64 if k == "i64" else vals[i].i32 for i, k in enumerate(kinds)]
                r = marshal(caller, *raw)
                if result == "i32":
                    vals[0].i32 = r
                elif result == "i64":
                    vals[0].i64 = r
                return 0
            except BaseException as e:  # becomes a trap; re-raised by _export, as wasmtime-py does
                self._exception = e
                return ctypes.cast(wasmtime.Trap("python exception")._consume(), c_void_p).value or 0
            finally:
                caller._invalidate()

        cb = ffi.wasmtime_func_unchecked_callback_t(callback)
        ty = _functype((params, results))
        self._keep += [cb, ty]
        module, name = b"env", fn.name.encode()
        err = ffi.wasmtime_linker_define_func_unchecked(
            linker.ptr(), ctypes.create_string_buffer(module), len(module), ctypes.create_string_buffer(name), len(name),
            ty.ptr(), cb, None, _NO_FINALIZER)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)

    def _call(self, context: Any, func: Any, vals: Any) -> None:
        trap = POINTER(ffi.wasm_trap_t)()
        err = ffi.wasmtime_func_call_unchecked(context, byref(func), vals, len(vals), byref(trap))
        exc, self._exception = self._exception, None
        if exc is not None:
            raise exc
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
        if trap:
            self.trap = wasmtime.Trap._from_ptr(trap)
            raise self.trap

    def _export(self, name: str, *args: int) -> int | None:
        entry = self._raw.get(name)
        if entry is None:
            return None
        func, kinds, result = entry
        vals = (ffi.wasmtime_val_raw_t * max(len(kinds), 1))()
        for i, a in enumerate(args):
            if kinds[i] == "i64":
                vals[i].i64 = a
            else:
                vals[i].i32 = a
        self._mem = (0, 0)
        self._call(self.store._context(), func, vals)
        if result is None:
            return None
        return vals[0].i64 if result == "i64" else vals[0].i32 & 0xFFFFFFFF

    def _fast_alloc(self, caller: Any, size: int) -> int:
        vals = (ffi.wasmtime_val_raw_t * 1)()
        vals[0].i32 = size
        self._call(caller._context(), self._alloc_func, vals)
        self._mem = (0, 0)
        return vals[0].i32 & 0xFFFFFFFF

    def _span(self, caller: Any, ptr: int, size: int) -> int:
        """The host address of ``ptr``, bounds-checked. Base and size are re-read at every export call, after every
        allocation (the only way the module's memory grows during a host call) and on any access beyond them."""
        base, n = self._mem
        if ptr + size > n:
            ctx = caller._context()
            base = ctypes.cast(ffi.wasmtime_memory_data(ctx, self._memref), c_void_p).value or 0
            n = ffi.wasmtime_memory_data_size(ctx, self._memref)
            self._mem = (base, n)
            if ptr + size > n:
                raise IndexError(f"wasm memory access out of bounds: {ptr}+{size} > {n}")
        return base + ptr

    def read(self, caller: Any, ptr: int, size: int) -> bytes:
        return ctypes.string_at(self._span(caller, ptr, size), size) if size else b""

    def write(self, caller: Any, ptr: int, data: bytes) -> None:
        if data:
            ctypes.memmove(self._span(caller, ptr, len(data)), data, len(data))

    def write_u32(self, caller: Any, ptr: int, value: int) -> None:
        self.write(caller, ptr, struct.pack("<I", value & 0xFFFFFFFF))

    def write_u64(self, caller: Any, ptr: int, value: int) -> None:
        self.write(caller, ptr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))
