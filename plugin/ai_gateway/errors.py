"""OpenAI-style error replies from the gateway itself."""

from __future__ import annotations

import json

JSON_HEADERS = (("content-type", "application/json"),)
MAX_ECHO = 256  # characters of client input an error message repeats


def shown(value: str) -> str:
    """Client input as an error message repeats it: at most MAX_ECHO characters."""
    return value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "..."


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


class GatewayError(Exception):
    """A request the gateway answers itself, with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 retry_after_s: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s  # > 0: sent as Retry-After (what OpenAI clients back off on)

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return (*JSON_HEADERS, ("retry-after", str(self.retry_after_s))) if self.retry_after_s > 0 else JSON_HEADERS

    @property
    def body(self) -> bytes:
        return error_body(self.status, str(self), self.code, self.param)
