"""Redis's wire format (RESP2): commands out, replies in. Used with Higress's Redis host calls, with an HTTP
front for Redis (webdis ``.raw`` answers are RESP too), and by the test hosts that talk to a real redis-server."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ReplyError(str):
    """An error reply (``-ERR ...``): a value, not an exception, so a reply array can hold one."""


class Incomplete(ValueError):
    """The bytes end before the reply does."""


def command(*args: str | bytes | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse(data: bytes, pos: int = 0) -> tuple[Any, int]:
    """One reply from ``data[pos:]``: (value, position after it). Bulk strings come as bytes, integers as int,
    nil as None, errors as ReplyError. Raises Incomplete when more bytes are needed, ValueError on garbage."""
    end = data.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete("reply line not complete")
    kind, line, nxt = data[pos:pos + 1], data[pos + 1:end], end + 2
    if kind == b"+":
        return line.decode("utf-8", "replace"), nxt
    if kind == b"-":
        return ReplyError(line.decode("utf-8", "replace")), nxt
    if kind == b":":
        return int(line), nxt
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, nxt
        if len(data) < nxt + n + 2:
            raise Incomplete("bulk string not complete")
        return data[nxt:nxt + n], nxt + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            v, nxt = parse(data, nxt)
            items.append(v)
        return items, nxt
    raise ValueError(f"not a RESP reply: {data[pos:pos + 16]!r}")


def reply(data: bytes) -> Any:
    """The whole of ``data`` as one reply (ValueError when it is not exactly one)."""
    value, end = parse(data)
    if end != len(data):
        raise ValueError("bytes after the reply")
    return value
