"""The admin API: read, set and top up a consumer's token balance (JSON; admin consumers only; route
allow-lists do not apply, so an admin is never locked out by the AI routes' own rules).

    GET  <admin.path>/<consumer>/quota            -> {"consumer": "team-a", "quota": 1200}
    POST <admin.path>/<consumer>/quota {"set": N} or {"add": N}
"""

from __future__ import annotations

import json

from proxywasm import Action

from ..errors import JSON_HEADERS, GatewayError
from .config import Consumers
from .store import store_for

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _name(cc: Consumers, path: str) -> str | None:
    p = path.partition("?")[0]
    prefix = cc.admin_path + "/"
    if not p.startswith(prefix) or not p.endswith("/quota"):
        return None
    name = p[len(prefix):-len("/quota")]
    return name if name and "/" not in name else None


def matches(cc: Consumers, path: str) -> bool:
    return path.partition("?")[0].startswith(cc.admin_path + "/")


def _answer(stream: Any, name: str, value: int | None) -> None:
    if value is None:
        stream._reject(GatewayError(503, "The quota store is unavailable; retry later.", "quota_unavailable"))
        return
    stream.send_local_response(200, json.dumps({"consumer": name, "quota": value}).encode(), JSON_HEADERS)


def on_headers(stream: Any, cc: Consumers, hd: dict[str, str]) -> Action:
    who = stream.who
    if who is None or not who.admin:
        return stream._reject(GatewayError(403, "This API needs an admin consumer's key.", "permission_denied"))
    name = _name(cc, hd.get(":path", ""))
    if name is None:
        return stream._reject(GatewayError(404, f"Use {cc.admin_path}/<consumer>/quota.", "not_found"))
    if name not in cc.by_name:
        return stream._reject(GatewayError(404, f"No consumer `{name}`.", "consumer_not_found"))
    method = hd.get(":method", "")
    if method == "GET":
        store_for(cc.store).balance(stream, name, "get", 0, lambda v: _answer(stream, name, v))
        return Action.PAUSE
    if method != "POST":
        return stream._reject(GatewayError(405, "Use GET or POST.", "method_not_allowed"))
    stream.admin_target = name
    return Action.PAUSE  # the body says what to do


def on_body(stream: Any, cc: Consumers, body: bytes) -> Action:
    name = stream.admin_target
    try:
        doc = json.loads(body or b"null")
    except ValueError:
        doc = None
    ops = [k for k in ("set", "add") if isinstance(doc, dict) and k in doc]
    n = doc.get(ops[0]) if len(ops) == 1 else None  # type: ignore[union-attr]
    if not isinstance(n, int) or isinstance(n, bool) or abs(n) > 1 << 53:
        return stream._reject(GatewayError(400, 'Send {"set": <tokens>} or {"add": <tokens>}.', "invalid_request"))
    store_for(cc.store).balance(stream, name, ops[0], n, lambda v: _answer(stream, name, v))
    return Action.PAUSE
