"""Envoy attributes a plugin commonly needs, read the same way everywhere.

Envoy moved some attributes under ``xds.`` (``xds.route_name``, ``xds.cluster_name``);
older hosts (Higress's Envoy) still answer the short names. Try both.
"""

from __future__ import annotations

from . import hostcalls as hc


def _first(*paths: tuple[str, ...]) -> str:
    for path in paths:
        value = hc.get_property(path)
        if value:
            return value.decode("utf-8", "replace")
    return ""


def route_name() -> str:
    return _first(("xds", "route_name"), ("route_name",))


def cluster_name() -> str:
    return _first(("xds", "cluster_name"), ("cluster_name",))


def response_flags() -> int:
    """Envoy's response flags (``response.flags``: the legacy bit set, e.g. 0x4000 downstream connection
    termination); 0 when the host has none."""
    value = hc.get_property(("response", "flags"))
    return int.from_bytes(value[:8], "little") if value else 0


def response_code_details() -> str:
    """Why the response is what it is (``response.code_details``, e.g. ``via_upstream``)."""
    return _first(("response", "code_details"))
