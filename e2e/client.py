"""HTTP client helpers shared by the e2e tests: one request per fresh connection."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def echoed(self) -> dict[str, Any]:
        """The echo upstream's view of the request (method, path, headers, body)."""
        assert self.headers.get("content-type") == "application/json", self
        doc = self.json()
        assert set(doc) == {"method", "path", "headers", "body"}, doc
        return doc


def request(port: int, path: str, method: str = "GET", body: bytes | Iterable[bytes] | Any = None,
            headers: Mapping[str, str] | None = None, timeout: float = 15, host: str = "127.0.0.1") -> Reply:
    """One request on a fresh connection (fresh connections spread over Envoy's workers).

    ``body``: bytes as they are, an iterable of bytes sent chunked, anything else as JSON.
    """
    hdrs = dict(headers or {})
    chunked = False
    if body is not None and not isinstance(body, bytes):
        if isinstance(body, (list, tuple)) or hasattr(body, "__next__"):
            chunked = True
        else:
            body = json.dumps(body).encode()
            hdrs.setdefault("content-type", "application/json")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs, encode_chunked=chunked)
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def wait_for(check: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passes (bounded waiting instead of sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()
