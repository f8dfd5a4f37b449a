"""``spawn()``: the mock as a subprocess (``python -m e2e.mock_vllm``), ready when it prints its listening line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from .cli import READY_RE

REPO = Path(__file__).resolve().parents[2]


class MockProcess(subprocess.Popen):
    """``spawn()``'s result: a Popen with ``model``, ``port`` and ``url`` of the ready server, and ``stop()``."""

    model: str
    port: int
    url: str

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; return the exit code."""
        if self.poll() is None:
            self.terminate()
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.wait()
        if self.stdout:
            self.stdout.close()
        return code


def spawn(model: str, port: int = 0, *, api_keys: tuple[str, ...] = (), args: tuple[str, ...] = (),
          timeout: float = 10.0) -> MockProcess:
    """Run ``python -m e2e.mock_vllm`` and wait (``timeout`` s) for its ready line; ``port=0`` picks a free port."""
    cmd = [sys.executable, "-m", "e2e.mock_vllm", "--model", model, "--port", str(port)]
    cmd += [f"--api-key={k}" for k in api_keys]
    cmd += list(args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = MockProcess(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    out = proc.stdout
    assert out is not None
    reader = threading.Thread(target=lambda: lines.append(out.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    match = READY_RE.match(lines[0].strip()) if lines else None
    if match is None:
        proc.stop(timeout=2)
        raise RuntimeError(f"mock-vllm {model!r} was not ready within {timeout}s (exit code {proc.returncode}, "
                           f"first line {lines[0].strip()!r})" if lines else
                           f"mock-vllm {model!r} was not ready within {timeout}s")
    proc.model, proc.port = model, int(match[3])
    proc.url = f"http://{match[2]}:{proc.port}"
    return proc
