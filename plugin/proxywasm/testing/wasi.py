"""The WASI calls Envoy provides (and that the module still imports), emulated.

stdout/stderr go to the host log as Envoy does (info / error); there are no
files and no arguments; the environment is the host's ``env`` (Envoy: ``vm_config.environment_variables``).
"""

from __future__ import annotations

import os
import struct
import time
from typing import TYPE_CHECKING, Any

import wasmtime

if TYPE_CHECKING:
    from .wasm import WasmHost

_I32, _I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
EBADF, ESPIPE, SUCCESS = 8, 70, 0


class ProcExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"proc_exit({code})")
        self.code = code


def define(linker: wasmtime.Linker, host: WasmHost) -> None:
    st = host.state
    pending: dict[int, bytes] = {1: b"", 2: b""}

    def fd_write(c: Any, fd: int, iovs: int, n: int, nwritten: int) -> int:
        if fd not in (1, 2):
            return EBADF
        total = b""
        for i in range(n):
            ptr, size = struct.unpack("<II", host.read(c, iovs + 8 * i, 8))
            total += host.read(c, ptr, size)
        *lines, pending[fd] = (pending[fd] + total).split(b"\n")
        for line in lines:
            st.logs.append((2 if fd == 1 else 4, line.decode("utf-8", "replace")))
        host.write_u32(c, nwritten, len(total))
        return SUCCESS

    def fd_fdstat_get(c: Any, fd: int, buf: int) -> int:
        if fd > 2:
            return EBADF
        # filetype character device, no flags, all rights
        host.write(c, buf, struct.pack("<BxHxxxxQQ", 2, 0, 2**64 - 1, 2**64 - 1))
        return SUCCESS

    def clock_time_get(c: Any, clock: int, precision: int, out: int) -> int:
        # realtime follows the emulator's manual clock; monotonic is real, for timings; a fuel clock answers the
        # VM instructions run so far (see WasmHost)
        if host.fuel_clock:
            host.write_u64(c, out, host.fuel_used(c))
        else:
            host.write_u64(c, out, st.shared.clock_ns if clock == 0 else time.monotonic_ns())
        return SUCCESS

    def random_get(c: Any, buf: int, size: int) -> int:
        host.write(c, buf, os.urandom(size))
        return SUCCESS

    def sizes_get(c: Any, count: int, size: int) -> int:
        host.write_u32(c, count, 0)
        host.write_u32(c, size, 0)
        return SUCCESS

    env = [f"{k}={v}".encode() + b"\0" for k, v in host.env.items()]

    def environ_sizes_get(c: Any, count: int, size: int) -> int:
        host.write_u32(c, count, len(env))
        host.write_u32(c, size, sum(map(len, env)))
        return SUCCESS

    def environ_get(c: Any, ptrs: int, buf: int) -> int:
        for i, entry in enumerate(env):
            host.write_u32(c, ptrs + 4 * i, buf)
            host.write(c, buf, entry)
            buf += len(entry)
        return SUCCESS

    def proc_exit(c: Any, code: int) -> None:
        raise ProcExit(code)

    funcs = {
        "fd_write": ([_I32] * 4, fd_write),
        "fd_read": ([_I32] * 4, lambda c, *a: EBADF),
        "fd_seek": ([_I32, _I64, _I32, _I32], lambda c, *a: ESPIPE),
        "fd_close": ([_I32], lambda c, *a: SUCCESS),
        "fd_fdstat_get": ([_I32] * 2, fd_fdstat_get),
        "environ_sizes_get": ([_I32] * 2, environ_sizes_get),
        "environ_get": ([_I32] * 2, environ_get),
        "args_sizes_get": ([_I32] * 2, sizes_get),
        "args_get": ([_I32] * 2, lambda c, *a: SUCCESS),
        "clock_time_get": ([_I32, _I64, _I32], clock_time_get),
        "random_get": ([_I32] * 2, random_get),
    }
    for name, (params, fn) in funcs.items():
        linker.define_func("wasi_snapshot_preview1", name, wasmtime.FuncType(params, [_I32]), fn, access_caller=True)
    linker.define_func("wasi_snapshot_preview1", "proc_exit", wasmtime.FuncType([_I32], []), proc_exit,
                       access_caller=True)
