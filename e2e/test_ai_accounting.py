"""Accounting on servers that behave like real ones, through the real Envoy with the official `openai` client.

The mock vLLM is switched, per request (``x-mock-*`` headers), to what real inference servers do: ignore
``include_usage`` (``no_usage``), send ``: ping`` comments while a request is queued (``ping_ms``), frame events
with CRLF or CR (``sse_newline``), cut a stream off (``drop_after_chunks``); and a client walks away mid-stream.
Each scenario has its own consumer, so its metrics are exact. One private stack for the module.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import openai
import pytest

from e2e.ai_stack import QWEN, TRUST_CONSUMER_HEADER, AiStack, Labels, wait_for

Launch = Callable[..., AbstractContextManager[AiStack]]


@pytest.fixture(scope="module")
def stack(ai_launch: Launch) -> Iterator[AiStack]:
    with ai_launch(replace=TRUST_CONSUMER_HEADER) as s:  # each scenario names its consumer itself
        yield s


def labels(consumer: str) -> Labels:
    return ("by_model", QWEN, QWEN, consumer)


def words_out(text: str, max_tokens: int = 16) -> int:
    """The mock's completion tokens: the words of ``[<model>] echo: <text>`` (at most max_tokens)."""
    return min(len(f"[{QWEN}] echo: {text}".split()), max_tokens)


