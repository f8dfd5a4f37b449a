"""Token usage estimated when the server reports none (``usage_source: "estimated"`` in the AI log).

Some servers ignore ``stream_options.include_usage``, and a stream cut short never reaches its usage chunk; some
JSON answers carry no ``usage``. The gateway then estimates what it cannot read, and says so.

Output tokens come from the generated text the answer carried: the JSON members named in ``OUTPUT_KEYS`` whose
value is a non-empty string (``content``, reasoning, completion ``text``, tool-call ``name``/``arguments``), counted
with their bytes. For a stream the response tap counts them in C as the chunks go by (proxywasm.taps,
``count_response_strings``); a whole body (JSON answer, a fallback's answer) is counted here with the same rule.

* Servers that stream token by token send one such member per token (vLLM, SGLang, llama.cpp, TGI by default):
  the count *is* the output token count. Their members average 3-6 bytes (a BPE token is ~4 bytes of English).
* Servers that batch several tokens per event (``--stream-interval``, hosted APIs) and JSON answers (one member)
  give more bytes per member: then the bytes are divided by ``BYTES_PER_TOKEN``.

The switch is ``TOKEN_MEMBER_BYTES``: at most that many bytes per member on average reads as one token each.
Measured on the mock vLLM through Envoy (bench/ai/estimate_accuracy.py, table in the README under Benchmarks):
streams of one event per token are exact; the byte rule reads the mock's word-sized tokens ~1.4x high.

Input tokens come from the request as the client sent it: the bytes of its text (``content``, completion
``prompt``, content ``text`` parts) over ``BYTES_PER_TOKEN``, plus ``MESSAGE_OVERHEAD`` per chat message and once for
the reply (the chat template's role markers: 3 each, as OpenAI documents for its chat models). The body is read for
this only when an estimate is needed.
"""

from __future__ import annotations

from proxywasm.taps import count_strings

from .usage import Usage

OUTPUT_KEYS = (b"content", b"reasoning_content", b"reasoning", b"text", b"arguments", b"name")
PROMPT_KEYS = (b"content", b"prompt", b"text")
BYTES_PER_TOKEN = 4
TOKEN_MEMBER_BYTES = 8
MESSAGE_OVERHEAD = 3


def output_tokens(strings: int, string_bytes: int) -> int:
    """Output tokens from the counted members and their bytes."""
    if string_bytes <= TOKEN_MEMBER_BYTES * strings:
        return strings  # one token per member (or nothing at all)
    return -(-string_bytes // BYTES_PER_TOKEN)


def input_tokens(request: bytes) -> int:
    """Input tokens of a request body (chat messages or a completion prompt)."""
    n, size = count_strings(request, PROMPT_KEYS)
    messages = request.count(b'"role"')
    text = -(-size // BYTES_PER_TOKEN) if n else -(-len(request) // (2 * BYTES_PER_TOKEN))
    return text + (MESSAGE_OVERHEAD * (messages + 1) if messages else 0)


def estimate(request: bytes, strings: int, string_bytes: int) -> Usage:
    inp, out = input_tokens(request), output_tokens(strings, string_bytes)
    return Usage(inp, out, inp + out)


def body_output(body: bytes) -> tuple[int, int]:
    """(members, bytes) of a whole answer (JSON, or a whole SSE stream) by the tap's rule."""
    return count_strings(body, OUTPUT_KEYS)
