"""The kind e2e's pieces that run here: the checker against the local Envoy (it must pass on a working gateway and
fail on a broken one) and the mock vLLM pod entry (relay in front of the loopback-only mock)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from e2e.ai_stack import CANARY, GEMMA, QWEN, AiStack, plugin_config, send, wait_for
from e2e.envoy import REPO, free_port
from e2e.kind import check

Launch = Callable[..., AbstractContextManager[AiStack]]


def run_checker(stack: AiStack, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = check.main(["--url", stack.url, "--admin", f"http://127.0.0.1:{stack.envoy.admin_port}",
                     "--qwen-control", stack.qwen.url, "--wait", "20"])
    return rc, capsys.readouterr().out


def test_checker_passes_on_the_demo_gateway(ai_launch: Launch, capsys: pytest.CaptureFixture[str]) -> None:
    with ai_launch() as stack:
        rc, out = run_checker(stack, capsys)
    assert rc == 0, out
    assert "6/6 checks passed" in out
    assert "PASS fallback qwen2-1-5b -> gemma-2-2b on 503" in out and "PASS metrics" in out


def test_checker_fails_when_the_alias_does_not_split(ai_launch: Launch, capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"models": [{"name": QWEN, "cluster": QWEN, "fallback": {"models": [GEMMA]}}, {"name": GEMMA, "cluster": GEMMA}],
           "aliases": [{"name": CANARY, "targets": [{"model": QWEN, "weight": 1}, {"model": GEMMA, "weight": 0}]}]}
    with ai_launch(replace=plugin_config(json.dumps(doc))) as stack:
        rc, out = run_checker(stack, capsys)
    assert rc == 1
    assert "FAIL chat-canary splits 50/50" in out and "PASS routing by model" in out


def test_mock_pod_relays_to_the_mock() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "e2e.kind.mock_pod", "--model", GEMMA, "--port", str(port),
                             "--listen-host", "127.0.0.1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _ok(f"{url}/health"), timeout=15), "relay/mock not up"
        r = send(f"{url}/v1/chat/completions", "POST", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                                        "stream": True})
        assert r.status == 200 and b'"content": " hi"' in r.body.replace(b'":"', b'": "')
        assert r.body.rstrip().endswith(b"data: [DONE]")
    finally:
        proc.terminate()
        assert proc.wait(15) == 0  # SIGTERM stops the relay and the mock cleanly


def _ok(url: str) -> bool:
    try:
        return send(url).status == 200
    except OSError:
        return False
