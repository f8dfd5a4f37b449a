"""Reading and rewriting OpenAI-style request bodies."""

from __future__ import annotations

import json

from .errors import GatewayError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def parse_body(body: bytes) -> tuple[dict[str, Any], str]:
    """Return (document, model); a GatewayError (400) says what is wrong."""
    if not body.strip():
        raise GatewayError(400, "request body is required", "missing_body")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers invalid UTF-8 and invalid JSON; RecursionError absurd nesting
        raise GatewayError(400, "request body is not valid JSON", "invalid_json") from None
    if not isinstance(doc, dict):
        raise GatewayError(400, "request body must be a JSON object", "invalid_json")
    model = doc.get("model")
    if model is None:
        raise GatewayError(400, "you must provide a model parameter", "missing_model", "model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "model must be a non-empty string", "invalid_model", "model")
    return doc, model


def with_model(doc: dict[str, Any], model: str) -> bytes:
    """The request body with ``model`` replaced (other fields keep their order)."""
    return json.dumps({**doc, "model": model}, ensure_ascii=False, separators=(",", ":")).encode()


def needs_usage(doc: dict[str, Any]) -> bool:
    """A streaming request that did not ask for the final usage chunk."""
    opts = doc.get("stream_options")
    return doc.get("stream") is True and not (isinstance(opts, dict) and opts.get("include_usage") is True)


def with_usage_requested(doc: dict[str, Any]) -> dict[str, Any]:
    opts = doc.get("stream_options")
    return {**doc, "stream_options": {**(opts if isinstance(opts, dict) else {}), "include_usage": True}}
