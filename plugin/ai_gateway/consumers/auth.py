"""Who is calling: the gateway's own API keys, read from ``Authorization: Bearer``, a key header or a query
parameter, matched by SHA-256 (configs may hold only digests). The key never goes upstream."""

from __future__ import annotations

from ..errors import GatewayError
from .config import Consumer, Consumers, digest

_CHALLENGE = (("www-authenticate", 'Bearer realm="ai-gateway"'),)


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, "invalid_api_key", extra_headers=_CHALLENGE)


def _query_keys(path: str, name: str) -> list[str]:
    q = path.partition("?")[2]
    return [v for k, _, v in (p.partition("=") for p in q.split("&")) if k == name] if q else []


def presented(cc: Consumers, hd: dict[str, str]) -> list[str]:
    """Every key the request carries (several values of one header count as several keys)."""
    keys = []
    for name in cc.headers:
        raw = hd.get(name)
        if raw is None:
            continue
        if name == "authorization" and "," not in raw and raw[:7].lower() == "bearer ":  # the usual request
            keys.append(raw[7:].strip())
            continue
        for v in raw.split(","):
            v = v.strip()
            if name == "authorization":
                scheme, _, v = v.partition(" ")
                if scheme.lower() != "bearer":
                    continue  # another scheme (Basic ...) is not ours to judge
                v = v.strip()
            keys.append(v)
    if cc.query:
        keys += _query_keys(hd.get(":path", ""), cc.query)
    return keys


def identify(cc: Consumers, hd: dict[str, str], consumer_header: str) -> tuple[str, Consumer | None]:
    """(consumer name, its config); GatewayError 401 for no, an unknown, or several keys."""
    keys = presented(cc, hd)
    if len(keys) > 1:
        raise _unauthorized("Several API keys were provided; send exactly one.")
    if not keys:
        trusted = hd.get(consumer_header, "").strip() if cc.trust_header else ""
        if trusted:  # set by an auth layer in front that the operator trusts (Higress key-auth)
            return trusted, cc.by_name.get(trusted)
        raise _unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    consumer = cc.by_digest.get(digest(keys[0])) if keys[0] else None
    if consumer is None:
        raise _unauthorized("Incorrect API key provided.")  # never echo the key
    return consumer.name, consumer


def strip(cc: Consumers, h: object, hd: dict[str, str]) -> None:
    """Remove the client's key from the request (headers, query parameter)."""
    for name in cc.headers:
        if name in hd:
            h.remove(name)  # type: ignore[attr-defined]
    if cc.query:
        path = hd.get(":path", "")
        base, sep, q = path.partition("?")
        if sep:
            kept = [p for p in q.split("&") if p.partition("=")[0] != cc.query]
            new = base + ("?" + "&".join(kept) if kept else "")
            if new != path:
                h.set(":path", new)  # type: ignore[attr-defined]
                hd[":path"] = new


def forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, "permission_denied")