def input_estimate(messages: list[dict[str, str]]) -> int:
    """The gateway's documented input estimate (ai_gateway/estimate.py): the messages' text at 4 bytes a token,
    plus 3 per message and 3 for the reply."""
    text = sum(len(m["content"].encode()) for m in messages)
    return -(-text // 4) + 3 * (len(messages) + 1)


def headers(consumer: str, **mock: str) -> tuple[str, dict[str, str]]:
    tid = uuid.uuid4().hex
    return tid, {"x-test-id": tid, "x-mse-consumer": consumer, **{f"x-mock-{k}": v for k, v in mock.items()}}


def log_of(stack: AiStack, tid: str) -> dict[str, Any]:
    return json.loads(stack.wait_ai_log({tid})[tid])


def metric(stack: AiStack, name: str, consumer: str, want: float | None = None) -> float | None:
    """The metric's value for the consumer's label set (waiting up to 5 s for ``want`` when given)."""
    if want is not None:
        wait_for(lambda: stack.metrics().get(name, {}).get(labels(consumer)) == want)
    return stack.metrics().get(name, {}).get(labels(consumer))


def stream_chat(stack: AiStack, text: str, hdrs: dict[str, str], **kw: Any) -> tuple[str, Any]:
    """(the streamed text, the last usage the client saw) of a chat stream through the gateway."""
    messages = [{"role": "user", "content": text}]
    out, usage = [], None
    for c in stack.client.chat.completions.create(model=QWEN, messages=messages, stream=True,  # type: ignore[arg-type]
                                                  extra_headers=hdrs, **kw):
        out.extend(ch.delta.content or "" for ch in c.choices)
        usage = c.usage or usage
    return "".join(out), usage


def test_stream_without_usage_is_estimated(stack: AiStack) -> None:
    """A server that ignores include_usage: the output is the content events (exact on a token-per-event server),
    the input the documented estimate; recorded as estimated, and the token counters move with it."""
    text = "count these words for me please"
    messages = [{"role": "user", "content": text}]
    tids = []
    for asked in (False, True):  # the gateway asks upstream on the client's behalf; or the client asks itself
        tid, hdrs = headers("est", **{"no-usage": "1"})
        kw = {"stream_options": {"include_usage": True}} if asked else {}
        got, usage = stream_chat(stack, text, hdrs, **kw)
        assert got == f"[{QWEN}] echo: {text}" and usage is None  # the server sent none: none is made up for it
        tids.append(tid)
    inp, out = input_estimate(messages), words_out(text)
    for tid in tids:
        doc = log_of(stack, tid)
        assert (doc["input_tokens"], doc["output_tokens"], doc["total_tokens"]) == (inp, out, inp + out), doc
        assert (doc["usage_source"], doc["usage_known"], doc["complete"], doc["cancelled"]) == \
            ("estimated", False, True, False), doc
    assert metric(stack, "usage_estimated_total", "est", 2) == 2
    assert (metric(stack, "input_token", "est"), metric(stack, "output_token", "est")) == (2 * inp, 2 * out)


def test_json_answer_without_usage_is_estimated(stack: AiStack) -> None:
    text = "a plain answer without usage"
    tid, hdrs = headers("est-json", **{"no-usage": "1"})
    r = stack.client.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": text}],
                                             extra_headers=hdrs)
    content = r.choices[0].message.content or ""
    assert r.usage is None and content == f"[{QWEN}] echo: {text}"
    doc = log_of(stack, tid)
    assert (doc["output_tokens"], doc["usage_source"]) == (-(-len(content) // 4), "estimated"), doc  # 4 bytes/token
    assert metric(stack, "usage_estimated_total", "est-json", 1) == 1


def test_ttft_waits_for_the_first_token_not_the_pings(stack: AiStack) -> None:
    """Queued 700 ms behind `: ping` comments (every 200 ms, passed on to the client): TTFT is the first token."""
    tid, hdrs = headers("ping", **{"ttft-ms": "700", "ping-ms": "200"})
    body = {"model": QWEN, "stream": True, "messages": [{"role": "user", "content": "wait for it"}]}
    t0 = time.monotonic()
    r = stack.post("/v1/chat/completions", body, hdrs)
    assert r.status == 200 and r.body.count(b": ping - ") == 3 and time.monotonic() - t0 >= 0.7
    doc = log_of(stack, tid)
    assert 700 <= doc["ttft_ms"] <= doc["duration_ms"], doc  # the first byte (a ping) came at ~200 ms
    assert metric(stack, "llm_first_token_duration", "ping", doc["ttft_ms"]) == doc["ttft_ms"]
    assert doc["usage_source"] == "server"


@pytest.mark.parametrize("newline", ["crlf", "cr"])
def test_crlf_and_cr_framing(stack: AiStack, newline: str) -> None:
    """CRLF / CR framed streams: the client's usage event when it asked, stripped when the gateway asked; the
    server's usage read either way, TTFT recorded."""
    text = f"framed with {newline}"
    consumer = f"frame-{newline}"
    want = (1 + len(text.split()), words_out(text))  # the mock's prompt rule: 1 + words per message
    for asked in (True, False):
        tid, hdrs = headers(consumer, **{"sse-newline": newline})
        kw = {"stream_options": {"include_usage": True}} if asked else {}
        got, usage = stream_chat(stack, text, hdrs, **kw)
        assert got == f"[{QWEN}] echo: {text}"
        assert (usage is not None) == asked and (not asked or (usage.prompt_tokens, usage.completion_tokens) == want)
        doc = log_of(stack, tid)
        assert ((doc["input_tokens"], doc["output_tokens"]), doc["usage_source"]) == (want, "server"), doc
        assert doc["ttft_ms"] is not None and doc["complete"], doc
    assert metric(stack, "output_token", consumer, 2 * want[1]) == 2 * want[1]


def test_cut_off_stream_is_an_error_with_estimated_usage(stack: AiStack) -> None:
    """The server closes after the role chunk and 3 tokens: incomplete, not cancelled, an error; what was streamed
    is counted."""
    tid, hdrs = headers("cut", **{"drop-after-chunks": "4"})
    with pytest.raises(openai.APIConnectionError):
        stream_chat(stack, "this stream will be cut off", hdrs)
    doc = log_of(stack, tid)
    assert (doc["complete"], doc["cancelled"], doc["usage_source"], doc["output_tokens"]) == \
        (False, False, "estimated", 3), doc
    assert metric(stack, "error_total", "cut", 1) == 1 and metric(stack, "cancelled_total", "cut") is None
    assert metric(stack, "usage_estimated_total", "cut") == 1


def test_client_cancel_is_counted_apart(stack: AiStack) -> None:
    """A client that reads two chunks and closes the stream: cancelled (Envoy's downstream termination), counted in
    cancelled_total and not in error_total; the tokens it was sent are counted (estimated)."""
    tid, hdrs = headers("cancel", **{"token-delay-ms": "300"})
    stream = stack.client.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "a long one"}],
                                                  stream=True, max_tokens=16, extra_headers=hdrs)
    it = iter(stream)
    first = [next(it), next(it)]  # the role chunk and the first token
    stream.close()
    assert first[1].choices[0].delta.content == f"[{QWEN}]"
    doc = log_of(stack, tid)
    assert (doc["complete"], doc["cancelled"], doc["usage_source"]) == (False, True, "estimated"), doc
    assert 1 <= doc["output_tokens"] < 16, doc
    assert metric(stack, "cancelled_total", "cancel", 1) == 1 and metric(stack, "error_total", "cancel") is None
