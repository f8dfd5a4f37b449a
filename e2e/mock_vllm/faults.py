"""Failure injection: what to break (``Fault``), from ``set_fault()``, ``POST /mock/fault`` or ``x-mock-*`` headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Fault:
    """What to break. Every field's name is also its key in ``set_fault()`` and ``POST /mock/fault``."""

    status: int | None = None
    message: str | None = None
    retry_after: str | None = None
    delay_ms: int = 0
    ttft_ms: int = 0
    token_delay_ms: int | None = None
    drop_after_chunks: int | None = None
    drop: bool = False
    reset: bool = False
    fail_count: int | None = None
    no_usage: bool = False
    ping_ms: int = 0
    sse_newline: str = "lf"

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> Fault:
        """Validate a JSON-ish mapping; raise ``ValueError`` naming the bad key."""
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown fault key(s) {sorted(unknown)}; known: {sorted(known)}")
        out: dict[str, Any] = {}
        for key, value in doc.items():
            if value is None:
                continue
            if key in ("drop", "reset", "no_usage"):
                out[key] = _as_bool(key, value)
            elif key == "sse_newline":
                if value not in SSE_NEWLINES:
                    raise ValueError(f"fault 'sse_newline' must be one of {sorted(SSE_NEWLINES)}, got {value!r}")
                out[key] = value
            elif key == "message":
                out[key] = str(value)
            elif key == "retry_after":
                out[key] = str(_as_int(key, value, 0))
            elif key == "status":
                out[key] = _as_int(key, value, 400, 599)
            elif key == "fail_count":
                out[key] = _as_int(key, value, 1)
            else:
                out[key] = _as_int(key, value, 0)
        return cls(**out)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False, 0) and (k, v) != ("sse_newline", "lf")}

    @property
    def newline(self) -> bytes:
        return SSE_NEWLINES[self.sse_newline]


SSE_NEWLINES = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


HEADER_FAULTS = {"x-mock-status": "status", "x-mock-message": "message", "x-mock-retry-after": "retry_after",
                 "x-mock-delay-ms": "delay_ms", "x-mock-ttft-ms": "ttft_ms", "x-mock-token-delay-ms": "token_delay_ms",
                 "x-mock-drop-after-chunks": "drop_after_chunks", "x-mock-drop": "drop", "x-mock-reset": "reset",
                 "x-mock-no-usage": "no_usage", "x-mock-ping-ms": "ping_ms", "x-mock-sse-newline": "sse_newline"}


def _as_int(key: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool):
        raise ValueError(f"fault {key!r} must be an integer")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"fault {key!r} must be an integer, got {value!r}") from None
    if n < lo or (hi is not None and n > hi):
        raise ValueError(f"fault {key!r} must be in [{lo}, {hi if hi is not None else 'inf'}], got {n}")
    return n


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"fault {key!r} must be a boolean, got {value!r}")
