"""A mock OpenAI-compatible vLLM server (standard library only), one server per served model.

It behaves like ``vllm serve <model>`` closely enough to test a gateway in front of it: same routes, same
response and error shapes, real HTTP/1.1 chunked SSE streaming, vLLM-style Prometheus metrics, plus failure
injection. Everything it generates is deterministic.

Run it::

    python -m e2e.mock_vllm --model qwen2-1-5b --port 18101 [--host 127.0.0.1] [--api-key K ...]

It prints ``mock-vllm <model> listening on 127.0.0.1:<port>`` once ready and runs until SIGTERM/SIGINT (exit 0).
In tests use ``serve(model)`` (in-process, ``port=0`` picks a free port) or ``spawn(model, port)`` (subprocess).

Routes (like vLLM)
    ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /metrics``, ``GET /health``.
    With API keys, every ``/v1/...`` path needs ``Authorization: Bearer <key>`` (else 401 ``{"error": "Unauthorized"}``,
    exactly vLLM's body); ``/metrics``, ``/health`` and ``/mock/...`` stay open, as in vLLM. Unknown paths: 404
    ``{"detail": "Not Found"}`` (FastAPI's body). Errors use vLLM's current envelope
    ``{"error": {"message", "type", "param", "code"}}`` (400 ``BadRequestError`` for bad JSON/fields, 404
    ``NotFoundError`` with ``The model `X` does not exist.`` for a wrong ``model``). A missing ``model`` means the
    served one, as in vLLM. The response ``model`` echoes the request's ``model``.

Generation and token counting (documented rule; "token" = whitespace-separated word)
    * reply text: ``"[<served model>] echo: <text>"`` where ``<text>`` is the last ``user`` message's content
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
    completion requests only, then clears itself).
    Per request, headers override the persistent fault: ``x-mock-status``, ``x-mock-message``,
    ``x-mock-retry-after``, ``x-mock-delay-ms``, ``x-mock-ttft-ms``, ``x-mock-token-delay-ms``,
    ``x-mock-drop-after-chunks``, ``x-mock-drop`` (``1``/``true``), ``x-mock-reset``.

Recorded requests
    ``MockServer.requests`` (the last 1000, ``Recorded``: method, path, query, headers lowercased, body = parsed
    JSON or raw bytes, api_key = the accepted key or None); ``GET /mock/requests[?path=/v1/...]`` answers
    ``{"count": <received since last clear>, "requests": [last 50, oldest first]}`` (with ``?path=`` only the kept
    requests to that path, and count = how many of those); ``DELETE /mock/requests`` clears.
    ``/mock/...`` calls themselves are not recorded.

Metrics (``GET /metrics``, Prometheus text, label ``model_name``)
    gauges ``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` (real: a request is waiting until one of
    ``max_num_seqs`` (8) slots is free, running while it is generated/delayed/streamed),
    ``vllm:gpu_cache_usage_perc`` and ``vllm:kv_cache_usage_perc`` (= running / max_num_seqs, 0..1),
    ``vllm:lora_requests_info``; counters ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``,
    ``vllm:request_success_total{finished_reason=stop|length|abort}``; histograms
    ``vllm:time_to_first_token_seconds`` and ``vllm:e2e_request_latency_seconds``. Injected status/drop faults do
    not reach the "engine" and count nowhere.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MAX_MODEL_LEN = 4096
DEFAULT_MAX_TOKENS = 16
ECHO_CHARS = 200
MAX_RECORDED = 1000
MOCK_REQUESTS_SHOWN = 50
MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_NUM_SEQS = 8
READY_RE = re.compile(r"^mock-vllm (\S+) listening on ([0-9.]+):(\d+)$")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
               404: "NotFoundError", 408: "RequestTimeoutError", 409: "ConflictError",
               422: "UnprocessableEntityError", 429: "RateLimitError", 500: "InternalServerError",
               501: "NotImplementedError", 503: "ServiceUnavailableError"}
COMPLETION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "text"}


# ----------------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """What to break. Every field's name is also its key in ``set_fault()`` and ``POST /mock/fault``."""

    status: int | None = None
    message: str | None = None
    retry_after: str | None = None
    delay_ms: int = 0
    ttft_ms: int = 0
    token_delay_ms: int | None = None
    drop_after_chunks: int | None = None
    drop: bool = False
    reset: bool = False
    fail_count: int | None = None

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> Fault:
        """Validate a JSON-ish mapping; raise ``ValueError`` naming the bad key."""
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown fault key(s) {sorted(unknown)}; known: {sorted(known)}")
        out: dict[str, Any] = {}
        for key, value in doc.items():
            if value is None:
                continue
            if key in ("drop", "reset"):
                out[key] = _as_bool(key, value)
            elif key == "message":
                out[key] = str(value)
            elif key == "retry_after":
                out[key] = str(_as_int(key, value, 0))
            elif key == "status":
                out[key] = _as_int(key, value, 400, 599)
            elif key == "fail_count":
                out[key] = _as_int(key, value, 1)
            else:
                out[key] = _as_int(key, value, 0)
        return cls(**out)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False, 0)}


