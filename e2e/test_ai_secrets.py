"""Upstream API keys outside the plugin configuration, in a real Envoy (issue 23.8).

A key written in ``api_keys.keys`` is part of the plugin configuration, so Envoy's admin ``/config_dump`` shows
it in full. ``api_keys.keys_env`` names environment variables of the Wasm VM instead: Envoy passes the variables
listed in ``vm_config.environment_variables.host_env_keys`` from its own environment (a Kubernetes Secret, a
systemd credential), and ``/config_dump`` shows only their names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from e2e.ai_stack import GEMMA, QWEN, AiStack, chat

Launch = Callable[..., AbstractContextManager[AiStack]]
ENV_KEY, INLINE_KEY = "sk-from-the-environment-7d1c", "sk-inline-in-the-config-93ab"
VM_ID = "                  vm_id: ai_gateway\n"
QWEN_ENTRY = '{"name": "qwen2-1-5b", "cluster": "qwen2-1-5b",'
GEMMA_ENTRY = '{"name": "gemma-2-2b", "cluster": "gemma-2-2b"}'


def test_keys_from_envoy_environment_stay_out_of_config_dump(ai_launch: Launch,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_GEMMA_KEY", ENV_KEY + "\n")  # as read from a secret file: the newline is dropped
    replace = {
        VM_ID: VM_ID + "                  environment_variables: {host_env_keys: [AIGW_GEMMA_KEY]}\n",
        GEMMA_ENTRY: '{"name": "gemma-2-2b", "cluster": "gemma-2-2b", "api_keys": {"keys_env": ["AIGW_GEMMA_KEY"]}}',
        QWEN_ENTRY: QWEN_ENTRY + f' "api_keys": {{"keys": ["{INLINE_KEY}"]}},',
    }
    with ai_launch(replace=replace) as s:
        for model in (GEMMA, QWEN):
            assert chat(s, model).http_response.status_code == 200
        (seen,) = s.gemma.requests()
        assert seen["headers"]["authorization"] == f"Bearer {ENV_KEY}"
        assert s.qwen.requests()[0]["headers"]["authorization"] == f"Bearer {INLINE_KEY}"
        dump = s.envoy.admin("/config_dump")
        json.loads(dump)
        assert "AIGW_GEMMA_KEY" in dump and ENV_KEY not in dump  # only the variable's name
        assert INLINE_KEY in dump  # what the README warns about: inline keys are shown in full
        assert ENV_KEY not in s.envoy.log_path.read_text(errors="replace")
