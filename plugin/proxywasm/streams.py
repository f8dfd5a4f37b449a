"""Accessors for one stream's header maps and body buffers."""

from __future__ import annotations

from . import hostcalls as hc
from .abi import BufferType, MapType, Result

_NOT_FOUND = int(Result.NOT_FOUND)


class Headers:
    """A header map of the current stream (or of a callout response).

    ``get`` and ``set`` call the host directly: they run several times per request, and
    every Python frame costs inside the VM.
    """

    __slots__ = ("map_type",)

    def __init__(self, map_type: MapType) -> None:
        self.map_type = int(map_type)

    def get(self, name: str, default: str | None = None) -> str | None:
        st, value = hc.raw_calls.proxy_get_header_map_value(self.map_type, name.encode())
        if st == 0:
            return value.decode("utf-8", "surrogateescape")
        if st == _NOT_FOUND:
            return default
        raise hc._error("proxy_get_header_map_value", st)

    def __getitem__(self, name: str) -> str:
        value = hc.get_header_map_value(self.map_type, name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: str) -> bool:
        return hc.get_header_map_value(self.map_type, name) is not None

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` (adds it when absent)."""
        st = hc.raw_calls.proxy_replace_header_map_value(self.map_type, name.encode(), value.encode("utf-8", "surrogateescape"))
        if st:
            raise hc._error("proxy_replace_header_map_value", st)

    __setitem__ = set

    def add(self, name: str, value: str) -> None:
        hc.add_header_map_value(self.map_type, name, value)

    def remove(self, name: str) -> None:
        hc.remove_header_map_value(self.map_type, name)

    __delitem__ = remove

    def items(self) -> list[tuple[str, str]]:
        return hc.get_header_map_pairs(self.map_type)

    def snapshot(self, names: tuple[bytes, ...] | None = None) -> dict[str, str]:
        """Every header in one host call: name -> value, repeated names joined with "," as ``get`` does; with
        ``names`` (lowercase, as bytes) only those (decoding every header costs microseconds inside V8).

        Cheaper than two ``get`` calls: each host call that returns bytes costs microseconds in the VM.
        """
        return hc.get_header_map_dict(self.map_type, names)

    def replace_all(self, pairs: hc.HeaderInput) -> None:
        hc.set_header_map_pairs(self.map_type, pairs)

    def __len__(self) -> int:
        return hc.get_header_map_size(self.map_type)


class Body:
    """The part of a body buffered by the host so far."""

    __slots__ = ("buffer_type",)

    def __init__(self, buffer_type: BufferType) -> None:
        self.buffer_type = buffer_type

    def read(self, start: int = 0, size: int = 0xFFFFFFFF) -> bytes:
        return hc.get_buffer(self.buffer_type, start, size) or b""

    def size(self) -> int:
        return hc.get_buffer_status(self.buffer_type)[0]

    def replace(self, data: bytes) -> None:
        """Replace the whole buffered body."""
        hc.set_buffer(self.buffer_type, 0, 0xFFFFFFFF, data)

    def append(self, data: bytes) -> None:
        hc.set_buffer(self.buffer_type, 0xFFFFFFFF, 0, data)

    def prepend(self, data: bytes) -> None:
        hc.set_buffer(self.buffer_type, 0, 0, data)


REQUEST_HEADERS = Headers(MapType.REQUEST_HEADERS)
REQUEST_TRAILERS = Headers(MapType.REQUEST_TRAILERS)
RESPONSE_HEADERS = Headers(MapType.RESPONSE_HEADERS)
RESPONSE_TRAILERS = Headers(MapType.RESPONSE_TRAILERS)
REQUEST_BODY = Body(BufferType.HTTP_REQUEST_BODY)
RESPONSE_BODY = Body(BufferType.HTTP_RESPONSE_BODY)
