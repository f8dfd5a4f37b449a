"""System c: the LiteLLM proxy in its own venv (.venv-litellm/), pinned, offline, same upstream as a and b."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from bench.ai.systems import HERE, KEYS, Running, envoy_config, log  # noqa: E402
from e2e.envoy import Envoy, free_port  # noqa: E402

LITELLM_VENV = REPO / ".venv-litellm"
LITELLM_REQUIREMENTS = HERE / "requirements-litellm.txt"
# .pth files run code at every interpreter start (how the compromised litellm releases struck): allow only these.
LITELLM_PTH_ALLOWED = {"distutils-precedence.pth"}
# Nothing that phones home: no telemetry, the bundled model cost map and other data files instead of
# downloads, no feedback banner; no DATABASE_URL or REDIS_* (the environment is built from scratch, below).
LITELLM_ENV = {
    "LITELLM_LOG": "WARNING",  # also turns uvicorn's per-request access log off (Envoy a/b log nothing either)
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
    "HF_HUB_OFFLINE": "1",
}


def litellm_config(api_base: str) -> dict[str, Any]:
    """LiteLLM proxy config equivalent to b's: model ``bench-model`` is three OpenAI-compatible deployments
    (one per key of b's pool) on the mock upstream, picked by simple-shuffle; a deployment is cooled down for
    30 s after 3 failures (b: 3 consecutive 5xx, 30 s); one retry on another deployment (b: one retry with
    another key on 401/403/429); then fallback to ``bench-fallback`` (b's config has no fallback model:
    fallbacks only act on failures, which the bench has none of). ``forward_client_headers_to_llm_api``
    passes the client's ``x-`` headers on, so ``x-bench-stream`` reaches the mock as it does through a and b.
    No master key, no database: like a and b, no client auth; usage is LiteLLM's default (its logging
    objects compute usage and cost of every response; with no database nothing is stored)."""
    def deployment(name: str, key: str) -> dict[str, Any]:
        return {"model_name": name, "litellm_params": {"model": "openai/bench-model", "api_base": api_base,
                                                       "api_key": key, "timeout": 30}}

    return {
        "model_list": [deployment("bench-model", k) for k in KEYS] + [deployment("bench-fallback", "sk-bench-fb")],
        "router_settings": {"routing_strategy": "simple-shuffle", "num_retries": 1,
                            "fallbacks": [{"bench-model": ["bench-fallback"]}],
                            "allowed_fails": 3, "cooldown_time": 30},
        "litellm_settings": {"telemetry": False, "request_timeout": 30},
        "general_settings": {"forward_client_headers_to_llm_api": True, "trusted_proxy_ranges": []},
    }


def litellm_config_yaml(api_base: str) -> str:
    import yaml  # in .venv (requirements-dev.txt)

    return yaml.safe_dump(litellm_config(api_base), sort_keys=False)


def litellm_version_pinned() -> str:
    for line in LITELLM_REQUIREMENTS.read_text().splitlines():
        if line.startswith("litellm[proxy]=="):
            return line.split("==", 1)[1].strip()
    raise RuntimeError(f"{LITELLM_REQUIREMENTS}: no litellm[proxy]== line")


def ensure_litellm() -> Path:
    """The ``litellm`` command of .venv-litellm/, (re)created from requirements-litellm.txt when missing or
    when that file changed (~1.5 min, ~700 MB)."""
    exe, stamp = LITELLM_VENV / "bin" / "litellm", LITELLM_VENV / ".requirements.sha256"
    want = hashlib.sha256(LITELLM_REQUIREMENTS.read_bytes()).hexdigest()
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return exe
    log(f"installing LiteLLM {litellm_version_pinned()} into {LITELLM_VENV.name}/ (once; ~1.5 min) ...")
    for cmd in ([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)],
                [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 "--only-binary", ":all:", "-r", str(LITELLM_REQUIREMENTS)]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    pth = {p.name for p in LITELLM_VENV.glob("lib/python*/site-packages/*.pth")} - LITELLM_PTH_ALLOWED
    if pth:
        shutil.rmtree(LITELLM_VENV, ignore_errors=True)
        raise RuntimeError(f"unexpected .pth files in the LiteLLM venv (removed it): {sorted(pth)}")
    stamp.write_text(want + "\n")
    return exe


@contextmanager
def litellm_system(cpus: set[int] | None, timeout: float = 180) -> Iterator[Running]:
    """The mock upstream alone in one Envoy, and the LiteLLM proxy in front of it, both pinned to ``cpus``."""
    exe = ensure_litellm()
    admin, upstream, port = free_port(), free_port(), free_port()
    with Envoy(envoy_config("mock", admin, 0, upstream), admin, 1) as mock:
        mock_pid = mock.proc.pid  # type: ignore[union-attr]
        if cpus:
            m.pin(mock_pid, cpus)
        work = Path(tempfile.mkdtemp(prefix="bench-litellm-"))
        cfg = work / "litellm.yaml"
        cfg.write_text(litellm_config_yaml(f"http://127.0.0.1:{upstream}/v1"))
        env = {"PATH": f"{exe.parent}:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", **LITELLM_ENV}
        cmd = [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
               "--telemetry", "False"]
        pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        t0 = time.monotonic()
        with open(work / "litellm.log", "wb") as out:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=pre, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"litellm exited with {proc.returncode}:\n{_tail(work / 'litellm.log')}")
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"litellm not ready after {timeout} s:\n{_tail(work / 'litellm.log')}")
                try:
                    with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.2)
            yield Running(url, [proc.pid, mock_pid], time.monotonic() - t0, None,
                          {"log": str(work / "litellm.log")})
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(work, ignore_errors=True)


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""
