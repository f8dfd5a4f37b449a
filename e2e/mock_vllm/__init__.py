"""A mock OpenAI-compatible vLLM server (standard library only), one server per served model.

It behaves like ``vllm serve <model>`` closely enough to test a gateway in front of it: same routes, same
response and error shapes, real HTTP/1.1 chunked SSE streaming, vLLM-style Prometheus metrics, plus failure
injection. Everything it generates is deterministic.

Run it::

    python -m e2e.mock_vllm --model qwen2-1-5b --port 18101 [--host 127.0.0.1] [--api-key K ...]

It prints ``mock-vllm <model> listening on 127.0.0.1:<port>`` once ready and runs until SIGTERM/SIGINT (exit 0).
In tests use ``serve(model)`` (in-process, ``port=0`` picks a free port) or ``spawn(model, port)`` (subprocess).

Answers come at once unless faults delay them. ``--load-model`` (``serve(model, load_model=True, ...)``) makes the
server behave like a loaded GPU instead: continuous batching, a queue, a KV cache, LoRA adapter slots and an optional
prefix cache, so TTFT and latency grow with load; the formulas and knobs are in ``engine``.

Modules: ``server`` (MockServer, serve), ``handler`` (HTTP, routes), ``completions`` (answers, SSE), ``generation``
(validation, reply, token counts), ``engine`` (load model), ``metrics``, ``faults``, ``recording``, ``process``
(spawn), ``cli``.

Routes (like vLLM)
    ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /metrics``, ``GET /health``.
    With API keys, every ``/v1/...`` path needs ``Authorization: Bearer <key>`` (else 401 ``{"error": "Unauthorized"}``,
    exactly vLLM's body); ``/metrics``, ``/health`` and ``/mock/...`` stay open, as in vLLM. Unknown paths: 404
    ``{"detail": "Not Found"}`` (FastAPI's body). Errors use vLLM's current envelope
    ``{"error": {"message", "type", "param", "code"}}`` (400 ``BadRequestError`` for bad JSON/fields, 404
    ``NotFoundError`` with ``The model `X` does not exist.`` for a wrong ``model``). A missing ``model`` means the
    served one, as in vLLM. The response ``model`` echoes the request's ``model``. With ``--lora-modules a b=/path``
    (vLLM's flag) ``model`` may also name adapter ``a`` or ``b``; ``/v1/models`` lists them with ``parent`` = the
    served model, as vLLM does. ``GET /mock/engine`` shows the load model's config, state and step statistics.

Generation and token counting (documented rule; "token" = whitespace-separated word)
    * reply text: ``"[<served model or adapter>] echo: <text>"`` where ``<text>`` is the last ``user`` message's content
      (chat; the last message if no user message) or the prompt (completions; a list prompt is joined with spaces),
      cut to its first 200 characters. Content given as parts uses the ``text`` parts joined by a space.
    * reply tokens: the words of the reply text, the first one bare and each later one with one leading space
      (``"[m]", " echo:", " hello"``); so streamed deltas concatenate exactly to the non-streamed content.
    * ``max_tokens`` (or ``max_completion_tokens``; default 16, must be >= 1) keeps the first N tokens;
      ``finish_reason`` is ``"length"`` if tokens were cut, else ``"stop"``. ``"ignore_eos": true`` repeats the reply
      words until exactly ``max_tokens`` tokens (finish ``"length"``), like vLLM benchmarks do.
    * ``prompt_tokens``: chat = sum over messages of (1 + words in its content); completions = words in the prompt.
      ``completion_tokens`` = tokens generated; ``total_tokens`` = the sum.
    * ``prompt_tokens + max_tokens > max_model_len`` (4096) -> 400, as vLLM does.
    * tools: a forced call (``tool_choice`` ``"required"`` or ``{"type": "function", "function": {"name"}}``, what
      vLLM's guided decoding serves) answers ``content ""`` and one ``tool_calls`` entry whose ``arguments`` are the
      JSON object of the tool's required parameters filled by type (``"mock"``, ``1``, ``true``, ``[]``, ``{}``),
      six characters a token; ``finish_reason`` stays ``"stop"``, as vLLM's does for forced calls. Streamed, the first
      delta carries the call's ``id``, ``type`` and ``name``, later ones ``{"index": 0, "function": {"arguments"}}``.
      ``"auto"`` is the model's choice: the mock answers text.

Streaming (``"stream": true``)
    ``text/event-stream``, hand-written chunked encoding, one ``data: {json}\\n\\n`` event per token, then
    ``data: [DONE]``. Chat: first chunk ``delta {"role": "assistant", "content": ""}``, then one ``delta {"content"}``
    per token, the last one carrying ``finish_reason``. Completions: ``choices[0].text`` per token. Only with
    ``"stream_options": {"include_usage": true}``: every chunk carries ``"usage": null`` and one extra chunk
    ``{"choices": [], "usage": {...}}`` comes before ``[DONE]``.

Failure injection (applies to POST /v1/chat/completions and /v1/completions only)
    Persistent: ``MockServer.set_fault(**keys)`` / ``POST /mock/fault`` (JSON object of keys), cleared by
    ``clear_fault()`` / ``DELETE /mock/fault``; ``GET /mock/fault`` shows it. Keys (see ``Fault``):
    ``status`` (400..599: answer with that status and an error body), ``message`` (its text), ``retry_after`` (adds a
    ``retry-after`` header), ``delay_ms`` (sleep before answering), ``ttft_ms`` (sleep before the first streamed
    event; added to the delay when not streaming), ``token_delay_ms`` (sleep before each further event),
    ``drop_after_chunks`` (streaming: send N events, then close the TCP connection without the terminating chunk;
    non-streaming: send the headers and half the body, then close), ``drop`` (close without any response),
    ``reset`` (make those closes a TCP RST instead of a FIN), ``fail_count`` (the fault applies to the next N
    completion requests only, then clears itself). Real servers' ways: ``no_usage`` (ignore
    ``stream_options.include_usage`` and send no ``usage`` at all, as older llama.cpp and some TGI builds do),
    ``ping_ms`` (streaming: while ``ttft_ms`` passes, an SSE comment ``: ping - <time>`` every ``ping_ms``, as
    sse-starlette servers do while a request is queued), ``sse_newline`` (``lf``, ``crlf`` or ``cr``: the line end
    of every event, its blank line made of two).
    Per request, headers override the persistent fault: ``x-mock-status``, ``x-mock-message``,
    ``x-mock-retry-after``, ``x-mock-delay-ms``, ``x-mock-ttft-ms``, ``x-mock-token-delay-ms``,
    ``x-mock-drop-after-chunks``, ``x-mock-drop`` (``1``/``true``), ``x-mock-reset``, ``x-mock-no-usage``,
    ``x-mock-ping-ms``, ``x-mock-sse-newline``.

Recorded requests
    ``MockServer.requests`` (the last 1000, ``Recorded``: method, path, query, headers lowercased, body = parsed
    JSON or raw bytes, api_key = the accepted key or None); ``GET /mock/requests[?path=/v1/...]`` answers
    ``{"count": <received since last clear>, "requests": [last 50, oldest first]}`` (with ``?path=`` only the kept
    requests to that path, and count = how many of those); ``DELETE /mock/requests`` clears.
    ``/mock/...`` calls themselves are not recorded.

Metrics (``GET /metrics``, Prometheus text, label ``model_name``)
    gauges ``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` (real: a request is waiting until one of
    ``max_num_seqs`` (8) slots is free, running while it is generated/delayed/streamed),
    ``vllm:gpu_cache_usage_perc`` and ``vllm:kv_cache_usage_perc`` (= running / max_num_seqs, 0..1; with the load
    model: tokens held / KV capacity), ``vllm:lora_requests_info`` (with adapters: one series per label set seen, the
    current one valued now, as vLLM's prometheus_client does; see ``metrics``); counters ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
    ``vllm:request_success_total{finished_reason=stop|length|abort}``; histograms
    ``vllm:time_to_first_token_seconds`` and ``vllm:e2e_request_latency_seconds``. Injected status/drop faults do
    not reach the "engine" and count nowhere.
"""

