"""Usage extraction: non-streaming JSON and SSE split anywhere (property-based)."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ai_gateway.usage import JsonCollector, SseScanner, Usage, usage_from_json


def sse_stream(words: list[str], usage: tuple[int, int] | None, crlf: bool = False) -> tuple[bytes, bytes]:
    """(full stream, stream as a client who did not ask for usage sees it)."""
    nl = b"\r\n" if crlf else b"\n"
    events = [{"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}}],
               "usage": None} for w in words]
    body = b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + nl + nl for e in events)
    extra = b""
    if usage:
        u = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
        extra = b"data: " + json.dumps({"id": "c", "choices": [], "usage": u}).encode() + nl + nl
    done = b"data: [DONE]" + nl + nl
    return body + extra + done, body + done


def feed_split(scanner: SseScanner, data: bytes, cuts: list[int]) -> bytes:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    parts = [data[a:b] for a, b in itertools.pairwise(points)]
    out = b"".join(scanner.feed(p, end=i == len(parts) - 1) for i, p in enumerate(parts))
    return out


words = st.lists(st.text(min_size=0, max_size=6), min_size=0, max_size=12)  # any unicode, incl. multi-byte
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=30)


@settings(max_examples=300, deadline=None)
@given(words=words, cuts=cuts, prompt=st.integers(0, 10**6), completion=st.integers(0, 10**6), crlf=st.booleans())
def test_any_split_gives_same_usage_and_bytes(words, cuts, prompt, completion, crlf) -> None:
    full, stripped = sse_stream(words, (prompt, completion), crlf)
    for drop, want in ((False, full), (True, stripped)):
        whole = SseScanner(drop)
        assert whole.feed(full, end=True) == want
        split = SseScanner(drop)
        assert feed_split(split, full, cuts) == want
        assert split.usage == whole.usage == Usage(prompt, completion, prompt + completion)


@settings(max_examples=100, deadline=None)
@given(words=words, cuts=cuts, cut_at=st.integers(0, 10_000))
def test_truncated_or_usageless_stream_is_passed_on_unchanged(words, cuts, cut_at) -> None:
    full, _ = sse_stream(words, None)
    truncated = full[: cut_at % (len(full) + 1)]
    for drop in (False, True):
        sc = SseScanner(drop)
        assert feed_split(sc, truncated, cuts) == truncated
        assert sc.usage is None


# Blank lines that end an event (WHATWG: two line ends, each LF, CRLF or CR); the data line ends with the first half.
FRAMINGS = [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n"]


def framed_stream(words: list[str], usage: tuple[int, int], ends: list[bytes]) -> tuple[bytes, bytes]:
    """(stream, stream without its usage-only event): a `: ping`, a role-only delta, one event per word, usage,
    [DONE]; event i ends with ends[i % len(ends)]."""
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None}
    events = [b": ping", b"data: " + json.dumps(role).encode()]
    events += [b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": w}}], "usage": None},
                                      ensure_ascii=False).encode() for w in words]
    u = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    events += [b"data: " + json.dumps({"choices": [], "usage": u}).encode(), b"data: [DONE]"]
    framed = [e + ends[i % len(ends)] for i, e in enumerate(events)]
    return b"".join(framed), b"".join(framed[:-2] + framed[-1:])


@settings(max_examples=300, deadline=None)
@given(words=words, cuts=cuts, ends=st.lists(st.sampled_from(FRAMINGS), min_size=1, max_size=4))
def test_any_framing_split_anywhere_gives_same_usage_and_bytes(words, cuts, ends) -> None:
    """LF LF, CRLF CRLF, CR CR and mixes, per event, the stream cut anywhere: the usage, the events dropped and the
    bytes passed on are those of the whole stream (and the skimming scanner agrees with the reference)."""
    full, stripped = framed_stream(words, (7, len(words)), ends)
    for drop, want in ((False, full), (True, stripped)):
        for skim in (True, False):
            sc = SseScanner(drop)
            sc.skim = skim
            assert feed_split(sc, full, cuts) == want
            assert (sc.usage, sc.done) == (Usage(7, len(words), 7 + len(words)), True)


def test_garbage_and_invalid_utf8_never_raise() -> None:
    junk = b'data: {"usage": {"prompt_tokens": \xff\xfe}\n\ndata: {"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'
    for drop in (False, True):
        sc = SseScanner(drop)
        assert sc.feed(junk, end=True) == junk  # the usage event has no "choices": [] so it is kept
        assert sc.usage == Usage(3, 4, 7)


def test_json_usage_and_fallbacks() -> None:
    body = json.dumps({"id": "x", "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}).encode()
    assert usage_from_json(body) == Usage(5, 7, 12)
    assert usage_from_json(b'{"choices": []}') is None
    assert usage_from_json(b'{"usage": {"prompt_tokens": -3, "completion_tokens": true}}') == Usage(0, 0, 0)
    assert usage_from_json(b'{"data": [1, 2], "usage": {"prompt_tokens": 9, "total_tokens": 9}') == Usage(9, 0, 9)
    assert usage_from_json(b"\xff not json") is None


def test_large_body_usage_found_in_tail() -> None:
    body = b'{"data": [' + b"0.123," * 300_000 + b'0], "usage": {"prompt_tokens": 8, "total_tokens": 8}}'
    c = JsonCollector()
    for i in range(0, len(body), 65536):
        c.feed(body[i : i + 65536])
    assert c.usage() == Usage(8, 0, 8)


sse_pieces = st.lists(st.sampled_from([
    b"data: ", b'{"choices":[{"delta":{"content":"hi"}}],"usage":null}', b'{"choices":[],"usage":{"prompt_tokens":2,'
    b'"completion_tokens":3}}', b'"usage": null', b'"usage" :{"total_tokens":9}}', b'"usage"', b"[DONE]", b"\n", b"\r",
    b"\r\n", b"\n\n", b"\r\n\r\n", b"x" * 40, b": ping", b"data: [DONE]\n\n"]), max_size=80).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(data=sse_pieces, cuts=cuts)
def test_skimming_a_passed_through_stream_finds_what_splitting_every_event_finds(data: bytes, cuts: list[int]) -> None:
    """The scanner skips events without a usage object or [DONE] (and, passing through, reads only the stream's
    tail): it must pass on and record exactly what reading every event does, however the stream is cut."""
    for drop in (False, True):
        reference = SseScanner(drop)
        reference.skim = False
        want = feed_split(reference, data, cuts)
        skim = SseScanner(drop)
        assert feed_split(skim, data, cuts) == want
        assert (skim.usage, skim.done) == (reference.usage, reference.done)


def test_skimmed_tail_reports_both_usage_and_done() -> None:
    data = b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}\n\ndata: [DONE]\n\n'
    sc = SseScanner(False)
    assert sc.feed(data, end=True) == data
    assert (sc.usage, sc.done) == (Usage(2, 3, 5), True)


_PIECES = [b"data: ", b'"usage"', b": ", b"null", b"{}", b"\t", b":", b"[DONE]", b"\n\n", b"\r", b"x", b"nu", b" " * 9]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12).map(b"".join))
def test_skip_markers_are_the_scanners_rule(chunk: bytes) -> None:
    """A rewritten stream's chunks skip Python (proxywasm.taps) exactly when the scanner would find nothing in them:
    SKIP_MARKERS match where _interesting does (a "usage" not followed by null, or [DONE])."""
    from ai_gateway.usage import SKIP_MARKERS, _interesting
    from proxywasm.testing.shim_twins import marked

    assert marked(chunk, SKIP_MARKERS) == (_interesting(bytearray(chunk), 0) >= 0)