HEADER_FAULTS = {"x-mock-status": "status", "x-mock-message": "message", "x-mock-retry-after": "retry_after",
                 "x-mock-delay-ms": "delay_ms", "x-mock-ttft-ms": "ttft_ms", "x-mock-token-delay-ms": "token_delay_ms",
                 "x-mock-drop-after-chunks": "drop_after_chunks", "x-mock-drop": "drop", "x-mock-reset": "reset"}


def _as_int(key: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool):
        raise ValueError(f"fault {key!r} must be an integer")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"fault {key!r} must be an integer, got {value!r}") from None
    if n < lo or (hi is not None and n > hi):
        raise ValueError(f"fault {key!r} must be in [{lo}, {hi if hi is not None else 'inf'}], got {n}")
    return n


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"fault {key!r} must be a boolean, got {value!r}")


# --------------------------------------------------------------------------------------------- recording


@dataclass
class Recorded:
    """One received request. ``body`` is the parsed JSON value, or the raw bytes when it is not JSON."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    api_key: str | None = None
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["body_is_json"] = not isinstance(self.body, bytes)
        if isinstance(self.body, bytes):
            doc["body"] = self.body.decode("utf-8", "replace")
        return doc


# ----------------------------------------------------------------------------------------------- metrics


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, le in enumerate(self.buckets):
            if value <= le:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, help_text: str, labels: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        lines += [f'{name}_bucket{{{labels},le="{le}"}} {float(n)}' for le, n in zip(self.buckets, self.counts, strict=True)]
        lines += [f'{name}_bucket{{{labels},le="+Inf"}} {float(self.count)}',
                  f"{name}_count{{{labels}}} {float(self.count)}", f"{name}_sum{{{labels}}} {self.sum!r}"]
        return lines


class Metrics:
    """Engine-side counters. ``slot()`` is the scheduler: waiting until one of ``max_num_seqs`` slots is free."""

    def __init__(self, model: str, max_num_seqs: int) -> None:
        self.model = model
        self.max_num_seqs = max_num_seqs
        self.cond = threading.Condition()
        self.running = 0
        self.waiting = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = {"stop": 0, "length": 0, "abort": 0}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.started = time.time()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self.cond:
            self.waiting += 1
            try:
                while self.running >= self.max_num_seqs:
                    self.cond.wait()
            finally:
                self.waiting -= 1
            self.running += 1
        try:
            yield
        finally:
            with self.cond:
                self.running -= 1
                self.cond.notify()

    def first_token(self, seconds: float) -> None:
        with self.cond:
            self.ttft.observe(seconds)

    def finished(self, reason: str, prompt_tokens: int, generated: int, seconds: float) -> None:
        with self.cond:
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += generated
            self.success[reason] += 1
            self.e2e.observe(seconds)

    def render(self) -> str:
        m = f'model_name="{self.model}"'
        with self.cond:
            usage = min(1.0, self.running / self.max_num_seqs)
            lines = [
                "# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge",
                f"vllm:num_requests_running{{{m}}} {float(self.running)}",
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
                "# TYPE vllm:num_requests_waiting gauge",
                f"vllm:num_requests_waiting{{{m}}} {float(self.waiting)}",
                "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.",
                "# TYPE vllm:gpu_cache_usage_perc gauge",
                f"vllm:gpu_cache_usage_perc{{{m}}} {usage!r}",
                "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
                "# TYPE vllm:kv_cache_usage_perc gauge",
                f"vllm:kv_cache_usage_perc{{{m}}} {usage!r}",
                "# HELP vllm:lora_requests_info Running stats on lora requests.",
                "# TYPE vllm:lora_requests_info gauge",
                f'vllm:lora_requests_info{{max_lora="1",running_lora_adapters="",waiting_lora_adapters=""}} '
                f"{self.started!r}",
                "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
                "# TYPE vllm:prompt_tokens_total counter",
                f"vllm:prompt_tokens_total{{{m}}} {float(self.prompt_tokens)}",
                "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
                "# TYPE vllm:generation_tokens_total counter",
                f"vllm:generation_tokens_total{{{m}}} {float(self.generation_tokens)}",
                "# HELP vllm:request_success_total Count of successfully processed requests.",
                "# TYPE vllm:request_success_total counter",
            ]
            lines += [f'vllm:request_success_total{{finished_reason="{r}",{m}}} {float(n)}'
                      for r, n in self.success.items()]
            lines += self.ttft.render("vllm:time_to_first_token_seconds",
                                      "Histogram of time to first token in seconds.", m)
            lines += self.e2e.render("vllm:e2e_request_latency_seconds",
                                     "Histogram of e2e request latency in seconds.", m)
        return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- generation


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, err_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = err_type or ERROR_TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}


@dataclass(frozen=True)
class Generation:
    tokens: list[str]
    finish_reason: str
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def usage(self, generated: int | None = None) -> dict[str, int]:
        n = len(self.tokens) if generated is None else generated
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}


def count_words(text: str) -> int:
    return len(text.split())


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p)
    return str(content)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return " ".join(_prompt_text(p) for p in prompt)
    return "" if prompt is None else str(prompt)


def plan(served: str, kind: str, req: Any, max_model_len: int = MAX_MODEL_LEN) -> Generation:
    """Validate a completion request the way vLLM does and decide the reply (see the module docstring)."""
    if not isinstance(req, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    model = req.get("model")
    if model is not None and model != served:
        raise ApiError(404, f"The model `{model}` does not exist.")
    if kind == "chat":
        messages = req.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "Field 'messages' is required and must be a list of message objects.", "messages")
        texts = [_content_text(m.get("content")) for m in messages]
        prompt_tokens = sum(1 + count_words(t) for t in texts)
        users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
        echo = users[-1] if users else (texts[-1] if texts else "")
    else:
        if "prompt" not in req:
            raise ApiError(400, "Field 'prompt' is required.", "prompt")
        echo = _prompt_text(req["prompt"])
        prompt_tokens = count_words(echo)
    stream = req.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "Field 'stream' must be a boolean.", "stream")
    if req.get("stream_options") is not None and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
    max_tokens = req.get("max_completion_tokens") if kind == "chat" else None
    if max_tokens is None:
        max_tokens = req.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise ApiError(400, f"max_tokens must be an integer, got {max_tokens!r}.", "max_tokens")
    if max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    if prompt_tokens + max_tokens > max_model_len:
        raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
                            f"the completion). Please reduce the length of the messages or completion.")
    words = f"[{served}] echo: {echo[:ECHO_CHARS]}".split()
    if req.get("ignore_eos") is True:
        words = [words[i % len(words)] for i in range(max_tokens)]
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    finish = "length" if len(tokens) > max_tokens or req.get("ignore_eos") is True else "stop"
    return Generation(tokens[:max_tokens], finish, prompt_tokens)


# ---------------------------------------------------------------------------------------------- HTTP side


class _Dropped(Exception):
    """The connection was closed on purpose (fault) or by the client: nothing more to write."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], mock: MockServer) -> None:
        self.mock = mock
        self.open_sockets: set[socket.socket] = set()
        self.reset_sockets: set[socket.socket] = set()  # to close with an RST: no FIN (shutdown) first
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve socket.getfqdn(host): a reverse-DNS lookup that can stall startup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
            reset = request in self.reset_sockets
            self.reset_sockets.discard(request)
        if reset:
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def close_all(self) -> None:
        with self.sockets_lock:
            socks = list(self.open_sockets)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client going away is normal; anything else is a bug worth one line on stderr (never headers/keys).
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            print(f"mock-vllm {self.mock.model}: handler error {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        self.timeout = self.server.mock.keepalive_timeout
        super().setup()
        # Headers and body go out in separate writes: without NODELAY, Nagle + delayed ACK
        # hold the body back ~40 ms, which would pollute every latency the gateway measures.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return "uvicorn"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ---- plumbing

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline(64).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                if len(out) + size > MAX_BODY_BYTES:
                    raise ValueError("request body too large")
                out += self.rfile.read(size)
                self.rfile.readline(8)
        length = int(self.headers.get("content-length") or 0)
        if length < 0 or length > MAX_BODY_BYTES:
            raise ValueError("bad content-length")
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _json(self, status: int, doc: Any, extra: Mapping[str, str] | None = None) -> None:
        self._send(status, _dumps(doc), "application/json", extra)

    def _close_abruptly(self, reset: bool) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            if reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with self.server.sockets_lock:
                    self.server.reset_sockets.add(self.connection)
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        raise _Dropped

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # ---- dispatch

    def _dispatch(self) -> None:
        mock = self.server.mock
        try:
            raw = self._read_body()
        except ValueError as e:
            self.close_connection = True
            self._json(413 if "large" in str(e) else 400, ApiError(400, str(e)).body())
            return
        path, _, query = self.path.partition("?")
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        body: Any = raw
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        rec = Recorded(self.command, path, query, headers, body)
        if not path.startswith("/mock/"):
            mock._record(rec)
        try:
            self._route(mock, rec, raw)
        except _Dropped:
            self.close_connection = True
        except OSError:  # the client went away mid-answer: forget the connection, keep serving others
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def _route(self, mock: MockServer, rec: Recorded, raw: bytes) -> None:
        path, method = rec.path, self.command
        if path.startswith("/mock/"):
            return self._control(mock, rec, raw)
        if path in ("/metrics", "/health"):
            if method not in ("GET", "HEAD"):
                return self._json(405, {"detail": "Method Not Allowed"}, {"allow": "GET"})
            if path == "/health":
                return self._send(200, b"", "application/json")
            return self._send(200, mock.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path.startswith("/v1") and mock.api_keys:
            scheme, _, token = (rec.headers.get("authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or token not in mock.api_keys:
                return self._json(401, {"error": "Unauthorized"})
            rec.api_key = token
        if path == "/v1/models":
            if method != "GET":
                return self._json(405, {"detail": "Method Not Allowed"}, {"allow": "GET"})
            return self._json(200, mock.models_doc())
        kind = COMPLETION_PATHS.get(path)
        if kind is None:
            return self._json(404, {"detail": "Not Found"})
        if method != "POST":
            return self._json(405, {"detail": "Method Not Allowed"}, {"allow": "POST"})
        return self._complete(mock, kind, rec, raw)

    def _control(self, mock: MockServer, rec: Recorded, raw: bytes) -> None:
        method = self.command
        if rec.path == "/mock/fault":
            if method == "GET":
                return self._json(200, mock.fault_doc())
            if method == "DELETE":
                mock.clear_fault()
                return self._json(200, mock.fault_doc())
            if method in ("POST", "PUT"):
                try:
                    doc = json.loads(raw or b"{}")
                    if not isinstance(doc, dict):
                        raise ValueError("fault must be a JSON object")
                    mock.set_fault(**doc)
                except ValueError as e:
                    return self._json(400, ApiError(400, str(e)).body())
                return self._json(200, mock.fault_doc())
        if rec.path == "/mock/requests":
            if method == "GET":
                wanted = dict(p.partition("=")[::2] for p in rec.query.split("&") if p).get("path")
                reqs = [r for r in mock.requests if wanted is None or r.path == wanted]
                count = mock.request_count if wanted is None else len(reqs)
                return self._json(200, {"count": count,
                                        "requests": [r.to_json() for r in reqs[-MOCK_REQUESTS_SHOWN:]]})
            if method == "DELETE":
                mock.clear_requests()
                return self._json(200, {"count": 0, "requests": []})
        return self._json(404, {"detail": "Not Found"})

    # ---- completions

    def _complete(self, mock: MockServer, kind: str, rec: Recorded, raw: bytes) -> None:
        t0 = time.monotonic()
        try:
            fault = mock._take_fault(rec.headers)
        except ValueError as e:
            return self._json(400, ApiError(400, str(e)).body())
        if fault.drop or fault.status:
            _sleep_ms(fault.delay_ms)
            if fault.drop:
                self._close_abruptly(fault.reset)
            err = ApiError(fault.status or 500, fault.message or f"mock-vllm: injected HTTP {fault.status}")
            return self._json(err.status, err.body(), {"retry-after": fault.retry_after} if fault.retry_after else None)
        if isinstance(rec.body, bytes):
            try:
                json.loads(raw)
            except ValueError as e:
                return self._json(400, ApiError(400, f"JSON decode error: {e}").body())
        req = rec.body
        try:
            gen = plan(mock.model, kind, req, mock.max_model_len)
        except ApiError as e:
            return self._json(e.status, e.body())
        request_id = rec.headers.get("x-request-id") or uuid.uuid4().hex
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + request_id
        created = int(time.time())
        model = req.get("model") or mock.model
        token_delay = mock.token_delay_ms if fault.token_delay_ms is None else fault.token_delay_ms
        with mock.metrics.slot():
            _sleep_ms(fault.delay_ms)
            if req.get("stream"):
                include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
                return self._stream(mock, kind, gen, rid, created, model, include_usage, fault, token_delay, t0)
            _sleep_ms(fault.ttft_ms + token_delay * max(0, len(gen.tokens) - 1))
            if kind == "chat":
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": gen.text,
                                                                   "tool_calls": []},
                                          "logprobs": None, "finish_reason": gen.finish_reason, "stop_reason": None}
            else:
                choice = {"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason,
                          "stop_reason": None}
            doc = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                   "created": created, "model": model, "choices": [choice],
                   "usage": {**gen.usage(), "prompt_tokens_details": None}}
            data = _dumps(doc)
            mock.metrics.first_token(time.monotonic() - t0)
            if fault.drop_after_chunks is not None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                mock.metrics.finished("abort", gen.prompt_tokens, len(gen.tokens), time.monotonic() - t0)
                self._close_abruptly(fault.reset)
            mock.metrics.finished(gen.finish_reason, gen.prompt_tokens, len(gen.tokens), time.monotonic() - t0)
            self._json(200, doc)

    def _stream(self, mock: MockServer, kind: str, gen: Generation, rid: str, created: int, model: str,
                include_usage: bool, fault: Fault, token_delay: int, t0: float) -> None:
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
            doc: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
            if include_usage:
                doc["usage"] = usage
            return doc

        events: list[tuple[dict[str, Any] | None, int]] = []  # (chunk or None for [DONE], tokens it carries)
        last = len(gen.tokens) - 1
        if kind == "chat":
            events.append((chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None}]), 0))
            for i, tok in enumerate(gen.tokens):
                events.append((chunk([{"index": 0, "delta": {"content": tok}, "logprobs": None,
                                       "finish_reason": gen.finish_reason if i == last else None}]), 1))
        else:
            for i, tok in enumerate(gen.tokens):
                events.append((chunk([{"index": 0, "text": tok, "logprobs": None,
                                       "finish_reason": gen.finish_reason if i == last else None,
                                       "stop_reason": None}]), 1))
        if include_usage:
            events.append((chunk([], gen.usage()), 0))
        events.append((None, 0))

        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        self.wfile.flush()
        generated = 0
        try:
            _sleep_ms(fault.ttft_ms)
            for n, (doc, carried) in enumerate(events):
                if fault.drop_after_chunks is not None and n >= fault.drop_after_chunks:
                    break
                if n > 0 and carried:
                    _sleep_ms(token_delay)
                payload = b"data: [DONE]\n\n" if doc is None else b"data: " + _dumps(doc) + b"\n\n"
                self._chunk(payload)
                if n == 0:
                    mock.metrics.first_token(time.monotonic() - t0)
                generated += carried
        except OSError:
            mock.metrics.finished("abort", gen.prompt_tokens, generated, time.monotonic() - t0)
            raise
        if fault.drop_after_chunks is not None:
            mock.metrics.finished("abort", gen.prompt_tokens, generated, time.monotonic() - t0)
            self._close_abruptly(fault.reset)
        mock.metrics.finished(gen.finish_reason, gen.prompt_tokens, generated, time.monotonic() - t0)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()  # compact, like vLLM's pydantic model_dump_json


