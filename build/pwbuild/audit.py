"""Read a wasm module's imports and exports and check them against the ABI table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from .toolchain import BuildError

_VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64"}
Signature = tuple[tuple[str, ...], tuple[str, ...]]


def _uleb(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _name(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _uleb(data, pos)
    return data[pos : pos + n].decode(), pos + n


def _limits(data: bytes, p: int) -> int:
    flags, p = _uleb(data, p)
    _, p = _uleb(data, p)
    if flags & 1:
        _, p = _uleb(data, p)
    return p


@dataclass
class ModuleInfo:
    imports: dict[tuple[str, str], Signature] = field(default_factory=dict)  # functions only
    exports: dict[str, Signature | None] = field(default_factory=dict)  # None: not a function


def read_module(data: bytes) -> ModuleInfo:
    if data[:8] != b"\0asm\x01\0\0\0":
        raise BuildError("not a core WebAssembly module (bad magic/version)")
    types: list[Signature] = []
    func_types: list[int] = []  # imported functions first, then defined ones
    info = ModuleInfo()
    pos = 8
    while pos < len(data):
        sid = data[pos]
        size, pos = _uleb(data, pos + 1)
        end, p = pos + size, pos
        if sid == 1:
            count, p = _uleb(data, p)
            for _ in range(count):
                p += 1  # 0x60 func
                n, p = _uleb(data, p)
                params = tuple(_VALTYPES.get(b, "?") for b in data[p : p + n])
                p += n
                n, p = _uleb(data, p)
                results = tuple(_VALTYPES.get(b, "?") for b in data[p : p + n])
                p += n
                types.append((params, results))
        elif sid == 2:
            count, p = _uleb(data, p)
            for _ in range(count):
                mod, p = _name(data, p)
                name, p = _name(data, p)
                kind = data[p]
                p += 1
                if kind == 0:
                    t, p = _uleb(data, p)
                    func_types.append(t)
                    info.imports[(mod, name)] = types[t]
                elif kind == 1:
                    p = _limits(data, p + 1)
                elif kind == 2:
                    p = _limits(data, p)
                else:
                    p += 2
        elif sid == 3:
            count, p = _uleb(data, p)
            for _ in range(count):
                t, p = _uleb(data, p)
                func_types.append(t)
        elif sid == 7:
            count, p = _uleb(data, p)
            for _ in range(count):
                name, p = _name(data, p)
                kind = data[p]
                idx, p = _uleb(data, p + 1)
                info.exports[name] = types[func_types[idx]] if kind == 0 else None
        pos = end
    return info


def audit(path: Path, abi: ModuleType, variant: str = "") -> ModuleInfo:
    """Fail unless imports are proxy-wasm calls of the host ``variant`` or allowed WASI calls and exports match
    the ABI (a stock-Envoy module importing a Higress-only call would not load in Envoy)."""
    info = read_module(path.read_bytes())
    problems = []
    allowed = {f.name for f in abi.imports_for(variant)}
    for (mod, name), sig in sorted(info.imports.items()):
        if mod == "env" and name in abi.IMPORTS_BY_NAME and name not in allowed:
            problems.append(f"imports env.{name}, which only the {abi.IMPORTS_BY_NAME[name].variant} host provides")
        elif mod == "env" and name in abi.IMPORTS_BY_NAME:
            want = abi.import_signature(abi.IMPORTS_BY_NAME[name])
            if sig != want:
                problems.append(f"import env.{name} has signature {sig}, the ABI says {want}")
        elif not (mod == "wasi_snapshot_preview1" and name in abi.WASI_ALLOWED):
            problems.append(f"imports {mod}.{name}, which Envoy/Higress do not provide "
                            f"(allowed WASI: {', '.join(sorted(abi.WASI_ALLOWED))})")
    for ex in abi.EXPORTS:
        sig = info.exports.get(ex.name, "missing")
        if sig == "missing" and ex.hot:
            continue  # left out on purpose: the plugin does not override it
        if sig != abi.export_signature(ex):
            problems.append(f"export {ex.name} is {sig}, the ABI says {abi.export_signature(ex)}")
    for name in ("_initialize", "proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "memory"):
        if name not in info.exports:
            problems.append(f"missing export {name}")
    if problems:
        raise BuildError("module does not fit the proxy-wasm host:\n  " + "\n  ".join(problems))
    return info
