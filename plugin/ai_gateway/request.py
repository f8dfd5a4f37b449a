"""Reading and rewriting OpenAI-style request bodies."""

from __future__ import annotations

import json

from proxywasm import jsonscan
from proxywasm.jsonscan import DECODER

from .errors import GatewayError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# json.dumps with options builds a new encoder per call: these are made once.
_ENCODE_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ENCODE_ASCII = json.JSONEncoder(separators=(",", ":")).encode


_LITERALS = {b"true": True, b"false": False, b"null": None}
_NOT_LITERAL = object()


class RequestDoc:
    """A request body known to be a JSON object; its top-level members are decoded only when read.

    Reading ``model`` and ``stream`` this way costs a tenth of building the whole document, which is
    done (once) only when the body is rewritten.
    """

    __slots__ = ("_full", "_spans", "raw")

    def __init__(self, raw: bytes, members: list[tuple[int, int, int, int]]) -> None:
        self.raw = raw
        self._full: dict[str, Any] | None = None
        spans: dict[bytes, list[tuple[int, int]]] = {}  # by the key's UTF-8 bytes, JSON escapes resolved
        for ks, ke, vs, ve in members:
            key = raw[ks + 1 : ke - 1]
            if b"\\" in key:
                key = DECODER.decode(raw[ks:ke].decode("utf-8")).encode("utf-8", "surrogatepass")
            spans.setdefault(key, []).append((vs, ve))
        self._spans = spans

    def get(self, key: str, default: Any = None) -> Any:
        """The member's value (the last one when repeated, as json.loads keeps)."""
        spans = self._spans.get(key.encode())
        if not spans:
            return default
        vs, ve = spans[-1]
        raw = self.raw[vs:ve]
        if raw[:1] == b'"' and b"\\" not in raw:  # a plain string (model names): no decoder needed
            return raw[1:-1].decode("utf-8")
        literal = _LITERALS.get(raw, _NOT_LITERAL)
        return DECODER.decode(raw.decode("utf-8")) if literal is _NOT_LITERAL else literal

    def count(self, key: str) -> int:
        return len(self._spans.get(key.encode(), ()))

    def full(self) -> dict[str, Any]:
        if self._full is None:
            self._full = DECODER.decode(self.raw.decode("utf-8"))
        return self._full


def parse_body(body: bytes) -> tuple[RequestDoc, str]:
    """Return (document, model); a GatewayError (400) says what is wrong."""
    if not body.strip():
        raise GatewayError(400, "request body is required", "missing_body")
    try:
        members = jsonscan.members(body)
    except ValueError:  # invalid UTF-8, invalid JSON, non-finite numbers, absurd nesting
        raise GatewayError(400, "request body is not valid JSON", "invalid_json") from None
    if members is None:
        raise GatewayError(400, "request body must be a JSON object", "invalid_json")
    doc = RequestDoc(body, members)
    model = doc.get("model")
    if model is None:
        raise GatewayError(400, "you must provide a model parameter", "missing_model", "model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "model must be a non-empty string", "invalid_model", "model")
    return doc, model


def duplicate_model(doc: RequestDoc) -> bool:
    """Whether the body's top-level object has ``model`` more than once.

    The gateway routes by the last one (as Python's json does); an upstream whose parser keeps the
    first would serve another model, so such a body is always rewritten with one ``model``.
    """
    return doc.count("model") > 1


def _dict(doc: RequestDoc | dict[str, Any]) -> dict[str, Any]:
    return doc.full() if isinstance(doc, RequestDoc) else doc


def with_model(doc: RequestDoc | dict[str, Any], model: str) -> bytes:
    """The request body with ``model`` replaced (other fields keep their order)."""
    doc = {**_dict(doc), "model": model}
    try:
        return _ENCODE_UTF8(doc).encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") has no UTF-8 form: keep it escaped, as sent
        return _ENCODE_ASCII(doc).encode()


def needs_usage(doc: RequestDoc | dict[str, Any]) -> bool:
    """A streaming request that did not ask for the final usage chunk."""
    opts = doc.get("stream_options")
    return doc.get("stream") is True and not (isinstance(opts, dict) and opts.get("include_usage") is True)


def with_usage_requested(doc: RequestDoc | dict[str, Any]) -> dict[str, Any]:
    opts = doc.get("stream_options")
    return {**_dict(doc), "stream_options": {**(opts if isinstance(opts, dict) else {}), "include_usage": True}}
