"""Mock hosted providers for e2e tests and benches: Anthropic's Messages API, Gemini's generateContent and Azure
OpenAI's deployment paths, each as its documented API behaves (no network is reachable here).

``serve(kind, keys=(...))`` starts one on a loopback port in a background thread (``.url``, ``.requests``,
``.fault(...)``, ``.shutdown()``); ``python -m e2e.mock_providers anthropic --port 18111 --key k`` runs one alone.

What each checks and answers, as the real API does (warts included):

* **anthropic** — ``POST /v1/messages``; ``x-api-key`` (401 ``authentication_error``), ``anthropic-version``
  required (400); unknown top-level fields are rejected (``stream_options: Extra inputs are not permitted``);
  ``max_tokens`` required; roles ``user``/``assistant`` only. Answers a ``message`` (text, or a ``tool_use``
  block when tools are offered and no tool result came back yet) or the SSE events ``message_start``,
  ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta``/``input_json_delta``),
  ``content_block_stop``, ``message_delta``, ``message_stop``. Errors ``{"type": "error", "error": {...}}``;
  529 ``overloaded_error``, 429 ``rate_limit_error`` with ``retry-after``.
* **gemini** — ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse`` (events end
  with CRLF CRLF, no end marker; without ``alt=sse`` a JSON array); ``x-goog-api-key`` (a wrong key is a 400
  ``INVALID_ARGUMENT``, a missing one 403 ``PERMISSION_DENIED``); unknown fields rejected (``Unknown name``);
  errors ``{"error": {"code", "message", "status"}}``; 429 ``RESOURCE_EXHAUSTED``, 503 ``UNAVAILABLE``.
* **azure** — ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``; ``api-key`` (401);
  no ``api-version``: 404 ``Resource not found``; another deployment: 404 ``DeploymentNotFound``; OpenAI's
  answers with Azure's ``prompt_filter_results`` (a stream's first chunk has no choices).

Faults (``fault(...)`` or ``POST /mock/fault``): ``status`` (answer this error, for ``count`` requests or all),
``cut_after`` (stream this many events, then close the connection without ending the body), ``stream_error``
(Anthropic: an ``error`` event after the first delta), ``token_delay_ms`` (between streamed events), ``tokens``
(words per answer, 12 by default).
"""

from __future__ import annotations

from .server import ProviderMock, serve

__all__ = ["ProviderMock", "serve"]
