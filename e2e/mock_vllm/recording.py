"""Received requests as the mock keeps them (``MockServer.requests``, ``GET /mock/requests``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_RECORDED = 1000
MOCK_REQUESTS_SHOWN = 50


@dataclass
class Recorded:
    """One received request. ``body`` is the parsed JSON value, or the raw bytes when it is not JSON."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    api_key: str | None = None
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["body_is_json"] = not isinstance(self.body, bytes)
        if isinstance(self.body, bytes):
            doc["body"] = self.body.decode("utf-8", "replace")
        return doc
