"""Reading and rewriting OpenAI-style request bodies."""

from __future__ import annotations

import json
import re

from .errors import GatewayError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# json.dumps with options builds a new encoder per call: these are made once.
_ENCODE_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ENCODE_ASCII = json.JSONEncoder(separators=(",", ":")).encode

# A "model" key, however it is spelled (JSON escapes included): two of them may mean a duplicate key.
_MODEL_KEY = re.compile(rb'"(?:m|\\u006[dD])(?:o|\\u006[fF])(?:d|\\u0064)(?:e|\\u0065)(?:l|\\u006[cC])"\s*:')


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # 1e999 overflows to inf, which json.dumps would write as Infinity
        raise ValueError("number out of range")
    return value


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity: Python accepts them, JSON does not


_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_not_json)  # json.loads(**hooks) builds one per call


def _loads(body: bytes, **hooks: Any) -> Any:
    # JSON between systems is UTF-8 (RFC 8259): decoding here, strictly, rejects UTF-16/32, a BOM and
    # encoded surrogates alike on every host (json.loads(bytes) would guess the encoding, and the WASI
    # build has no utf-16-le/utf-8-sig codecs to guess with).
    text = body.decode("utf-8")
    if hooks:
        return json.loads(text, parse_float=_finite, parse_constant=_not_json, **hooks)
    return _DECODER.decode(text)


def parse_body(body: bytes) -> tuple[dict[str, Any], str]:
    """Return (document, model); a GatewayError (400) says what is wrong."""
    if not body.strip():
        raise GatewayError(400, "request body is required", "missing_body")
    try:
        doc = _loads(body)
    except (ValueError, RecursionError):
        # ValueError covers invalid UTF-8, invalid JSON and non-finite numbers; RecursionError absurd nesting
        raise GatewayError(400, "request body is not valid JSON", "invalid_json") from None
    if not isinstance(doc, dict):
        raise GatewayError(400, "request body must be a JSON object", "invalid_json")
    model = doc.get("model")
    if model is None:
        raise GatewayError(400, "you must provide a model parameter", "missing_model", "model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "model must be a non-empty string", "invalid_model", "model")
    return doc, model


def duplicate_model(body: bytes) -> bool:
    """Whether the body's top-level object has ``model`` more than once.

    The gateway routes by the last one (Python's json); an upstream whose parser keeps the
    first would serve another model, so such a body is always rewritten with one ``model``.
    """
    if b"\\u" not in body and body.count(b'"model"') < 2:
        return False  # the common case, decided by byte searches (the regex is costly in the VM)
    if len(_MODEL_KEY.findall(body)) < 2:
        return False
    try:
        pairs = _loads(body, object_pairs_hook=lambda p: p)  # only the top level stays a list of pairs
    except (ValueError, RecursionError):
        return True
    return sum(1 for k, _ in pairs if k == "model") > 1


def with_model(doc: dict[str, Any], model: str) -> bytes:
    """The request body with ``model`` replaced (other fields keep their order)."""
    doc = {**doc, "model": model}
    try:
        return _ENCODE_UTF8(doc).encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") has no UTF-8 form: keep it escaped, as sent
        return _ENCODE_ASCII(doc).encode()


def needs_usage(doc: dict[str, Any]) -> bool:
    """A streaming request that did not ask for the final usage chunk."""
    opts = doc.get("stream_options")
    return doc.get("stream") is True and not (isinstance(opts, dict) and opts.get("include_usage") is True)


def with_usage_requested(doc: dict[str, Any]) -> dict[str, Any]:
    opts = doc.get("stream_options")
    return {**doc, "stream_options": {**(opts if isinstance(opts, dict) else {}), "include_usage": True}}
