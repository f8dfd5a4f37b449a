"""Reading and rewriting OpenAI-style request bodies."""

from __future__ import annotations

import json

from proxywasm import jsonscan
from proxywasm.jsonscan import JsonObject

from .errors import GatewayError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# json.dumps with options builds a new encoder per call: these are made once.
_ENCODE_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ENCODE_ASCII = json.JSONEncoder(separators=(",", ":")).encode


def json_media_type(content_type: str) -> bool:
    """``application/json`` or any ``*/*+json`` / ``*/json`` type, parameters allowed (as FastAPI accepts)."""
    media = content_type.partition(";")[0].strip().lower()
    return media.endswith(("/json", "+json")) and "/" in media


class RequestDoc(JsonObject):
    """A request body known to be a JSON object (``model`` and ``stream`` are read without building it)."""

    __slots__ = ()


def parse_body(body: bytes) -> tuple[RequestDoc, str]:
    """Return (document, model); a GatewayError (400) says what is wrong."""
    try:
        found = jsonscan.index(body)
    except ValueError:  # invalid UTF-8, invalid JSON, non-finite numbers, absurd nesting; or nothing at all
        if not body.strip():
            raise GatewayError(400, "request body is required", "missing_body") from None
        raise GatewayError(400, "request body is not valid JSON", "invalid_json") from None
    if found is None:
        raise GatewayError(400, "request body must be a JSON object", "invalid_json")
    doc = RequestDoc(body, found)
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


def as_dict(doc: RequestDoc | dict[str, Any]) -> dict[str, Any]:
    """The request as a dict (a lazy document decoded whole)."""
    return doc.full() if isinstance(doc, RequestDoc) else doc


def encode_json(doc: Any) -> bytes:
    """Compact JSON, UTF-8 (a lone surrogate such as ``"\ud800"`` has no UTF-8 form: then kept escaped, as sent)."""
    try:
        return _ENCODE_UTF8(doc).encode()
    except UnicodeEncodeError:
        return _ENCODE_ASCII(doc).encode()


def with_model(doc: RequestDoc | dict[str, Any], model: str) -> bytes:
    """The request body with ``model`` replaced (other fields keep their order)."""
    return encode_json({**as_dict(doc), "model": model})


def needs_usage(doc: RequestDoc | dict[str, Any]) -> bool:
    """A streaming request that did not ask for the final usage chunk."""
    if doc.get("stream") is not True:
        return False
    # stream_options read as a lazy object when it is one (no JSON decoder on the hot path)
    opts = doc.object("stream_options") if isinstance(doc, RequestDoc) else doc.get("stream_options")
    return not (isinstance(opts, (dict, JsonObject)) and opts.get("include_usage") is True)


def with_usage_requested(doc: RequestDoc | dict[str, Any]) -> dict[str, Any]:
    opts = doc.get("stream_options")
    return {**as_dict(doc), "stream_options": {**(opts if isinstance(opts, dict) else {}), "include_usage": True}}
