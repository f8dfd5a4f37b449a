"""Hostile input for the AI gateway: a corpus (tests/hostile_corpus/) and hypothesis fuzzing of every parser that
sees untrusted bytes — request JSON, request headers, upstream SSE / JSON responses, plugin configuration — on
both hosts (in-process and the compiled .wasm under wasmtime), plus security properties.

Every input must get a clear answer: the gateway's own OpenAI-style 400/404/413, a route to a configured
cluster with a body that agrees with the route, or a documented pass-through. Nothing may crash: no plugin
exception (the dispatcher logs those at ERROR), no wasm trap, and the VM serves a normal request afterwards.

Documented behaviour pinned here:
- request bodies must be UTF-8 JSON (RFC 8259): UTF-16/32, a BOM, encoded surrogates, NaN/Infinity and numbers
  that overflow a double (1e999999) or exceed Python's 4300-digit int limit get 400 ``invalid_json``;
  JSON escapes of lone surrogates ("\\ud800") are valid JSON and are kept, escaped, when the body is rewritten;
- duplicate keys: Python's json keeps the *last* ``model``; the gateway then sends the body upstream rewritten
  with that one ``model`` only, so an upstream parser that keeps the first cannot serve another model;
- nesting is bounded: at most 500 levels (proxywasm.jsonscan.MAX_DEPTH, the same on both hosts; a deeper body is
  400 ``invalid_json``);
- paths are judged normalised (ai_gateway/paths.py: ``//v1/chat/completions``, ``/v1/./chat/completions``,
  ``/v1%2Fchat%2Fcompletions`` are the chat path and go upstream as ``/v1/chat/completions``;
  ``/v1/chat/completions/../x`` is ``/v1/x``); a POST to an AI path with a non-JSON content type gets 415;
- requests the gateway does not handle (other methods and paths) pass through untouched, except that client-sent
  routing headers (``x-ai-upstream``, ``x-ai-model``, the endpoint picker's) are removed from every request, even
  when the gateway is off for it.

Run with ``-s`` to see one line per fuzz target with the number of inputs tried (also printed at the end of the
module and recorded as junit properties ``inputs[<target>]``).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai_gateway.config import parse as parse_config
from ai_gateway.request import json_media_type
from ai_gateway.usage import MAX_EVENT, TAIL_KEEP, JsonCollector, SseScanner, Usage, usage_from_json
from proxywasm import Action, ConfigError, LogLevel
from proxywasm.testing import Host, Stream
from proxywasm.testing.fake import FakeHost

from .conftest import wasm_path
from .gateway import CHAT, CONFIG, chat_body

CORPUS = Path(__file__).resolve().parent / "hostile_corpus"
POOL_KEYS = ["sk-hostile-pool-key-0001", "sk-hostile-pool-key-0002", "sk-hostile-gemma-key-0003"]
CLIENT_SECRET = "client-secret-4f1e9a77"
SECRETS = [*POOL_KEYS, CLIENT_SECRET]

# CONFIG's models and aliases, plus key pools (qwen: Authorization; gemma: api-key), a mirror from a model without a
# pool to one with a pool, and the AI log in the plugin log too: secrets must stay out of every one of those paths.
HOSTILE_CONFIG: dict[str, Any] = {
    "models": [
        {"name": "qwen2-1-5b", "cluster": "qwen", "fallback": {"models": ["gemma-2-2b", "llama-3"]},
         "api_keys": {"keys": POOL_KEYS[:2], "consecutive_5xx": 0}},
        {"name": "gemma-2-2b", "cluster": "gemma", "upstream_model": "google/gemma-2-2b-it",
         "api_keys": {"keys": POOL_KEYS[2:], "header": "api-key", "consecutive_5xx": 0}},
        {"name": "llama-3", "cluster": "llama", "mirror": {"model": "gemma-2-2b", "percent": 100}},
    ],
    "aliases": CONFIG["aliases"],
    "ai_log": "both",
    "consumer_header": "x-mse-consumer",  # trusted here, so hostile consumer values reach the metric labels
}
MODELS = {m["name"]: m for m in HOSTILE_CONFIG["models"]}
CLUSTERS = {m["cluster"] for m in MODELS.values()}
UPSTREAM_MODEL = {name: m.get("upstream_model", name) for name, m in MODELS.items()}
ALIASES = {a["name"]: {t["model"] for t in a["targets"]} for a in HOSTILE_CONFIG["aliases"]}
CLIENT = {**CHAT, "authorization": f"Bearer {CLIENT_SECRET}", "api-key": CLIENT_SECRET, "x-ai-upstream": "forged",
          "x-ai-model": "forged"}
OK_BODY = b'{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
SSE_HEADERS = {":status": "200", "content-type": "text/event-stream"}
FUZZ = settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


ROUTING_HEADERS = ("x-ai-upstream", "x-ai-model")


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


# -------------------------------------------------------------------------------------------- input counts

TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    lines = [f"hostile inputs tried: {target}: {n}" for target, n in sorted(TRIED.items())]
    lines.append(f"hostile inputs tried: all targets: {sum(TRIED.values())}")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print("\n" + "\n".join(lines))
        return
    with capture.global_and_fixture_disabled():  # shown in the run's output, with or without -s
        reporter.write("\n")
        for line in lines:
            reporter.write_line(line)


@pytest.fixture
def count(record_property: Any) -> Iterator[Any]:
    """``count(target, n=1)``: note inputs tried; printed per target (with ``-s``) and recorded as properties."""
    mine: Counter[str] = Counter()

    def add(target: str, n: int = 1) -> None:
        mine[target] += n
        TRIED[target] += n

    yield add
    for target, n in sorted(mine.items()):
        record_property(f"inputs[{target}]", n)
        print(f"\nhostile inputs tried: {target}: {n}")  # with -s: one line per test and target


# -------------------------------------------------------------------------------------------- helpers


def _strict_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:
        raise ValueError(f"non-finite number {text[:20]}")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def strict_pairs(data: bytes) -> list[tuple[str, Any]]:
    """The top-level (key, value) pairs of ``data`` as a strict JSON consumer reads them (UTF-8, finite numbers)."""
    pairs = json.loads(data.decode("utf-8"), object_pairs_hook=lambda p: p, parse_float=_strict_float,
                       parse_constant=_no_constant)
    assert isinstance(pairs, list), "not a JSON object"
    return pairs


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k == name]


def ai_log(s: Stream) -> str:
    return (s.get_property("ai_log") or b"").decode("utf-8", "replace")


class Gateway:
    """One gateway VM under attack, with what it said kept for the secrets check."""

    def __init__(self, make_host: Any, config: dict[str, Any] = HOSTILE_CONFIG) -> None:
        self.kind: str = make_host.kind
        self.h: Host = make_host("ai_gateway")
        assert self.h.start(config), self.h.logs
        self.said: list[str] = []  # local reply bodies and headers, AI log records
        self.checked = 0  # logs before this index were checked

    def stream(self, headers: dict[str, str] | list[tuple[str, str]], body: bytes | None, chunks: int = 1) -> Stream:
        s = self.h.http_stream()
        if body is None:
            s.send_request_headers(headers, end_of_stream=True)
        else:
            s.send_request_headers(headers)
            step = max(1, -(-len(body) // chunks))
            parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
            for i, part in enumerate(parts):
                if s.local_response is not None:
                    break
                s.send_request_body(part, end_of_stream=i == len(parts) - 1)
        return s

    def send(self, body: bytes, headers: dict[str, str] | None = None, chunks: int = 1) -> Stream:
        return self.stream({**CLIENT, **(headers or {})}, body, chunks)

    def finish(self, s: Stream, mode: str = "ok") -> None:
        """Answer a routed request as an upstream would (``ok``; ``fail``: 503, then fallbacks; ``sse``), answer the
        callouts it caused (each checked), and end the stream."""
        if s.local_response is None and s.request_header("x-ai-upstream") is not None:
            if mode == "sse":
                s.send_response_headers(SSE_HEADERS)
                s.send_response_body(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n', False)
                s.send_response_body(b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n', True)
            elif s.send_response_headers({":status": "503" if mode == "fail" else "200",
                                          "content-type": "application/json"}) == Action.CONTINUE:
                s.send_response_body(OK_BODY if mode == "ok" else b'{"error":"down"}', True)
        for c in self.h.callouts:
            check_callout(c)
            self.h.respond_callout(c.token, 200, {"content-type": "application/json"}, OK_BODY)
        if s.local_response is not None:
            self.said += [s.local_response.body.decode("utf-8", "replace"), repr(s.local_response.headers)]
        self.said.append(ai_log(s))
        s.complete()

    def clean(self) -> None:
        """No plugin exception since the last check, and no trap."""
        errors = [m for lv, m in self.h.logs[self.checked :] if lv >= LogLevel.ERROR]
        self.checked = len(self.h.logs)
        assert not errors, f"plugin error on {self.kind}:\n{errors[0][:3000]}"
        assert getattr(self.h, "trap", None) is None, f"wasm trap: {self.h.trap}"  # type: ignore[attr-defined]

    def healthy(self) -> None:
        """Clean, and a normal request is still routed (with a pool key, not the client's credential)."""
        self.clean()
        s = self.send(chat_body())
        assert s.local_response is None and s.request_header("x-ai-upstream") == "qwen"
        assert s.request_header("authorization") in {f"Bearer {k}" for k in POOL_KEYS[:2]}
        self.finish(s)
        self.clean()

    def no_secrets(self) -> None:
        """Pool keys and the client's credential are nowhere in logs, metric names, local replies or the AI log."""
        text = "\n".join([*(m for _, m in self.h.logs), *self.h.metric_names, *self.said])
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked on {self.kind}"
        self.said.clear()


def check_credentials(model: str, headers: list[tuple[str, str]]) -> None:
    """A pool key only goes to its own model, in its pool's header; a pool model never gets the client's credential
    in the headers its pool replaces (a model without a pool gets the client's headers as sent, by design)."""
    pool = MODELS[model].get("api_keys")
    replaced = {"authorization", pool.get("header", "authorization")} if pool else set()
    for name, value in headers:
        for key in POOL_KEYS:
            if key in value:
                assert pool and key in pool["keys"] and name == pool.get("header", "authorization"), (model, name)
        if name in replaced:
            assert CLIENT_SECRET not in value, (model, name)


def check_error(s: Stream, statuses: tuple[int, ...] = (400, 404, 413)) -> dict[str, Any]:
    """The gateway answered itself: an OpenAI-style error, and no routing headers on the held request."""
    lr = s.local_response
    assert lr is not None and lr.status in statuses, lr
    assert ("content-type", "application/json") in lr.headers
    err = json.loads(lr.body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert isinstance(err["message"], str) and isinstance(err["code"], str)
    for name in ROUTING_HEADERS:
        assert s.request_header(name) is None
    return err


def check_routed(s: Stream, sent: bytes) -> str:
    """Routed to a configured cluster, and the body sent upstream agrees: one ``model``, the routed model's upstream
    name, strict JSON; a rewritten body has a matching content-length. Returns the model routed to."""
    assert s.local_response is None
    ups = header_values(s.request_headers, "x-ai-upstream")
    models = header_values(s.request_headers, "x-ai-model")
    assert len(ups) == 1 and len(models) == 1, (ups, models)
    model = models[0]
    assert model in MODELS and ups[0] == MODELS[model]["cluster"] and ups[0] in CLUSTERS
    check_credentials(model, s.request_headers)
    body = s.request_body
    upstream_models = [v for k, v in strict_pairs(body) if k == "model"]
    assert upstream_models == [UPSTREAM_MODEL[model]], upstream_models
    if body != sent:
        assert header_values(s.request_headers, "content-length") == [str(len(body))]
    return model


def check_passed(s: Stream, sent: bytes | None) -> None:
    """Not the gateway's request: passed on untouched, but without client-sent routing headers."""
    assert s.local_response is None
    for name in ROUTING_HEADERS:
        assert s.request_header(name) is None
    if sent is not None:
        assert s.request_body == sent


def check_callout(c: Any) -> None:
    """A fallback or mirror request: to a configured cluster, addressed consistently, body agreeing, no client secret."""
    assert c.cluster in CLUSTERS
    ups, models = header_values(c.headers, "x-ai-upstream"), header_values(c.headers, "x-ai-model")
    assert ups == [c.cluster] and len(models) == 1 and MODELS[models[0]]["cluster"] == c.cluster
    assert [v for k, v in strict_pairs(c.body) if k == "model"] == [UPSTREAM_MODEL[models[0]]]
    check_credentials(models[0], c.headers)
    assert not {"content-length", "transfer-encoding"} & {k for k, _ in c.headers}  # Envoy frames callouts itself


def outcome(s: Stream, sent: bytes) -> str:
    """Check whatever happened and name it: ``400 invalid_json``, ``404 model_not_found``, ``routed qwen2-1-5b``."""
    if s.local_response is not None:
        err = check_error(s)
        return f"{s.local_response.status} {err['code']}"
    return f"routed {check_routed(s, sent)}"


@pytest.fixture
def gw(make_host: Any) -> Iterator[Gateway]:
    g = Gateway(make_host)
    yield g
    g.clean()
    g.no_secrets()


# -------------------------------------------------------------------------------------------- request bodies


def corpus_requests() -> list[tuple[str, bytes, dict[str, Any]]]:
    expected = json.loads((CORPUS / "requests" / "expected.json").read_text())
    cases = [(name, (CORPUS / "requests" / f"{name}.bin").read_bytes(), e) for name, e in sorted(expected.items())]
    invalid = {"status": 400, "code": "invalid_json"}
    cases += [  # too big to keep as files
        ("deep_arrays_100k", b'{"model":"qwen2-1-5b","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", invalid),
        ("deep_objects_50k", b'{"model":"qwen2-1-5b","x":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}", invalid),
        ("deep_unclosed", b'{"model":"qwen2-1-5b","x":' + b"[{" * 20_000, invalid),
        ("model_long_1m", json.dumps({"model": "q" * 1_000_000}).encode(), {"status": 404, "code": "model_not_found"}),
        ("messages_20k", json.dumps({"model": "qwen2-1-5b", "messages": [{"role": "user", "content": str(i)}
                                                                         for i in range(20_000)]}).encode(),
         {"route": "qwen2-1-5b", "unchanged": True}),
    ]
    return cases


def check_expected(s: Stream, body: bytes, want: dict[str, Any]) -> None:
    if "status" in want:
        err = check_error(s)
        assert (s.local_response.status, err["code"]) == (want["status"], want["code"])
        return
    assert check_routed(s, body) == want["route"]
    sent = s.request_body
    if want.get("unchanged"):
        assert sent == body
    if want.get("single_model"):
        assert [k for k, _ in strict_pairs(sent)].count("model") == 1
    if want.get("stream_usage_injected"):
        opts = dict(strict_pairs(sent))["stream_options"]
        assert dict(opts)["include_usage"] is True


def test_request_corpus(gw: Gateway, count: Any) -> None:
    cases = corpus_requests()
    modes = ("ok", "fail", "sse")
    for i, (name, body, want) in enumerate(cases):
        for chunks in (1, 3):  # whole, and split in three: the same answer
            s = gw.send(body, chunks=chunks)
            try:
                check_expected(s, body, want)
                gw.finish(s, modes[i % 3])
                gw.clean()
            except AssertionError as e:
                raise AssertionError(f"corpus request {name!r} ({chunks} chunk(s)) on {gw.kind}: {e}") from e
            count(f"request corpus [{gw.kind}]")
    gw.healthy()


def test_large_bodies(make_host: Any, count: Any) -> None:
    """10 MB is under the default 10 MiB limit: accepted; one byte over: 413 (declared or not); a raised limit
    accepts more. Memory is taken, nothing crashes, and the VM keeps serving."""
    g = Gateway(make_host)
    big = b'{"model":"gemma-2-2b","messages":[{"role":"user","content":"' + b"x" * (10_000_000 - 80) + b'"}]}'
    s = g.send(big, chunks=10)
    check_routed(s, big)
    g.finish(s)
    over = b" " * (10 * 1024 * 1024 + 1 - len(chat_body())) + chat_body()
    check_error(g.send(over, chunks=10), (413,))
    s = g.send(over, {"content-length": str(len(over))})
    assert check_error(s, (413,))["code"] == "request_too_large" and s.request_body == b""
    g.healthy()
    raised = Gateway(make_host, {**HOSTILE_CONFIG, "max_body_bytes": 12 * 1024 * 1024})
    s = raised.send(over, chunks=4)
    check_routed(s, over)
    raised.finish(s)
    raised.healthy()
    count(f"large bodies [{g.kind}]", 4)
    for gate in (g, raised):
        gate.no_secrets()


# The pieces of hostile bodies: configured names and their look-alikes, injection attempts, odd types.
NAMES = [*MODELS, *ALIASES, *CLUSTERS, "../admin", "/v1/models", "outbound|8080||x", "qwen2-1-5b\r\nx-ai-upstream: evil",
         "x\r\nx-ai-upstream: llama", "qwen2-1-5b\x00", "QWEN2-1-5B", "qwen2-1-5b ", "", "google/gemma-2-2b-it"]
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)  # surrogates included


def as_header(text: str) -> str:
    """A header value with ``text``'s bytes (lone surrogates as their invalid UTF-8), surrogateescape-style."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogateescape")
model_values = st.one_of(st.sampled_from(NAMES), any_text, st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.none(), st.booleans(), st.lists(st.sampled_from(NAMES), max_size=2),
                         st.dictionaries(st.sampled_from(["name", "model"]), st.sampled_from(NAMES), max_size=2))
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), any_text)
json_values = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(any_text, c, max_size=4),
                           max_leaves=16)
HOSTILE_TOKENS = [b"1e999999", b"-1e999999", b"NaN", b"Infinity", b"9" * 5000, b"\x00", b"\xff", b"\xed\xa0\x80",
                  b"\xef\xbb\xbf", b'"\\ud800"', b'"model":', b'"model":"qwen2-1-5b",', b'"mod\\u0065l":"llama-3",',
                  b'"model":"gemma-2-2b",', b"{", b"}", b"[", b"]", b",", b'"', b"\\", b"\r\n", b"\r\nx-ai-upstream: evil",
                  b'"stream":true,', b"[" * 700, b"\t", b"/*", b"'"]
SEEDS = [chat_body(m, stream=s) for m in (*MODELS, "canary", "sticky") for s in (False, True)]


@st.composite
def json_bodies(draw: Any) -> bytes:
    doc: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(["model", "messages", "stream", "stream_options", "x", "model2"]),
                             min_size=1, max_size=5, unique=True)):
        doc[key] = draw(model_values if key == "model" else json_values)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    if "model2" in doc and draw(st.booleans()):
        text = text.replace('"model2"', '"model"')  # a duplicate key
    return text.encode("utf-8", "surrogatepass")  # unescaped lone surrogates become invalid UTF-8


@st.composite
def mutated_bodies(draw: Any) -> bytes:
    body = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["insert", "insert", "delete", "flip", "truncate"]))
        if op == "insert":
            body[pos:pos] = draw(st.sampled_from(HOSTILE_TOKENS))
        elif op == "delete":
            del body[pos : pos + draw(st.integers(1, 8))]
        elif op == "flip" and pos < len(body):
            body[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del body[pos:]
    return bytes(body)


hostile_bodies = st.one_of(json_bodies(), mutated_bodies(), st.binary(max_size=300))


def test_fuzz_request_bodies(gw: Gateway, count: Any) -> None:
    """Any bytes as a chat request body: an OpenAI-style 400/404, or a route the body agrees with."""
    seen: Counter[str] = Counter()

    @fuzz(900)
    @given(body=hostile_bodies, chunks=st.integers(1, 3), mode=st.sampled_from(["ok", "fail", "sse"]))
    def run(body: bytes, chunks: int, mode: str) -> None:
        count(f"request body fuzz [{gw.kind}]")
        s = gw.send(body, chunks=chunks)
        seen[outcome(s, body).split(" ")[0]] += 1
        gw.finish(s, mode)
        gw.clean()

    run()
    gw.healthy()
    print(f"\nrequest body fuzz [{gw.kind}] outcomes: {dict(seen)}")
    assert seen["routed"] and seen["400"] and seen["404"], seen  # the fuzzer reached every kind of answer


def test_fuzz_hosts_agree(count: Any) -> None:
    """The compiled module answers every hostile body exactly as the in-process plugin does (same status and code,
    or same route and byte-identical upstream body) — but for nesting between their two recursion limits."""
    fake = Gateway(_factory("fake"))
    wasm = Gateway(_factory("wasm"))

    @fuzz(400)
    @given(body=hostile_bodies)
    def run(body: bytes) -> None:
        if body.count(b"[") + body.count(b"{") > 500 or b"canary" in body or b"sticky" in body:
            return  # nesting between the two recursion limits; aliases choose at random
        count("request body differential [fake vs wasm]")
        a, b = fake.send(body), wasm.send(body)
        assert outcome(a, body) == outcome(b, body)
        if a.local_response is not None:
            assert a.local_response.body == b.local_response.body
        assert a.request_body == b.request_body and a.request_headers == b.request_headers
        for g, s in ((fake, a), (wasm, b)):
            g.finish(s)
            g.clean()

    run()
    for g in (fake, wasm):
        g.healthy()
        g.no_secrets()


def _factory(kind: str) -> Any:
    def make(entry: str) -> Host:
        if kind == "fake":
            return FakeHost(entry)
        from proxywasm.testing.wasm import WasmHost

        return WasmHost(wasm_path(entry))

    make.kind = kind  # type: ignore[attr-defined]
    return make


# -------------------------------------------------------------------------------------------- security properties


@st.composite
def near_names(draw: Any) -> str:
    """Configured names, cluster names and header-injection attempts, perturbed."""
    base = draw(st.sampled_from([*NAMES, *(f"outbound|8080||{c}" for c in CLUSTERS)]))
    edit = draw(st.sampled_from(["as is", "prefix", "suffix", "case", "inject"]))
    extra = draw(any_text)
    if edit == "prefix":
        return extra + base
    if edit == "suffix":
        return base + extra
    if edit == "case":
        return base.swapcase()
    if edit == "inject":
        return f"{base}\r\nx-ai-upstream: {draw(st.sampled_from(sorted(CLUSTERS)))}\r\n"
    return base


def test_model_name_never_selects_an_unconfigured_upstream(gw: Gateway, count: Any) -> None:
    """For any string model, with forged routing headers and any sticky value: the request reaches a configured
    cluster, through a configured model that the name selects (itself, or a target of the alias it names), or the
    gateway answers 404."""
    @fuzz(700)
    @given(model=st.one_of(any_text, near_names()), forged=st.sampled_from([*sorted(CLUSTERS), "evil", "", "qwen\r\nx"]),
           user=any_text.map(as_header))
    def run(model: str, forged: str, user: str) -> None:
        count(f"model name property [{gw.kind}]")
        body = json.dumps({"model": model, "messages": []}).encode()  # ascii: lone surrogates stay escaped
        s = gw.send(body, {"x-ai-upstream": forged, "x-ai-model": forged, "x-user-id": user})
        if model in MODELS or model in ALIASES:
            routed = check_routed(s, body)
            assert routed == model or routed in ALIASES.get(model, ())
        else:
            assert check_error(s, (400, 404))["code"] == ("invalid_model" if model == "" else "model_not_found")
        gw.finish(s, "fail")  # fallbacks and mirrors too must stay inside the configured set
        gw.clean()

    run()
    gw.healthy()


def test_header_injection_and_smuggling(gw: Gateway, count: Any) -> None:
    body = chat_body()
    # a model name carrying a header: no such model, and nothing was added to the request
    s = gw.send(json.dumps({"model": "qwen2-1-5b\r\nx-ai-upstream: llama"}).encode())
    check_error(s, (404,))
    assert not [k for k, _ in s.request_headers if k.startswith("x-ai") or "\r" in k or "\n" in k]
    gw.finish(s)
    # forged routing headers, repeated and with CRLF: gone, whatever the answer (routed, 400, 404, pass-through)
    forged = [("x-ai-upstream", "llama"), ("x-ai-upstream", "evil\r\nx: y"), ("x-ai-model", "llama-3"),
              ("X-AI-Model", "gemma-2-2b")]
    for path, payload, kind in (("/v1/chat/completions", body, "routed"), ("/v1/chat/completions", b"{", "400"),
                                ("/v1/chat/completions", chat_body("nope"), "404"), ("/v1/other", body, "pass")):
        s = gw.stream([*{**CLIENT, ":path": path}.items(), *forged], payload)
        if kind == "routed":
            assert check_routed(s, payload) == "qwen2-1-5b"
        elif kind == "pass":
            check_passed(s, payload)
        else:
            check_error(s)
        gw.finish(s)
        count(f"header injection [{gw.kind}]")
    # duplicate content-length and transfer-encoding from the client: routing unchanged; a rewritten body gets exactly
    # one content-length, its own; an unchanged one keeps the client's framing headers for Envoy to judge
    for model, framing in (("gemma-2-2b", [("content-length", "5"), ("content-length", "999")]),
                           ("gemma-2-2b", [("transfer-encoding", "chunked"), ("content-length", "10")]),
                           ("qwen2-1-5b", [("content-length", "5"), ("content-length", "999")])):
        sent = chat_body(model)
        s = gw.stream([*CLIENT.items(), *framing], sent)
        assert check_routed(s, sent) == model
        if model == "qwen2-1-5b":
            assert header_values(s.request_headers, "content-length") == ["5", "999"] and s.request_body == sent
        gw.finish(s, "fail")
        count(f"header injection [{gw.kind}]")
    gw.healthy()


@pytest.mark.parametrize("config", [{}, {"_rules_": [{"_match_route_": ["special"], **CONFIG}]}],
                         ids=["empty-config", "rules-without-global"])
def test_forged_routing_headers_removed_when_gateway_is_off(make_host: Any, config: dict[str, Any]) -> None:
    """With the gateway off for a stream (``{}``, or ``_rules_`` that do not match and no global part), the request
    passes untouched — but a client still cannot choose the cluster (Envoy routes on ``x-ai-upstream``)."""
    h = make_host("ai_gateway")
    assert h.start(config)
    s = h.http_stream(properties={"route_name": "other"})
    s.send_request_headers({**CHAT, "x-ai-upstream": "internal-admin", "x-ai-model": "x"})
    s.send_request_body(chat_body())
    check_passed(s, chat_body())
    assert [k for k, _ in s.request_headers] == list(CHAT)


# -------------------------------------------------------------------------------------------- request headers


def corpus_headers() -> list[tuple[str, str, list[tuple[str, str]], str]]:
    cases = [(c["name"], c["model"], [tuple(p) for p in c["headers"]], c["expect"])
             for c in json.loads((CORPUS / "headers.json").read_text())]
    cases += [  # too big to keep as files
        ("value_1mb", "qwen2-1-5b", [("x-big", "a" * 1_000_000), ("x-mse-consumer", "\udce9\r\n\x00" * 10_000)], "routed"),
        ("headers_10k", "qwen2-1-5b", [(f"x-h{i}", "v" * 10) for i in range(10_000)], "routed"),
        ("name_64k", "qwen2-1-5b", [("x-" + "n" * 65_536, "v")], "routed"),
        ("sticky_1mb", "sticky", [("x-user-id", "\udcff" * 1_000_000)], "routed"),
    ]
    return cases


def send_headers(gw: Gateway, model: str, extra: list[tuple[str, str]]) -> tuple[Stream, bytes]:
    """The client's headers with ``extra`` replacing those of the same name (several of a name are all kept)."""
    names = {k.lower() for k, _ in extra}
    headers = [(k, v) for k, v in CLIENT.items() if k not in names] + extra
    body = chat_body(model)
    return gw.stream(headers, body), body


def check_header_case(s: Stream, body: bytes, model: str, expect: str) -> None:
    if expect == "routed":
        routed = check_routed(s, body)
        assert routed == model or routed in ALIASES.get(model, ())
    elif expect == "pass":
        check_passed(s, body)
    else:
        check_error(s, (int(expect),))


def test_header_corpus(gw: Gateway, count: Any) -> None:
    for name, model, extra, expect in corpus_headers():
        s, body = send_headers(gw, model, extra)
        try:
            check_header_case(s, body, model, expect)
            gw.finish(s)
            gw.clean()
        except AssertionError as e:
            raise AssertionError(f"header case {name!r} on {gw.kind}: {e}") from e
        count(f"header corpus [{gw.kind}]")
    gw.healthy()
    consumers = [n.split(".consumer.", 1)[1].rsplit(".metric.", 1)[0] for n in gw.h.metric_names if ".consumer." in n]
    assert consumers and all(re.fullmatch(r"[A-Za-z0-9_@:|\-]{1,64}", c) for c in consumers), "sanitized labels"


header_names = st.sampled_from(["x-user-id", "x-mse-consumer", "content-length", "transfer-encoding", "content-type",
                                "x-ai-upstream", "x-ai-model", "authorization", "api-key", "user-agent", "x-a", ""])
header_text = st.one_of(any_text.map(as_header), st.sampled_from(["\r\n", "\r\nx-ai-upstream: evil", "\x00", "application/json",
                                                   "chunked", "9" * 30, "\u00b2", "text/plain", " ", "-1"]))
raw_bytes = st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape"))


def test_fuzz_request_headers(gw: Gateway, count: Any) -> None:
    """Random header sets (CR/LF, NUL, raw bytes, duplicates of content-length/transfer-encoding, forged routing
    headers) around a valid body: routed by the body, 415 (a non-JSON content type) or 413 — never
    another route, and never a forged routing header left."""
    @fuzz(600)
    @given(model=st.sampled_from([*MODELS, *ALIASES]), extra=st.lists(
        st.tuples(header_names, st.one_of(header_text, raw_bytes)), max_size=8))
    def run(model: str, extra: list[tuple[str, str]]) -> None:
        count(f"header fuzz [{gw.kind}]")
        extra = [(k.lower(), v) for k, v in extra]
        s, body = send_headers(gw, model, extra)
        ctype = ",".join(v for k, v in extra if k == "content-type") if any(k == "content-type" for k, _ in extra) \
            else CHAT["content-type"]
        lengths = ",".join(v for k, v in extra if k == "content-length").lstrip("0")
        if ctype and not json_media_type(ctype):
            check_error(s, (415,))
        elif lengths.isascii() and lengths.isdigit() and (len(lengths) > 18 or int(lengths) > 10 * 1024 * 1024):
            check_error(s, (413,))
        else:
            check_header_case(s, body, model, "routed")
        gw.finish(s)
        gw.clean()

    run()
    gw.healthy()


# -------------------------------------------------------------------------------------------- upstream responses


def corpus_sse() -> list[tuple[str, bytes, list[int] | None]]:
    expected = json.loads((CORPUS / "sse" / "expected.json").read_text())
    cases = [(name, (CORPUS / "sse" / f"{name}.bin").read_bytes(), usage) for name, usage in sorted(expected.items())]
    usage = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
    cases += [  # too big to keep as files
        ("giant_event_then_usage", b"data: " + b"x" * (MAX_EVENT * 2) + b"\n\n" + usage, [3, 4, 7]),
        ("giant_usage_like_event", b'data: {"choices":[],"usage":{"prompt_tokens":9},"pad":"' + b"x" * (MAX_EVENT * 2)
         + b'"}\n\n', None),
        ("no_blank_lines_4mib", b"data: x\n" * (1 << 19), None),
        ("usage_deep", b'data: {"usage":{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}}\n\n", None),
        ("many_tiny_events", b"\n\n" * 50_000 + usage, [3, 4, 7]),
    ]
    return cases


def feed_split(sc: SseScanner, data: bytes, cuts: list[int]) -> bytes:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(points)):
        chunk = data[a:b]
        got = sc.feed(chunk, end=i == len(points) - 2)
        if not sc.drop:
            assert got is chunk  # without dropping, bytes pass on unchanged and at once
        assert len(sc.pending) <= MAX_EVENT  # held bytes stay bounded
        out.append(got)
    return b"".join(out)


def test_sse_corpus(count: Any) -> None:
    for name, data, usage in corpus_sse():
        want = Usage(*usage) if usage else None
        for drop in (False, True):
            whole = SseScanner(drop)
            out = whole.feed(data, end=True)
            assert whole.usage == want, (name, whole.usage)
            if not drop:
                assert out == data
            elif want is None or b'"choices":[]' not in data:
                assert out == data, name  # nothing removed unless a usage-only event was there
            step = max(1, len(data) // 7)
            for cuts in ([], list(range(0, len(data), 1 if len(data) < 600 else step)), [len(data) // 2, len(data) // 3]):
                split = SseScanner(drop)
                assert feed_split(split, data, cuts) == out, name
                assert split.usage == want, name
            count("sse corpus [scanner]", 4)


@fuzz(1500)
@given(data=st.one_of(
    st.binary(max_size=2000),
    st.lists(st.sampled_from([b"data: ", b'{"choices":[],"usage":{"prompt_tokens":2}}', b'{"usage":', b"[DONE]", b"\n",
                              b"\r", b"\r\n", b"\n\n", b"\x00", b"\xff", b"}", b"{", b'"usage"', b"x" * 50, b": c"]),
             max_size=60).map(b"".join)),
    cuts=st.lists(st.integers(0, 5000), max_size=40))
def test_fuzz_sse_scanner(data: bytes, cuts: list[int]) -> None:
    """Random bytes split anywhere: no exception, held bytes bounded, and the same output and usage as whole."""
    TRIED["sse scanner fuzz [scanner]"] += 1
    for drop in (False, True):
        whole = SseScanner(drop)
        out = whole.feed(data, end=True)
        split = SseScanner(drop)
        assert feed_split(split, data, cuts) == out
        assert split.usage == whole.usage
        assert len(out) <= len(data) and (drop or out == data)


def test_sse_scanner_is_linear_in_a_giant_event() -> None:
    """An upstream that never ends its event (8 MiB in 16 KiB chunks, or 64 KiB byte by byte) must cost linear time
    and bounded memory: before the fix this took ~27 s and held every byte."""
    for drop in (False, True):
        sc = SseScanner(drop)
        t = time.monotonic()
        chunk = b"data: " + b"x" * 16_000 + b"\n"
        passed = sum(len(sc.feed(chunk)) for _ in range(512))
        sc2 = SseScanner(drop)
        passed2 = sum(len(sc2.feed(b"z")) for _ in range(65_536))
        assert time.monotonic() - t < 5
        if drop:
            assert len(sc.pending) <= MAX_EVENT and len(sc2.pending) == 65_536
        else:  # passing through keeps only the stream's tail
            assert sc.tail_size <= TAIL_KEEP + len(chunk) and sc2.tail_size <= TAIL_KEEP and not sc.pending
        if drop:  # held while it could be a usage report, then passed on
            assert passed >= 512 * len(chunk) - MAX_EVENT and passed2 == 0
    TRIED["sse scanner giant event [scanner]"] += 2


@fuzz(500)
@given(data=st.one_of(st.binary(max_size=1000), json_values.map(lambda v: json.dumps(
    {"usage": v}, ensure_ascii=False).encode("utf-8", "surrogatepass"))), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_fuzz_json_usage(data: bytes, cuts: list[int]) -> None:
    """Non-streaming bodies: usage or None, never an exception, however the body arrives."""
    TRIED["json usage fuzz [collector]"] += 1
    want = usage_from_json(data)
    c = JsonCollector()
    points = sorted({x % (len(data) + 1) for x in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        c.feed(data[a:b])
    assert c.usage() == want
    assert want is None or isinstance(want, Usage)


def test_fuzz_responses_through_gateway(gw: Gateway, count: Any) -> None:
    """Random upstream bodies (SSE or JSON), split randomly: the client gets the bytes as sent (or, when the gateway
    asked for usage itself, as the scanner's reference strips them), metrics are recorded, nothing fails."""
    @fuzz(300)
    @given(data=st.one_of(st.binary(max_size=600), st.lists(st.sampled_from(
        [b"data: ", b'{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":1}}', b"\n\n", b"\r\n", b"\xff",
         b"[DONE]", b'{"choices":[{"delta":{"content":"a"}}]}', b"\x00{"]), max_size=30).map(b"".join)),
           cuts=st.lists(st.integers(0, 1000), max_size=6), sse=st.booleans(), asked=st.booleans())
    def run(data: bytes, cuts: list[int], sse: bool, asked: bool) -> None:
        count(f"response fuzz [{gw.kind}]")
        opts = {"stream_options": {"include_usage": True}} if asked else {}
        s = gw.send(chat_body("llama-3", stream=sse, **opts))
        check_routed(s, s.request_body)
        s.send_response_headers(SSE_HEADERS if sse else {":status": "200", "content-type": "application/json"})
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for i, (a, b) in enumerate(itertools.pairwise(points)):
            s.send_response_body(data[a:b], end_of_stream=i == len(points) - 2)
        want = SseScanner(True).feed(data, end=True) if sse and not asked else data
        assert s.response_body == want
        gw.finish(s)
        gw.clean()

    run()
    gw.healthy()


def test_hostile_retry_after_and_statuses(make_host: Any, count: Any) -> None:
    """An upstream's Retry-After is honoured up to a day; garbage falls back to the cooldown; never an exception."""
    cfg = {"models": [{"name": "gpt", "cluster": "provider", "api_keys": {"keys": POOL_KEYS[:2], "cooldown_ms": 5000}}]}
    for retry_after, out_ms in (("\u00b2", 5000), ("9" * 25, 86_400_000), ("99999999999", 86_400_000), ("7", 7000),
                                (" 12 ", 12_000), ("-5", 5000), ("Wed, 21 Oct 2015 07:28:00 GMT", 5000), ("", 5000)):
        g = Gateway(make_host, cfg)
        s = g.send(chat_body("gpt"), {"api-key": "not-a-credential-of-this-pool"})
        assert s.send_response_headers({":status": "429", "retry-after": retry_after}) == Action.PAUSE
        (call,) = g.h.callouts  # retried once with the other key
        assert call.cluster == "provider" and CLIENT_SECRET not in repr(call.headers)
        assert header_values(call.headers, "authorization") != header_values(s.request_headers, "authorization")
        raw = g.h.shared_data("aigw.keys.gpt")
        now_ms = g.h.state.shared.clock_ns // 1_000_000
        assert raw is not None and sorted(int.from_bytes(raw[i : i + 8], "little") - now_ms
                                          for i in (0, 20))[1] == out_ms, retry_after  # 20-byte records
        g.h.respond_callout(call.token, 200, {"content-type": "application/json"}, OK_BODY)
        g.finish(s)
        g.clean()
        g.no_secrets()
        count(f"retry-after [{g.kind}]")


# -------------------------------------------------------------------------------------------- plugin configuration


def corpus_configs() -> list[tuple[str, bytes, str]]:
    expected = json.loads((CORPUS / "configs" / "expected.json").read_text())
    cases = [(n, (CORPUS / "configs" / f"{n}.json").read_bytes(), r) for n, r in sorted(expected.items())]
    cases.append(("deep", b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid plugin configuration"))
    return cases


def refused(h: Host, since: int) -> str:
    """The reason a refused configuration was logged with (a CRITICAL line naming it; no traceback)."""
    lines = [m for lv, m in h.logs[since:] if lv >= LogLevel.ERROR]
    assert len(lines) == 1 and lines[0].startswith("invalid plugin configuration: "), lines
    return lines[0]


def test_config_corpus(make_host: Any, count: Any) -> None:
    """Each bad configuration fails plugin start with its reason logged; the VM stays usable."""
    for name, raw, reason in corpus_configs():
        h = make_host("ai_gateway")
        assert h.start(raw) is False, name
        assert reason in refused(h, 0), (name, h.logs)
        assert getattr(h, "trap", None) is None
        assert h.configure(HOSTILE_CONFIG)  # the same VM takes a good configuration and serves
        s = h.http_stream()
        s.send_request_headers(CLIENT)
        s.send_request_body(chat_body())
        assert s.request_header("x-ai-upstream") == "qwen", name
        count(f"config corpus [{make_host.kind}]")


CONFIG_KEYS = ["models", "aliases", "name", "cluster", "upstream_model", "authority", "fallback", "on_status", "mode",
               "max_attempts", "timeout_ms", "mirror", "model", "percent", "api_keys", "keys", "header", "prefix",
               "selection", "eject_on", "consecutive_5xx", "cooldown_ms", "when_all_out", "probe", "path",
               "interval_ms", "targets", "weight", "sticky_header", "route_header", "max_body_bytes", "paths",
               "_rules_", "_match_route_", "_match_domain_", "metrics", "ai_log", "x"]
config_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**13), st.floats(), any_text,
                        st.sampled_from(["5xx", "\u00b2", "\u0665\u0660\u0663", "503", " 429 ", "SEQ", "RAND", "qwen2-1-5b",
                                         "gemma-2-2b", "fail", "soonest", "random", "9" * 30, "", "x.y|z"]))
config_values = st.recursive(config_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(CONFIG_KEYS) | any_text, c, max_size=5), max_leaves=14)
MUTABLE = {"": ["name", "cluster", "upstream_model", "authority", "fallback", "mirror", "api_keys"],
           "fallback": ["models", "on_status", "mode", "max_attempts", "timeout_ms"],
           "mirror": ["model", "percent"],
           "api_keys": ["keys", "header", "prefix", "selection", "eject_on", "consecutive_5xx", "cooldown_ms",
                        "when_all_out", "forward_client_credential", "probe"],
           "top": ["route_header", "model_header", "max_body_bytes", "paths", "fallback", "_rules_", "metrics", "ai_log",
                   "aliases", "models", "consumer_header", "inject_stream_usage"]}


@st.composite
def mutated_configs(draw: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(HOSTILE_CONFIG))
    doc["models"][2]["fallback"] = {"models": ["qwen2-1-5b"], "on_status": ["5xx", 429]}
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(MUTABLE)))
        value = draw(st.one_of(config_values, st.lists(config_leaf, min_size=1, max_size=3)))
        key = draw(st.sampled_from(MUTABLE[section]))
        if section == "top":
            doc[key] = value
            continue
        models = doc.get("models")
        if not isinstance(models, list) or not models or not isinstance(models[-1], dict):
            continue  # an earlier mutation replaced them
        model = models[draw(st.integers(0, len(models) - 1))]
        if not isinstance(model, dict):
            continue
        if section == "":
            model[key] = value
        elif isinstance(model.get(section), dict):
            model[section][key] = value
    return doc


@fuzz(1500)
@given(doc=st.one_of(config_values, mutated_configs()))
def test_fuzz_config_parse(doc: Any) -> None:
    """Any JSON document: a Config or a ConfigError naming the field — never another exception."""
    TRIED["config parse fuzz [parse]"] += 1
    try:
        parse_config(doc)
    except ConfigError:
        pass


config_bytes = st.one_of(st.binary(max_size=200), config_values.map(lambda v: json.dumps(v).encode()),
                         mutated_configs().map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
                         mutated_bodies())


def test_fuzz_config_through_host(make_host: Any, count: Any) -> None:
    """Random configuration bytes: the plugin takes them or refuses them with a logged reason — through a fresh VM's
    start and a running VM's reconfiguration — and the VM serves with a good configuration afterwards."""
    kind = make_host.kind

    @fuzz(40)
    @given(raw=config_bytes)
    def fresh(raw: bytes) -> None:
        count(f"config start fuzz [{kind}]")
        h = make_host("ai_gateway")
        if not h.start(raw):
            refused(h, 0)
        assert getattr(h, "trap", None) is None
        assert h.configure(HOSTILE_CONFIG)

    fresh()
    g = Gateway(make_host)

    @fuzz(400)
    @given(raw=config_bytes)
    def running(raw: bytes) -> None:
        count(f"config reconfigure fuzz [{kind}]")
        since = len(g.h.logs)
        if not g.h.configure(raw):
            refused(g.h, since)
        g.checked = len(g.h.logs)
        assert g.h.configure(HOSTILE_CONFIG)
        g.healthy()

    running()


def test_config_failure_keeps_the_previous_one(make_host: Any) -> None:
    """A refused reconfiguration leaves the running one in place (Envoy keeps the old plugin on a bad update)."""
    g = Gateway(make_host)
    assert g.h.configure(b'{"models": 1}') is False
    g.checked = len(g.h.logs)
    g.healthy()


# -------------------------------------------------------------------------------------------- secrets


def test_secrets_never_leak_under_key_failures(gw: Gateway, count: Any) -> None:
    """Key failures (401/403/429 with hostile Retry-After, 5xx, resets) around hostile bodies: neither the pool keys
    nor the client's credential appear in logs, metric names, local replies or the AI log (checked at teardown), and
    the client's credential never goes upstream to a pool model — directly, by fallback or by mirror."""
    statuses = ["401", "403", "429", "500", "503", "200"]
    for i, (_, body, _) in enumerate(corpus_requests()[:60]):
        s = gw.send(body)
        if s.local_response is None:
            check_routed(s, body)  # (checks the credentials sent upstream)
            status = statuses[i % len(statuses)]
            s.send_response_headers({":status": status, "retry-after": ["\u00b2", "9" * 30, "1"][i % 3]})
            for c in gw.h.callouts:
                check_callout(c)
                if i % 4 == 0:
                    gw.h.fail_callout(c.token)
                else:
                    gw.h.respond_callout(c.token, int(statuses[(i + 1) % len(statuses)]), {}, OK_BODY)
            if not s.local_response:
                s.send_response_body(OK_BODY, True)
        gw.finish(s)
        gw.clean()
        count(f"secrets under key failures [{gw.kind}]")
    gw.h.advance(86_400_000 + 60_000)  # every cooldown over (a Retry-After counts up to a day): keys come back
    gw.healthy()


# -------------------------------------------------------------------------------------------- summary for the report


def test_corpus_is_small() -> None:
    """The stored corpus stays a seed set (large inputs are built by the tests)."""
    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert size < 200_000, size
