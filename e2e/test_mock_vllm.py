"""The mock vLLM server (e2e/mock_vllm/) speaks OpenAI/vLLM faithfully: checked with the official client and raw
HTTP."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from e2e import mock_vllm
from e2e.mock_vllm import MockServer, serve, spawn

MODEL = "qwen2-1-5b"
ECHO = f"[{MODEL}] echo:"


@pytest.fixture(scope="module")
def srv() -> Iterator[MockServer]:
    server = serve(MODEL)
    yield server
    server.shutdown()


@pytest.fixture(autouse=True)
def _clean(srv: MockServer) -> Iterator[None]:
    srv.clear_fault()
    srv.clear_requests()
    yield
    srv.clear_fault()


@pytest.fixture
def client(srv: MockServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=10) as c:
        yield c


def call(url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP exchange; a dict/list body is sent as JSON, bytes as they are."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wire(url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    """Send a POST on a fresh socket and return every byte the server sent until it closed the connection."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\nconnection: close\r\n{extra}\r\n")
    out = b""
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode() + data)
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def sse_data(raw_body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body (already de-chunked)."""
    events = [e for e in raw_body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e.removeprefix("data: ") for e in events]


def metrics(url: str) -> dict[str, float]:
    status, headers, body = call(url, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def chat_body(text: str = "Hello there, mock!", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


# ------------------------------------------------------------------------------------------ happy paths


def test_models_list(client: openai.OpenAI, srv: MockServer) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    m = models[0]
    assert (m.object, m.owned_by) == ("model", "vllm")
    assert isinstance(m.created, int) and m.created > 1_600_000_000
    assert m.model_extra is not None and m.model_extra["root"] == MODEL and m.model_extra["max_model_len"] == 4096
    status, headers, body = call(srv.url, "GET", "/v1/models")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["object"] == "list"


def test_chat_plain_and_token_counting(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=[
        {"role": "system", "content": "You are terse."},       # 1 + 3 words
        {"role": "user", "content": "Hello there, mock!"},     # 1 + 3 words
    ])
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert isinstance(r.created, int)
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.logprobs is None
    assert choice.message.content == f"{ECHO} Hello there, mock!"
    assert choice.finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (8, 5, 13)


def test_chat_max_tokens_truncates_with_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a b c d e f"}],
                                       max_tokens=3)
    assert r.choices[0].message.content == f"{ECHO} a"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 3 and r.usage.prompt_tokens == 7


def test_chat_echoes_last_user_message_cut_to_200_chars(client: openai.OpenAI) -> None:
    long = "abcd " * 100  # 500 chars; the first 200 are 40 words
    r = client.chat.completions.create(model=MODEL, max_tokens=100, messages=[
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": long}]},
    ])
    assert r.choices[0].message.content == ECHO + " abcd" * 40
    assert r.usage is not None and r.usage.completion_tokens == 42
    assert r.usage.prompt_tokens == (1 + 2) + (1 + 2) + (1 + 100)


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)  # no usage chunk unless asked
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == f"{ECHO} Hello there, mock!"
    assert len(chunks) == 1 + 5  # role chunk + one chunk per token
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 5 + ["stop"]


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}


def test_forced_tool_call_like_vllm_guided_decoding(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], tools=[TOOL], tool_choice=named)
    msg = r.choices[0].message
    assert msg.content == "" and r.choices[0].finish_reason == "stop"  # vLLM's finish for a forced call
    (call,) = msg.tool_calls
    assert call.id.startswith("chatcmpl-tool-") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock"}  # required parameters only
    chunks = list(client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], tools=[TOOL],
                                                 tool_choice="required", stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert deltas[0][0].id.startswith("chatcmpl-tool-") and deltas[0][0].function.name == "get_weather"
    assert all(d[0].id is None and d[0].function.name is None for d in deltas[1:])
    assert "".join(d[0].function.arguments for d in deltas) == call.function.arguments
    auto = client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], tools=[TOOL])
    assert auto.choices[0].message.content and not auto.choices[0].message.tool_calls  # the model's choice: text
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], tools=[TOOL],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], stream=True,
                                                 max_tokens=4, stream_options={"include_usage": True}))
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (4, 4, 8)
    assert all(c.usage is None and len(c.choices) == 1 for c in content)
    assert content[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in content) == f"{ECHO} Hello there,"


def test_stream_wire_format(srv: MockServer) -> None:
    """Chunked encoding, SSE framing, [DONE], and ``"usage": null`` on every chunk only with include_usage."""
    for include in (False, True):
        extra = {"stream_options": {"include_usage": True}} if include else {}
        raw = wire(srv.url, "/v1/chat/completions", chat_body(stream=True, **extra))
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower() and b"content-type: text/event-stream" in head.lower()
        assert body.endswith(b"0\r\n\r\n")
        payload, rest = b"", body  # de-chunk by hand
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            payload, rest = payload + rest[:size], rest[size + 2:]
        events = sse_data(payload)
        assert events[-1] == "[DONE]"
        docs = [json.loads(e) for e in events[:-1]]
        if include:
            assert all("usage" in d and d["usage"] is None for d in docs[:-1])
            assert docs[-1]["choices"] == [] and docs[-1]["usage"]["completion_tokens"] == 5
        else:
            assert all("usage" not in d for d in docs) and len(docs) == 6


def _dechunk(body: bytes) -> bytes:
    payload, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return payload
        payload, rest = payload + rest[:size], rest[size + 2:]


def test_real_server_switches_no_usage_pings_and_newlines(srv: MockServer, client: openai.OpenAI) -> None:
    """no_usage: no usage even when asked (stream and JSON); ping_ms: `: ping` comments while the TTFT passes;
    sse_newline: CRLF or CR line ends, each event ending in a blank line of two."""
    srv.set_fault(no_usage=True)
    chunks = list(client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks and all(c.usage is None and c.choices for c in chunks)
    assert client.chat.completions.create(model=MODEL, messages=chat_body()["messages"]).usage is None
    srv.clear_fault()
    for newline, nl in (("crlf", b"\r\n"), ("cr", b"\r")):
        _, _, body = wire(srv.url, "/v1/chat/completions", chat_body(stream=True, max_tokens=2),
                             {"x-mock-sse-newline": newline, "x-mock-ttft-ms": "250", "x-mock-ping-ms": "100"}
                             ).partition(b"\r\n\r\n")
        payload = _dechunk(body)
        events = payload.split(nl + nl)
        assert all(e.startswith(b": ping - ") for e in events[:2])  # 2 pings in 250 ms
        assert len(events) == 2 + 3 + 2 and events[-2:] == [b"data: [DONE]", b""]  # role chunk, 2 tokens, [DONE]
        stray = payload.replace(nl, b"")
        assert b"\r" not in stray and b"\n" not in stray  # only the chosen line end
        assert [json.loads(e.removeprefix(b"data: "))["choices"][0]["delta"].get("content") for e in events[2:5]] \
            == ["", ECHO.split()[0], " " + ECHO.split()[1]]
    with pytest.raises(ValueError, match="sse_newline"):
        srv.set_fault(sse_newline="crcr")


def test_completions_plain_and_stream(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="one two three")
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == MODEL
    assert r.choices[0].text == f"{ECHO} one two three" and r.choices[0].finish_reason == "stop"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 5)
    chunks = list(client.completions.create(model=MODEL, prompt="one two three", stream=True, max_tokens=2,
                                            stream_options={"include_usage": True}))
    *content, last = chunks
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in content) == ECHO
    assert content[-1].choices[0].finish_reason == "length"
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 2
    assert last.usage.prompt_tokens == 3
    plain = list(client.completions.create(model=MODEL, prompt="x", stream=True))
    assert all(c.usage is None and c.choices for c in plain) and len(plain) == 3


def test_missing_model_means_served_one_and_request_id_is_used(srv: MockServer) -> None:
    status, _, body = call(srv.url, "POST", "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi"}]}, {"x-request-id": "abc123"})
    doc = json.loads(body)
    assert status == 200 and doc["model"] == MODEL and doc["id"] == "chatcmpl-abc123"


def test_chunked_request_body_is_accepted(srv: MockServer) -> None:
    host, port = srv.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/v1/completions", body=iter([b'{"prompt": "chunked ', b'body"}']),
                 headers={"content-type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["choices"][0]["text"] == f"{ECHO} chunked body"
    conn.close()


# ---------------------------------------------------------------------------------------------- errors


def assert_vllm_error(body: bytes, status: int, err_type: str) -> dict[str, Any]:
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["code"] == status and doc["error"]["type"] == err_type
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return doc["error"]


def test_invalid_json_is_400(srv: MockServer) -> None:
    status, headers, body = call(srv.url, "POST", "/v1/chat/completions", b"{not json",
                                 {"content-type": "application/json"})
    assert status == 400 and headers["content-type"] == "application/json"
    assert "JSON" in assert_vllm_error(body, 400, "BadRequestError")["message"]


def test_bad_fields_are_400(srv: MockServer) -> None:
    for body in ({"model": MODEL}, chat_body(max_tokens=0), chat_body(stream_options={"include_usage": True}),
                 chat_body("word " * 4000, max_tokens=200)):
        status, _, raw = call(srv.url, "POST", "/v1/chat/completions", body)
        assert status == 400, body
        assert_vllm_error(raw, 400, "BadRequestError")


def test_wrong_model_is_404(srv: MockServer, client: openai.OpenAI) -> None:
    status, _, body = call(srv.url, "POST", "/v1/completions", {"model": "llama-9b", "prompt": "x"})
    assert status == 404
    assert assert_vllm_error(body, 404, "NotFoundError")["message"] == "The model `llama-9b` does not exist."
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="llama-9b", messages=[{"role": "user", "content": "x"}])
    assert "llama-9b" in err.value.message


def test_unknown_path_and_wrong_method(srv: MockServer) -> None:
    status, _, body = call(srv.url, "GET", "/v1/nope")
    assert status == 404 and json.loads(body) == {"detail": "Not Found"}
    status, headers, _ = call(srv.url, "GET", "/v1/chat/completions")
    assert status == 405 and headers["allow"] == "POST"
    assert call(srv.url, "GET", "/health")[0] == 200


def test_api_keys() -> None:
    with serve("guarded", api_keys=("key-one", "key-two")) as g:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic key-one"}):
            status, _, body = call(g.url, "POST", "/v1/completions", {"prompt": "x"}, headers)
            assert status == 401 and json.loads(body) == {"error": "Unauthorized"}
        assert call(g.url, "GET", "/v1/models")[0] == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=g.url + "/v1", api_key="nope", max_retries=0).models.list()
        with openai.OpenAI(base_url=g.url + "/v1", api_key="key-two", max_retries=0) as c:
            assert c.completions.create(model="guarded", prompt="ok").choices[0].text == "[guarded] echo: ok"
        assert [r.api_key for r in g.requests] == [None, None, None, None, None, "key-two"]
        # As in vLLM, /metrics and /health stay public.
        assert call(g.url, "GET", "/metrics")[0] == 200 and call(g.url, "GET", "/health")[0] == 200


# ------------------------------------------------------------------------------------------ recording


def test_requests_are_recorded(srv: MockServer, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "remember me"}])
    call(srv.url, "POST", "/v1/completions", b"\xffraw")
    chat, raw = srv.requests
    assert (chat.method, chat.path) == ("POST", "/v1/chat/completions")
    assert chat.headers["content-type"] == "application/json" and chat.headers["authorization"] == "Bearer k"
    assert chat.body["messages"] == [{"role": "user", "content": "remember me"}]
    assert raw.body == b"\xffraw"
    status, _, body = call(srv.url, "GET", "/mock/requests")
    doc = json.loads(body)
    assert status == 200 and doc["count"] == 2 and doc["requests"][0]["body"]["messages"][0]["content"] == "remember me"
    assert doc["requests"][1]["body_is_json"] is False
    only = json.loads(call(srv.url, "GET", "/mock/requests?path=/v1/completions")[2])
    assert only["count"] == 1 and only["requests"][0]["path"] == "/v1/completions"
    assert call(srv.url, "DELETE", "/mock/requests")[0] == 200
    assert srv.requests == [] and json.loads(call(srv.url, "GET", "/mock/requests")[2])["count"] == 0


def test_recording_is_bounded(srv: MockServer) -> None:
    for i in range(mock_vllm.MAX_RECORDED + 5):
        srv._record(mock_vllm.Recorded("GET", f"/{i}", "", {}, b""))
    kept = srv.requests
    assert len(kept) == mock_vllm.MAX_RECORDED and kept[0].path == "/5" and srv.request_count == 1005
    assert len(json.loads(call(srv.url, "GET", "/mock/requests")[2])["requests"]) == 50


# --------------------------------------------------------------------------------------------- faults


def test_fault_status_persistent(srv: MockServer, client: openai.OpenAI) -> None:
    srv.set_fault(status=503)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 503 and err.value.type == "ServiceUnavailableError"
    assert client.models.list().data[0].id == MODEL  # faults hit completions only
    srv.clear_fault()
    assert client.completions.create(model=MODEL, prompt="back").choices[0].text == f"{ECHO} back"


def test_fault_429_via_http_control(srv: MockServer) -> None:
    status, _, body = call(srv.url, "POST", "/mock/fault", {"status": 429, "retry_after": 7, "message": "slow down"})
    assert status == 200 and json.loads(body)["fault"] == {"status": 429, "retry_after": "7", "message": "slow down"}
    status, headers, body = call(srv.url, "POST", "/v1/completions", {"prompt": "x"})
    assert status == 429 and headers["retry-after"] == "7"
    assert assert_vllm_error(body, 429, "RateLimitError")["message"] == "slow down"
    assert call(srv.url, "DELETE", "/mock/fault")[0] == 200
    assert call(srv.url, "POST", "/v1/completions", {"prompt": "x"})[0] == 200
    assert call(srv.url, "POST", "/mock/fault", {"stauts": 500})[0] == 400  # typo'd key is refused
    assert call(srv.url, "POST", "/mock/fault", {"status": 200})[0] == 400
    assert srv.fault is None


def test_fault_status_per_request_header(srv: MockServer) -> None:
    status, _, body = call(srv.url, "POST", "/v1/completions", {"prompt": "x"}, {"x-mock-status": "500"})
    assert status == 500 and assert_vllm_error(body, 500, "InternalServerError")
    assert call(srv.url, "POST", "/v1/completions", {"prompt": "x"})[0] == 200
    assert call(srv.url, "POST", "/v1/completions", {"prompt": "x"}, {"x-mock-status": "abc"})[0] == 400


def test_fault_fail_count(srv: MockServer) -> None:
    srv.set_fault(status=502, fail_count=2)
    codes = [call(srv.url, "POST", "/v1/completions", {"prompt": "x"})[0] for _ in range(4)]
    assert codes == [502, 502, 200, 200]
    assert srv.fault is None and json.loads(call(srv.url, "GET", "/mock/fault")[2]) == {"fault": None, "remaining": None}


def test_fault_delay(srv: MockServer) -> None:
    t0 = time.monotonic()
    status, _, _ = call(srv.url, "POST", "/v1/completions", {"prompt": "x"}, {"x-mock-delay-ms": "300"})
    assert status == 200 and time.monotonic() - t0 >= 0.3
    srv.set_fault(delay_ms=400)
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=0.15) as impatient, \
            pytest.raises(openai.APITimeoutError):
        impatient.completions.create(model=MODEL, prompt="x")


def test_fault_ttft_streaming(srv: MockServer) -> None:
    host, port = srv.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    t0 = time.monotonic()
    conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "x", "stream": True}),
                 headers={"x-mock-ttft-ms": "400"})
    resp = conn.getresponse()
    t_headers = time.monotonic() - t0
    first = resp.readline()
    t_first = time.monotonic() - t0
    assert resp.status == 200 and first.startswith(b"data: ")
    assert t_headers < 0.3 <= 0.4 <= t_first  # headers at once, first event after the TTFT
    assert sse_data(first + resp.read())[-1] == "[DONE]"
    conn.close()


def test_fault_drop_after_chunks_breaks_the_stream(srv: MockServer, client: openai.OpenAI) -> None:
    got = []
    with pytest.raises(openai.APIConnectionError):
        stream = client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], stream=True,
                                                extra_headers={"x-mock-drop-after-chunks": "3"})
        for c in stream:
            got.append(c)
    assert len(got) == 3
    # On the wire: exactly N events, then the connection ends without the terminating zero-size chunk.
    srv.set_fault(drop_after_chunks=2)
    raw = wire(srv.url, "/v1/chat/completions", chat_body(stream=True))
    assert raw.startswith(b"HTTP/1.1 200") and raw.count(b"data: ") == 2 and not raw.endswith(b"0\r\n\r\n")
    # Non-streaming: half a body, then the connection closes.
    raw = wire(srv.url, "/v1/chat/completions", chat_body())
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    assert 0 < len(body) < length


def test_fault_drop(srv: MockServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        client.completions.create(model=MODEL, prompt="x", extra_headers={"x-mock-drop": "1"})
    srv.set_fault(drop=True, fail_count=1)
    assert wire(srv.url, "/v1/completions", {"prompt": "x"}) == b""
    srv.set_fault(drop=True, reset=True, fail_count=1)
    with pytest.raises(ConnectionResetError):
        call(srv.url, "POST", "/v1/completions", {"prompt": "x"})
    assert call(srv.url, "POST", "/v1/completions", {"prompt": "x"})[0] == 200  # fail_count used up


# -------------------------------------------------------------------------------------------- metrics


def test_metrics_counters_follow_traffic(srv: MockServer, client: openai.OpenAI) -> None:
    stop = f'vllm:request_success_total{{finished_reason="stop",model_name="{MODEL}"}}'
    length = f'vllm:request_success_total{{finished_reason="length",model_name="{MODEL}"}}'
    prompt = f'vllm:prompt_tokens_total{{model_name="{MODEL}"}}'
    gen = f'vllm:generation_tokens_total{{model_name="{MODEL}"}}'
    ttft = f'vllm:time_to_first_token_seconds_count{{model_name="{MODEL}"}}'
    before = metrics(srv.url)
    assert before[f'vllm:num_requests_running{{model_name="{MODEL}"}}'] == 0
    assert 'vllm:lora_requests_info{max_lora="1",running_lora_adapters="",waiting_lora_adapters=""}' in before
    r1 = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "count these words"}])
    *_, r2 = client.completions.create(model=MODEL, prompt="a b c d", max_tokens=2, stream=True,
                                       stream_options={"include_usage": True})
    call(srv.url, "POST", "/v1/completions", {"prompt": "x"}, {"x-mock-status": "500"})  # never reaches the engine
    after = metrics(srv.url)
    assert r1.usage is not None and r2.usage is not None
    assert after[prompt] - before[prompt] == r1.usage.prompt_tokens + r2.usage.prompt_tokens == 4 + 4
    assert after[gen] - before[gen] == r1.usage.completion_tokens + r2.usage.completion_tokens == 5 + 2
    assert (after[stop] - before[stop], after[length] - before[length]) == (1, 1)
    assert after[ttft] - before[ttft] == 2
    bucket = f'vllm:time_to_first_token_seconds_bucket{{model_name="{MODEL}",le="+Inf"}}'
    assert after[bucket] == after[ttft]


def test_running_and_waiting_are_real() -> None:
    with serve("busy", max_num_seqs=2) as b:
        m = 'model_name="busy"'
        threads = [threading.Thread(target=call, args=(b.url, "POST", "/v1/completions", {"prompt": "x"},
                                                       {"x-mock-delay-ms": "700"})) for _ in range(3)]
        for t in threads:
            t.start()
        deadline, seen = time.monotonic() + 3, {}
        while time.monotonic() < deadline:
            seen = metrics(b.url)
            if seen[f"vllm:num_requests_running{{{m}}}"] == 2 and seen[f"vllm:num_requests_waiting{{{m}}}"] == 1:
                break
            time.sleep(0.05)
        assert seen[f"vllm:num_requests_running{{{m}}}"] == 2 and seen[f"vllm:num_requests_waiting{{{m}}}"] == 1
        assert seen[f"vllm:kv_cache_usage_perc{{{m}}}"] == 1.0 == seen[f"vllm:gpu_cache_usage_perc{{{m}}}"]
        for t in threads:
            t.join()
        done = metrics(b.url)
        assert done[f"vllm:num_requests_running{{{m}}}"] == 0 and done[f"vllm:kv_cache_usage_perc{{{m}}}"] == 0
        assert done[f'vllm:request_success_total{{finished_reason="stop",{m}}}'] == 3


def test_client_disconnect_does_not_kill_the_server(srv: MockServer, client: openai.OpenAI) -> None:
    abort = f'vllm:request_success_total{{finished_reason="abort",model_name="{MODEL}"}}'
    before = metrics(srv.url)[abort]
    stream = client.completions.create(model=MODEL, prompt="x", stream=True, max_tokens=50,
                                       extra_body={"ignore_eos": True}, extra_headers={"x-mock-token-delay-ms": "100"})
    assert next(iter(stream)).choices[0].text == f"[{MODEL}]"
    stream.close()
    deadline = time.monotonic() + 3
    while metrics(srv.url)[abort] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metrics(srv.url)[abort] == before + 1
    assert client.completions.create(model=MODEL, prompt="still here").choices[0].text == f"{ECHO} still here"


# ------------------------------------------------------------------------------------------------ CLI


def test_spawned_cli_process() -> None:
    proc = spawn("cli-model", 0, api_keys=("secret",))
    try:
        assert proc.url == f"http://127.0.0.1:{proc.port}"
        with openai.OpenAI(base_url=proc.url + "/v1", api_key="secret", max_retries=0) as c:
            assert [m.id for m in c.models.list().data] == ["cli-model"]
            chunks = list(c.chat.completions.create(model="cli-model", messages=[{"role": "user", "content": "hi"}],
                                                    stream=True, stream_options={"include_usage": True}))
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
        # Another process steers it over HTTP: fault control and the request log.
        assert call(proc.url, "POST", "/mock/fault", {"status": 503, "fail_count": 1})[0] == 200
        assert call(proc.url, "POST", "/v1/completions", {"prompt": "x"}, {"authorization": "Bearer secret"})[0] == 503
        log = json.loads(call(proc.url, "GET", "/mock/requests")[2])
        assert log["count"] == 3 and [r["path"] for r in log["requests"]] == [
            "/v1/models", "/v1/chat/completions", "/v1/completions"]
        assert log["requests"][1]["api_key"] == "secret"
    finally:
        code = proc.stop()
    assert code == 0
