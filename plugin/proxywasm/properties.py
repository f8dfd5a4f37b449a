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
