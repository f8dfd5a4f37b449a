"""OpenAI-style error replies from the gateway itself."""

from __future__ import annotations

import json

JSON_HEADERS = (("content-type", "application/json"),)
MAX_ECHO = 256  # characters of client input an error message repeats


def shown(value: str) -> str:
    """Client input as an error message repeats it: at most MAX_ECHO characters."""
    return value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "..."


_TYPES = {"insufficient_quota": "insufficient_quota"}  # OpenAI's error types other than the usual two


def error_body(status: int, message: str, code: str, param: str | None = None, kind: str = "") -> bytes:
    kind = kind or ("invalid_request_error" if status < 500 and code not in _TYPES else "server_error" if status >= 500
            else _TYPES[code])
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


class GatewayError(Exception):
    """A request the gateway answers itself, with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 retry_after_s: int = 0, extra_headers: tuple[tuple[str, str], ...] = (), kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s  # > 0: sent as Retry-After (what OpenAI clients back off on)
        self.extra_headers = extra_headers
        self.kind = kind  # the error's "type" when not the usual one (OpenAI's 429s: "requests", "tokens")

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        h = (*JSON_HEADERS, ("retry-after", str(self.retry_after_s))) if self.retry_after_s > 0 else JSON_HEADERS
        return (*h, *self.extra_headers) if self.extra_headers else h

    @property
    def body(self) -> bytes:
        return error_body(self.status, str(self), self.code, self.param, self.kind)
