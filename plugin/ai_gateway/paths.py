"""Request paths as an upstream server sees them.

Envoy passes ``//v1/chat/completions``, ``/v1/./chat/completions`` or ``/v1%2Fchat%2Fcompletions`` on unchanged
unless the HTTP connection manager normalises paths (``merge_slashes``, ``normalize_path``,
``path_with_escaped_slashes_action``: the shipped configs do), while inference servers (uvicorn/Starlette: vLLM,
SGLang) decode and route such paths to the endpoint. The gateway therefore judges every request by its
normalised path — a fragment cut, percent-escapes decoded, empty and ``.`` segments dropped, ``..`` resolved, a
trailing ``/`` removed — and sends a request it handles upstream with that path, so no spelling of an AI path escapes routing,
keys and accounting.
"""

from __future__ import annotations

_HEX = "0123456789abcdefABCDEF"


def _unescape(path: str) -> str:
    """Percent-escapes decoded (as bytes, then UTF-8 with invalid bytes kept as surrogates); bad escapes kept."""
    if "%" not in path:
        return path
    parts = path.split("%")
    out = bytearray(parts[0].encode("utf-8", "surrogateescape"))
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            out.append(int(part[:2], 16))
            out += part[2:].encode("utf-8", "surrogateescape")
        else:
            out += b"%" + part.encode("utf-8", "surrogateescape")
    return out.decode("utf-8", "surrogateescape")


def normalize(path: str) -> str:
    """The path part of ``:path`` (no query), normalised; most paths come back as they are, at once."""
    if "//" not in path and "/." not in path and "%" not in path and "#" not in path and (
            path[-1:] != "/" or path == "/"):
        return path
    segments: list[str] = []
    for seg in _unescape(path.partition("#")[0]).split("/"):
        if seg == "..":
            if segments:
                segments.pop()
        elif seg and seg != ".":
            segments.append(seg)
    return "/" + "/".join(segments)


def split(raw: str) -> tuple[str, str]:
    """``:path`` -> (normalised path, the query with its ``?`` or "")."""
    path, sep, query = raw.partition("?")
    return normalize(path), sep + query