from __future__ import annotations

from .cli import READY_RE, main
from .engine import Engine, EngineConfig, PrefixCache, decode_tokens_per_s, step_ms
from .faults import HEADER_FAULTS, Fault
from .generation import (
    DEFAULT_MAX_TOKENS,
    ECHO_CHARS,
    ERROR_TYPES,
    MAX_MODEL_LEN,
    ApiError,
    Generation,
    count_words,
    plan,
)
from .handler import COMPLETION_PATHS, MAX_BODY_BYTES
from .metrics import DEFAULT_MAX_NUM_SEQS, E2E_BUCKETS, TTFT_BUCKETS, Histogram, Metrics
from .process import REPO, MockProcess, spawn
from .recording import MAX_RECORDED, MOCK_REQUESTS_SHOWN, Recorded
from .server import MockServer, parse_lora_modules, serve

__all__ = [
    "COMPLETION_PATHS",
    "DEFAULT_MAX_NUM_SEQS",
    "DEFAULT_MAX_TOKENS",
    "E2E_BUCKETS",
    "ECHO_CHARS",
    "ERROR_TYPES",
    "HEADER_FAULTS",
    "MAX_BODY_BYTES",
    "MAX_MODEL_LEN",
    "MAX_RECORDED",
    "MOCK_REQUESTS_SHOWN",
    "READY_RE",
    "REPO",
    "TTFT_BUCKETS",
    "ApiError",
    "Engine",
    "EngineConfig",
    "Fault",
    "Generation",
    "Histogram",
    "Metrics",
    "MockProcess",
    "MockServer",
    "PrefixCache",
    "Recorded",
    "count_words",
    "decode_tokens_per_s",
    "main",
    "parse_lora_modules",
    "plan",
    "serve",
    "spawn",
    "step_ms",
]