def _sleep_ms(ms: int) -> None:
    if ms > 0:
        time.sleep(ms / 1000)


# -------------------------------------------------------------------------------------------- public API


class MockServer:
    """One served model on a loopback port, answering from a background thread. Use ``serve()`` to create one."""

    def __init__(self, model: str, port: int = 0, api_keys: tuple[str, ...] = (), *, host: str = "127.0.0.1",
                 max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, token_delay_ms: int = 0,
                 max_model_len: int = MAX_MODEL_LEN, keepalive_timeout: float | None = None) -> None:
        if not ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).version != 4:
            raise ValueError(f"mock-vllm listens on IPv4 loopback only, not {host!r}")
        self.model = model
        self.api_keys = tuple(api_keys)
        self.max_model_len = max_model_len
        self.token_delay_ms = token_delay_ms
        self.keepalive_timeout = keepalive_timeout
        self.metrics = Metrics(model, max_num_seqs)
        self.created = int(time.time())
        self._lock = threading.Lock()
        self._requests: deque[Recorded] = deque(maxlen=MAX_RECORDED)
        self._request_count = 0
        self._fault: Fault | None = None
        self._fault_left: int | None = None
        self._httpd = _HTTPServer((host, port), self)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"mock-vllm-{model}", daemon=True)
        self._thread.start()

    def __enter__(self) -> MockServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"MockServer({self.model!r}, url={self.url!r})"

    def shutdown(self) -> None:
        """Stop accepting, drop open keep-alive/streaming connections, release the port."""
        self._httpd.shutdown()
        self._httpd.close_all()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ---- recorded requests

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """Requests received since the last ``clear_requests()`` (can exceed the 1000 kept)."""
        with self._lock:
            return self._request_count

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._request_count = 0

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self._requests.append(rec)
            self._request_count += 1

    # ---- faults

    def set_fault(self, **keys: Any) -> Fault:
        """Break every following completion request (or only the next ``fail_count``). Keys: see ``Fault``."""
        fault = Fault.parse(keys)
        with self._lock:
            self._fault = fault
            self._fault_left = fault.fail_count
        return fault

    def clear_fault(self) -> None:
        with self._lock:
            self._fault = None
            self._fault_left = None

    @property
    def fault(self) -> Fault | None:
        with self._lock:
            return self._fault

    def fault_doc(self) -> dict[str, Any]:
        with self._lock:
            return {"fault": self._fault.to_json() if self._fault else None, "remaining": self._fault_left}

    def _take_fault(self, headers: Mapping[str, str]) -> Fault:
        given = {key: headers[h] for h, key in HEADER_FAULTS.items() if h in headers}
        overrides = Fault.parse(given)  # validates before consuming a fail_count
        with self._lock:
            base = self._fault or Fault()
            if self._fault_left is not None:
                self._fault_left -= 1
                if self._fault_left <= 0:
                    self._fault, self._fault_left = None, None
        return replace(base, **{key: getattr(overrides, key) for key in given})

    # ---- documents

    def models_doc(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": self.model, "object": "model", "created": self.created, "owned_by": "vllm", "root": self.model,
            "parent": None, "max_model_len": self.max_model_len,
            "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                            "created": self.created, "allow_create_engine": False, "allow_sampling": True,
                            "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                            "allow_fine_tuning": False, "organization": "*", "group": None,
                            "is_blocking": False}]}]}


