"""CLI: python build/pwbuild <entry> [-o dist/NAME.wasm] [--src plugin]."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a directory: make "pwbuild" importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "pwbuild"

from pwbuild.build import Builder, default_cache
from pwbuild.toolchain import REPO, BuildError, Toolchain


def main(argv: list[str] | None = None) -> int:
    # Frozen code must not depend on this process's hash seed (set/frozenset constants).
    if os.environ.get("PYTHONHASHSEED") != "0":
        import subprocess

        env = dict(os.environ, PYTHONHASHSEED="0")
        args = sys.argv[1:] if argv is None else argv
        return subprocess.call([sys.executable, str(Path(__file__).resolve().parent), *args], env=env)
    p = argparse.ArgumentParser(prog="pwbuild", description="Build a Python proxy-wasm plugin into one .wasm module.")
    p.add_argument("entry", help="plugin's entry module, e.g. ai_gateway or examples.showcase")
    p.add_argument("-o", "--output", type=Path, help="output file (default dist/<last part of entry>.wasm)")
    p.add_argument("--src", type=Path, default=REPO / "plugin", help="source root holding proxywasm/ and the plugin")
    p.add_argument("--path", type=Path, action="append", default=[], help="another source root (repeatable)")
    p.add_argument("--cache", type=Path, default=default_cache(), help="object cache directory")
    p.add_argument("--variant", choices=("stock", "higress"), default="stock",
                   help="host: stock Envoy, or Higress (adds its Redis calls; output NAME-higress.wasm)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    variant = "" if a.variant == "stock" else a.variant
    name = a.entry.rsplit(".", 1)[-1].replace("_", "-") + (f"-{variant}" if variant else "")
    out = a.output or REPO / "dist" / (name + ".wasm")
    t0 = time.monotonic()
    try:
        path, rebuilt = Builder(Toolchain.locate(), a.cache, a.verbose).build(a.src, a.entry, out, tuple(a.path), variant)
    except BuildError as e:
        print(f"pwbuild: error: {e}", file=sys.stderr)
        return 1
    size = path.stat().st_size
    state = "built" if rebuilt else "up to date"
    print(f"pwbuild: {path} {state} ({size / 2**20:.2f} MiB, {time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
