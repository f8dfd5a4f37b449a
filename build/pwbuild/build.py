"""Build driver: Python package in, one proxy-wasm core module out."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

from . import audit, freeze, shimgen, wasistubs, weaken
from .toolchain import REPO, BuildError, Toolchain

SHIM = Path(__file__).resolve().parents[1] / "shim" / "shim.c"
CFLAGS = ("--target=wasm32-wasi", "-O2", "-D_WASI_EMULATED_SIGNAL", "-D_WASI_EMULATED_GETPID",
          "-D_WASI_EMULATED_PROCESS_CLOCKS", "-fno-ident")
SHIM_CFLAGS = ("-msimd128",)  # the JSON scanner's 16-byte steps; Envoy's V8 and wasmtime both run simd128
LDFLAGS = ("--target=wasm32-wasi", "-mexec-model=reactor", "-s", "-Wl,-z,stack-size=1048576",
           "-lwasi-emulated-signal", "-lwasi-emulated-getpid",
           "-lwasi-emulated-process-clocks", "-lm")


def _inline(path: Path) -> str:
    """The shim's source with its ``#include "x.c"`` lines of files beside it replaced by their text (one unit)."""
    def sub(m: re.Match[str]) -> str:
        part = path.parent / m.group(1)
        return part.read_text() if part.is_file() else m.group(0)

    return re.sub(r'^#include "([a-z_]+\.c)".*$', sub, path.read_text(), flags=re.M)


def load_abi(src: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_pw_abi", src / "proxywasm" / "abi.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()[:24]


class Builder:
    def __init__(self, tc: Toolchain, cache: Path, verbose: bool = False) -> None:
        self.tc = tc
        self.cache = cache
        self.verbose = verbose
        cache.mkdir(parents=True, exist_ok=True)
        # zig's own cache (its wasi-libc build) is shared by every object cache
        zig_cache = str(REPO / ".cache" / "zig")
        self.env = dict(os.environ, ZIG_GLOBAL_CACHE_DIR=zig_cache, ZIG_LOCAL_CACHE_DIR=zig_cache)

    def _run(self, cmd: list[str], what: str) -> None:
        if self.verbose:
            print("+", " ".join(cmd))
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=self.cache)
        if r.returncode != 0:
            raise BuildError(f"{what} failed:\n{r.stderr.strip() or r.stdout.strip()}")

    def compile(self, name: str, source: str, include: Path | None = None, flags: tuple[str, ...] = ()) -> Path:
        """Compile generated C to an object, reusing the cached one for identical input."""
        key = _digest(source, self.tc.zig_version, *CFLAGS, *flags, str(include or ""))
        obj = self.cache / f"{name}-{key}.o"
        if not obj.exists():
            c = self.cache / f"{name}-{key}.c"
            c.write_text(source)
            incs = ["-I", str(self.tc.include)] + (["-I", str(include)] if include else [])
            tmp = obj.with_suffix(".tmp.o")
            self._run(self.tc.zig("cc", *CFLAGS, *flags, *incs, "-c", str(c), "-o", str(tmp)), f"compiling {name}")
            tmp.rename(obj)
            c.unlink()
        return obj

    def libs(self) -> list[Path]:
        """libpython with its pthread stubs weakened (zig's wasi-libc has its own), then the rest."""
        libpython, *rest = self.tc.libs
        data = libpython.read_bytes()
        patched = self.cache / f"libpython3.11-{_digest(data)}.a"
        if not patched.exists():
            out, done = weaken.weaken_archive(data, "thread.o", lambda n: n.startswith("pthread_"))
            if not done:
                raise BuildError(f"{libpython}: thread.o has no pthread symbols to weaken")
            tmp = patched.with_suffix(".tmp")
            tmp.write_bytes(out)
            tmp.rename(patched)
        return [patched, *rest]

    def build(self, src: Path, entry: str, out: Path, paths: tuple[Path, ...] = (),
              variant: str = "") -> tuple[Path, bool]:
        """Build ``entry`` (a module under ``src`` or ``paths``) into ``out``. Returns (out, rebuilt).

        ``src`` holds the SDK (proxywasm/); ``paths`` are more source roots for plugin code. ``variant``
        "higress" offers Higress's own host calls (Redis) too; the module then loads only in Higress.
        """
        abi = load_abi(src)
        stdlib, plugin, exports = freeze.freeze(self.tc, [src, *paths], entry)
        glue = shimgen.generate(abi, frozenset(exports), variant)
        stubs = wasistubs.generate(self.tc.wasilibc_real)
        stdlib_c = freeze.to_c("pw_frozen_stdlib", stdlib)
        plugin_c = freeze.to_c("pw_frozen_plugin", plugin, entry)
        shim_src = _inline(SHIM)
        key = _digest(glue, stubs, stdlib_c, plugin_c, shim_src, self.tc.zig_version, *CFLAGS, *SHIM_CFLAGS, *LDFLAGS,
                      *(hashlib.sha256(p.read_bytes()).hexdigest() for p in self.tc.libs))
        stamp = out.with_suffix(out.suffix + ".inputs")
        if out.exists() and stamp.exists() and stamp.read_text() == key:
            return out, False
        gen = self.cache / "gen"
        gen.mkdir(exist_ok=True)
        (gen / "abi_glue.c").write_text(glue)
        objs = [
            self.compile("shim", shim_src.replace('#include "abi_glue.c"', glue), flags=SHIM_CFLAGS),
            self.compile("wasistubs", stubs),
            self.compile("frozen_stdlib", stdlib_c),
            self.compile("frozen_plugin", plugin_c),
        ]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache / f"link-{key}.wasm"
        self._run(self.tc.zig("cc", *LDFLAGS[:1], *[str(o) for o in objs], *map(str, self.libs()),
                              *LDFLAGS[1:], "-o", str(tmp)), "linking")
        audit.audit(tmp, abi, variant)
        shutil.move(tmp, out)
        stamp.write_text(key)
        return out, True


def default_cache() -> Path:
    return REPO / ".cache" / "pwbuild"