def serve(model: str, port: int = 0, api_keys: tuple[str, ...] = (), **options: Any) -> MockServer:
    """Start an in-process mock vLLM for ``model`` on 127.0.0.1 (``port=0``: a free one). Options: see MockServer."""
    return MockServer(model, port, api_keys, **options)


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.mock_vllm", description="Mock OpenAI-compatible vLLM server.")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="IPv4 loopback address only")
    p.add_argument("--api-key", action="append", default=[], dest="api_keys", help="accepted key (repeatable)")
    p.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS, help="requests running at once")
    p.add_argument("--max-model-len", type=int, default=MAX_MODEL_LEN)
    p.add_argument("--token-delay-ms", type=int, default=0, help="sleep between streamed tokens")
    p.add_argument("--keepalive-timeout", type=float, default=None, help="close idle connections after N s")
    a = p.parse_args(argv)
    try:
        server = MockServer(a.model, a.port, tuple(a.api_keys), host=a.host, max_num_seqs=a.max_num_seqs,
                            token_delay_ms=a.token_delay_ms, max_model_len=a.max_model_len,
                            keepalive_timeout=a.keepalive_timeout)
    except (OSError, ValueError) as e:
        print(f"mock-vllm {a.model}: cannot listen on {a.host}:{a.port}: {e}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"mock-vllm {a.model} listening on {server.host}:{server.port}", flush=True)
    while not stop.wait(1.0):
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
