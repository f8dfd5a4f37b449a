"""A real redis-server (Debian's) on a free loopback port, and webdis (Debian's HTTP front for Redis) before it.

Used by the unit tests (the test hosts run Higress's Redis calls against it) and by e2e (two Envoys share it).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, proc: subprocess.Popen, what: str, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}")


class Redis:
    def __init__(self, port: int, proc: subprocess.Popen) -> None:
        self.port, self.proc = port, proc

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


@contextmanager
def redis_server() -> Iterator[Redis]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is missing: run ./dev (build/bootstrap.py installs it)")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--logfile", ""], stdout=subprocess.DEVNULL)
    try:
        _wait(port, proc, "redis-server")
        yield Redis(port, proc)
    finally:
        proc.terminate()
        proc.wait(5)


@contextmanager
def webdis(redis_port: int) -> Iterator[int]:
    """webdis on a free port in front of the redis-server on ``redis_port``; yields its port."""
    if shutil.which("webdis") is None:
        raise RuntimeError("webdis is missing: run ./dev (build/bootstrap.py installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "webdis.json"
        conf.write_text(json.dumps({"redis_host": "127.0.0.1", "redis_port": redis_port, "http_host": "127.0.0.1",
                                    "http_port": port, "threads": 2, "daemonize": False,
                                    "database": 0, "verbosity": 0, "logfile": str(Path(tmp) / "webdis.log")}))
        proc = subprocess.Popen(["webdis", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(port, proc, "webdis")
            yield port
        finally:
            proc.terminate()
            proc.wait(5)
