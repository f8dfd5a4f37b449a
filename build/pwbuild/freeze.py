"""Find the modules a plugin needs and turn them into frozen code for CPython 3.11."""

from __future__ import annotations

import json
import marshal
import modulefinder
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .toolchain import BuildError, Toolchain

# Needed by CPython's own start-up, whatever the plugin imports.
BASE_MODULES = ("encodings", "encodings.aliases", "encodings.utf_8", "encodings.latin_1",
                "encodings.ascii", "proxywasm.dispatcher", "proxywasm.contract")

# Already frozen inside libpython 3.11 (Python/frozen.c); loaded from there.
ALREADY_FROZEN = frozenset(
    "importlib._bootstrap importlib._bootstrap_external zipimport abc codecs io "
    "_collections_abc _sitebuiltins genericpath ntpath posixpath os.path os site stat "
    "importlib.util importlib.machinery runpy __hello__ __phello__ __phello__.spam "
    "__phello__.ham __phello__.ham.eggs".split()
)

# Reached only through branches a plugin never takes inside a proxy (platform
# fallbacks, debugging and test helpers); leaving them out keeps the module small.
EXCLUDE = frozenset(
    "_pydecimal _pyio _strptime asyncio bdb calendar ctypes distutils doctest email "
    "ensurepip getopt gettext http idlelib lib2to3 logging multiprocessing optparse pdb "
    "pickle pydoc pydoc_data sqlite3 ssl subprocess tkinter turtle unittest urllib "
    "xml xmlrpc zipfile tarfile lzma bz2 gzip shutil tempfile socket selectors signal "
    "threading _threading_local concurrent argparse locale platform sysconfig "
    "importlib.metadata importlib.resources tracemalloc pprint "
    "proxywasm.testing".split()
)


@dataclass(frozen=True)
class FrozenModule:
    name: str
    code: bytes
    is_package: bool


def _excluded(name: str) -> bool:
    parts = name.split(".")
    return any(".".join(parts[: i + 1]) in EXCLUDE for i in range(len(parts)))


def _compile(name: str, path: Path, display: str, optimize: int) -> bytes:
    source = path.read_bytes()
    try:
        code = compile(source, display, "exec", dont_inherit=True, optimize=optimize)
    except SyntaxError as e:
        raise BuildError(f"{path}:{e.lineno}: {e.msg}") from None
    return marshal.dumps(code)


def _find_entry(roots: list[Path], entry: str) -> Path:
    for root in roots:
        base = root / Path(*entry.split("."))
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return root
    raise BuildError(f"entry module {entry!r} not found under {', '.join(map(str, roots))}")


def freeze(tc: Toolchain, roots: list[Path], entry: str) -> tuple[list[FrozenModule], list[FrozenModule], list[str]]:
    """Freeze ``entry`` (found in one of the source ``roots``) with everything it imports.

    Returns (stdlib modules, plugin modules, exports the plugin needs); modules sorted by name.
    """
    if sys.version_info[:2] != (3, 11):
        raise BuildError("the freezer must run on CPython 3.11 (marshal format of the WASI CPython)")
    roots = [r.resolve() for r in roots]
    entry_root = _find_entry(roots, entry)
    finder = modulefinder.ModuleFinder(path=[*map(str, roots), str(tc.stdlib)], excludes=sorted(EXCLUDE))
    # modulefinder reports syntax errors only as missing modules: compile the plugin's own code first.
    top = entry.split(".")[0]
    for root, pkg in ((entry_root, top), (roots[0], "proxywasm")):
        base = root / pkg
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
        for py in files:
            if py.is_file():
                _compile("", py, str(py.relative_to(root)), 0)
    for name in (*BASE_MODULES, entry):
        try:
            finder.import_hook(name)
        except ImportError as e:
            raise BuildError(f"cannot import {name!r}: {e}") from None
    stdlib: list[FrozenModule] = []
    plugin: list[FrozenModule] = []
    for name, mod in sorted(finder.modules.items()):
        path = Path(mod.__file__) if mod.__file__ else None
        if name in ALREADY_FROZEN or _excluded(name) or path is None or path.suffix != ".py":
            continue
        is_pkg = mod.__path__ is not None
        root = next((r for r in roots if path.is_relative_to(r)), None)
        if root is not None:
            plugin.append(FrozenModule(name, _compile(name, path, str(path.relative_to(root)), 0), is_pkg))
        else:
            stdlib.append(FrozenModule(name, _compile(name, path, f"<frozen {name}>", 2), is_pkg))
    return stdlib, plugin, _check_imports(roots, entry)


def _check_imports(roots: list[Path], entry: str) -> list[str]:
    """Import the plugin once on this interpreter; return the callbacks it needs exported.

    A missing module or name fails the build here (modulefinder cannot tell
    ``from . import absent`` from a global; a real import can). Module bodies only define
    things and register the root context, so this is safe.
    """
    code = (f"import sys, json; sys.path[:0] = {[str(r) for r in roots]!r}; import {entry}; "
            "from proxywasm import contract; print(json.dumps(contract.needed_exports()))")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        raise BuildError(f"importing {entry} failed: {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _c_string(data: bytes) -> str:
    out = []
    for i in range(0, len(data), 64):
        chunk = data[i : i + 64]
        out.append('"' + "".join(f"\\{b:03o}" for b in chunk) + '"')
    return "\n".join(out) or '""'


def to_c(table: str, modules: list[FrozenModule], entry: str | None = None) -> str:
    lines = [f"/* Generated by build/pwbuild/freeze.py: {len(modules)} frozen modules. */",
             "#include <Python.h>"]
    for i, m in enumerate(modules):
        lines.append(f"static const unsigned char m{i}[] =\n{_c_string(m.code)};")
    lines.append(f"const struct _frozen {table}[] = {{")
    for i, m in enumerate(modules):
        lines.append(f'  {{"{m.name}", m{i}, {len(m.code)}, {int(m.is_package)}, NULL}},')
    lines.append("  {NULL, NULL, 0, 0, NULL}\n};")
    if entry is not None:
        lines.append(f'const char pw_entry_module[] = "{entry}";')
    return "\n".join(lines) + "\n"
