"""The toolchain: reproducible output, no needless rebuilds, clear errors, audited imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxywasm import abi
from proxywasm.hostcalls import pack_pairs
from proxywasm.testing.shim_twins import unpack_pairs
from pwbuild.audit import audit, read_module
from pwbuild.toolchain import BuildError
from pwbuild.wasistubs import KEEP

from .conftest import PLUGINS, REPO, wasm_path

PWBUILD = [sys.executable, str(REPO / "build" / "pwbuild")]


def run_build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PWBUILD, *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def test_same_input_gives_identical_bytes_and_is_not_rebuilt(tmp_path: Path) -> None:
    first = wasm_path("sdk_ops")
    out = tmp_path / "again.wasm"
    # a fresh object cache: every generated source is frozen and compiled again
    r = run_build("sdk_ops", "--path", str(PLUGINS), "-o", str(out), "--cache", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == first.read_bytes()
    mtime = out.stat().st_mtime_ns
    r = run_build("sdk_ops", "--path", str(PLUGINS), "-o", str(out), "--cache", str(tmp_path / "cache"))
    assert r.returncode == 0 and "up to date" in r.stdout
    assert out.stat().st_mtime_ns == mtime


def test_changed_plugin_is_rebuilt(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "tiny"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from proxywasm import RootContext, set_root_context\nset_root_context(RootContext)\n")
    out = tmp_path / "tiny.wasm"
    assert run_build("tiny", "--path", str(tmp_path / "src"), "-o", str(out)).returncode == 0
    before = out.read_bytes()
    (pkg / "__init__.py").write_text("from proxywasm import RootContext, set_root_context\nX = 1\nset_root_context(RootContext)\n")
    r = run_build("tiny", "--path", str(tmp_path / "src"), "-o", str(out))
    assert r.returncode == 0 and "built" in r.stdout
    assert out.read_bytes() != before


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    pkg = tmp_path / "broken"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import helper\n")
    (pkg / "helper.py").write_text("x = 1\n\ndef f(:\n    pass\n")
    r = run_build("broken", "--path", str(tmp_path), "-o", str(tmp_path / "b.wasm"))
    assert r.returncode == 1
    assert f"{pkg / 'helper.py'}:3:" in r.stderr
    assert not (tmp_path / "b.wasm").exists()


def test_missing_plugin_module_is_an_error(tmp_path: Path) -> None:
    pkg = tmp_path / "needy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import nothere\n")
    r = run_build("needy", "--path", str(tmp_path), "-o", str(tmp_path / "n.wasm"))
    assert r.returncode == 1 and "importing needy failed" in r.stderr and "nothere" in r.stderr


def test_unknown_entry_is_an_error(tmp_path: Path) -> None:
    r = run_build("no_such_plugin", "-o", str(tmp_path / "x.wasm"))
    assert r.returncode == 1 and "entry module 'no_such_plugin' not found" in r.stderr


def test_built_module_fits_the_host() -> None:
    info = audit(wasm_path("sdk_ops"), abi)
    wasi = {n for m, n in info.imports if m == "wasi_snapshot_preview1"}
    assert wasi <= KEEP <= abi.WASI_ALLOWED | KEEP
    assert wasi <= abi.WASI_ALLOWED
    env = {n for m, n in info.imports if m == "env"}
    assert env == {f.name for f in abi.imports_for("")}  # every stock host call is offered to Python
    assert "proxy_redis_call" not in env  # Higress-only: stock Envoy would refuse the module
    for ex in abi.EXPORTS:
        if ex.name in info.exports or not ex.hot:
            assert info.exports[ex.name] == abi.export_signature(ex)
    # hot callbacks the sdk_ops plugin does not override are not exported: Envoy skips them
    for name in ("proxy_on_log", "proxy_on_done", "proxy_on_request_trailers", "proxy_on_response_trailers"):
        assert name not in info.exports
    assert {"proxy_on_request_headers", "proxy_on_response_body", "proxy_on_delete"} <= set(info.exports)


def test_higress_variant_imports_the_redis_calls_and_only_it() -> None:
    info = audit(wasm_path("ai_gateway", "higress"), abi, "higress")
    env = {n for m, n in info.imports if m == "env"}
    assert {"proxy_redis_init", "proxy_redis_call"} <= env
    assert info.exports["proxy_on_redis_call_response"] == (("i32",) * 4, ())
    with pytest.raises(BuildError, match="only the higress host provides"):
        audit(wasm_path("ai_gateway", "higress"), abi)  # judged as a stock-Envoy module: refused
    stock = audit(wasm_path("ai_gateway"), abi)
    assert not {n for m, n in stock.imports if n.startswith("proxy_redis")}


def _module(imports: list[tuple[str, str]], exports: list[str] = ()) -> bytes:
    """A minimal wasm module: one () -> i32 type, the given function imports and exports."""
    def leb(n: int) -> bytes:
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def name(s: str) -> bytes:
        return leb(len(s)) + s.encode()

    def section(sid: int, body: bytes) -> bytes:
        return bytes([sid]) + leb(len(body)) + body

    types = section(1, leb(1) + b"\x60\x00\x01\x7f")
    imps = section(2, leb(len(imports)) + b"".join(name(m) + name(n) + b"\x00\x00" for m, n in imports))
    exps = section(7, leb(len(exports)) + b"".join(name(e) + b"\x00" + leb(0) for e in exports))
    return b"\0asm\x01\0\0\0" + types + imps + exps


def test_audit_rejects_imports_envoy_lacks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(_module([("wasi_snapshot_preview1", "path_link"), ("env", "proxy_log")]))
    with pytest.raises(BuildError) as e:
        audit(bad, abi)
    msg = str(e.value)
    assert "wasi_snapshot_preview1.path_link" in msg
    assert "import env.proxy_log has signature" in msg  # () -> i32 is not proxy_log's
    assert "missing export _initialize" in msg


def test_read_module_sees_imports_and_exports() -> None:
    info = read_module(_module([("env", "proxy_done")], ["proxy_done_export"]))
    assert info.imports == {("env", "proxy_done"): ((), ("i32",))}
    assert info.exports == {"proxy_done_export": ((), ("i32",))}


header = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(st.tuples(header, header), max_size=8))
def test_header_pairs_roundtrip(pairs: list[tuple[str, str]]) -> None:
    assert unpack_pairs(pack_pairs(pairs)) == pairs
