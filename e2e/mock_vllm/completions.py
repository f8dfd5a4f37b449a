"""Answering ``POST /v1/chat/completions`` and ``/v1/completions``: plain JSON or SSE, with injected faults."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from .engine import Ticket, _Instant
from .faults import Fault
from .generation import ApiError, Generation, plan
from .recording import Recorded

if TYPE_CHECKING:
    from .server import MockServer


class _Dropped(Exception):
    """The connection was closed on purpose (fault) or by the client: nothing more to write."""


class Completions:
    """The completion routes of the request handler (a mixin of ``handler._Handler``)."""

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
            gen = plan(mock.model, kind, req, mock.max_model_len, mock.lora_modules)
        except ApiError as e:
            return self._json(e.status, e.body())
        request_id = rec.headers.get("x-request-id") or uuid.uuid4().hex
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + request_id
        created = int(time.time())
        model = req.get("model") or mock.model
        token_delay = mock.token_delay_ms if fault.token_delay_ms is None else fault.token_delay_ms
        # An injected delay holds a slot when the load model is off; with it on, it comes before the engine.
        _sleep_ms(fault.delay_ms if mock.engine else 0)
        with mock.admit(gen) as ticket:
            _sleep_ms(0 if mock.engine else fault.delay_ms)
            if req.get("stream"):  # a server that ignores include_usage (no_usage) sends none, even when asked
                include_usage = bool((req.get("stream_options") or {}).get("include_usage")) and not fault.no_usage
                return self._stream(mock, kind, gen, ticket, rid, created, model, include_usage, fault, token_delay,
                                    t0)
            ticket.wait(len(gen.tokens))
            _sleep_ms(fault.ttft_ms + token_delay * max(0, len(gen.tokens) - 1))
            if kind == "chat":
                msg: dict[str, Any] = {"role": "assistant", "content": gen.text, "tool_calls": []}
                if gen.tool is not None:  # vLLM's forced (named / required) tool call
                    msg = {"role": "assistant", "content": "", "tool_calls": [
                        {"id": "chatcmpl-tool-" + request_id, "type": "function",
                         "function": {"name": gen.tool, "arguments": gen.text}}]}
                choice: dict[str, Any] = {"index": 0, "message": msg,
                                          "logprobs": None, "finish_reason": gen.finish_reason, "stop_reason": None}
            else:
                choice = {"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason,
                          "stop_reason": None}
            doc = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                   "created": created, "model": model, "choices": [choice]}
            if not fault.no_usage:
                doc["usage"] = {**gen.usage(), "prompt_tokens_details": None}
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

    def _stream(self, mock: MockServer, kind: str, gen: Generation, ticket: Ticket | _Instant, rid: str,
                created: int, model: str, include_usage: bool, fault: Fault, token_delay: int, t0: float) -> None:
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
                delta: dict[str, Any] = {"content": tok}
                if gen.tool is not None:  # the call's id and name come with its first piece of arguments
                    call: dict[str, Any] = {"index": 0, "function": {"arguments": tok}}
                    if i == 0:
                        call = {"id": "chatcmpl-tool-" + rid, "type": "function", "index": 0,
                                "function": {"name": gen.tool, "arguments": tok}}
                    delta = {"tool_calls": [call]}
                events.append((chunk([{"index": 0, "delta": delta, "logprobs": None,
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
        # Every event waits for the tokens it carries (the chat role chunk for the first one, as in vLLM). With the
        # load model on, the events whose tokens are ready go out in one write.
        pending: list[bytes] = []
        first_sent = False

        def flush() -> None:
            nonlocal first_sent
            if pending:
                self.wfile.write(b"".join(pending))
                self.wfile.flush()
                pending.clear()
                if not first_sent:
                    first_sent = True
                    mock.metrics.first_token(time.monotonic() - t0)

        generated = 0
        nl = fault.newline
        try:
            if fault.ping_ms:  # queued: SSE comments until the first token (sse-starlette's keep-alive)
                waited = 0
                while waited + fault.ping_ms <= fault.ttft_ms:
                    _sleep_ms(fault.ping_ms)
                    waited += fault.ping_ms
                    ping = b": ping - %s%s%s" % (time.strftime("%Y-%m-%d %H:%M:%S").encode(), nl, nl)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(ping), ping))
                    self.wfile.flush()
                _sleep_ms(fault.ttft_ms - waited)
            else:
                _sleep_ms(fault.ttft_ms)
            for n, (doc, carried) in enumerate(events):
                if fault.drop_after_chunks is not None and n >= fault.drop_after_chunks:
                    break
                if n > 0 and carried and token_delay:
                    flush()
                    _sleep_ms(token_delay)
                need = max(1, generated + carried) if doc is not None else len(gen.tokens)
                if not ticket.ready(need):
                    flush()
                    ticket.wait(need)
                payload = b"data: [DONE]" if doc is None else b"data: " + _dumps(doc)
                payload += nl + nl
                pending.append(b"%x\r\n%s\r\n" % (len(payload), payload))
                if not ticket.coalesce:
                    flush()
                generated += carried
            flush()
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
