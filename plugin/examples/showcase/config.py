"""Typed configuration of the showcase plugin."""

from __future__ import annotations

from proxywasm import Fields, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@record
class Callout:
    cluster: str
    path: str
    authority: str
    timeout_ms: int


@record
class Config:
    header_name: str
    header_value: str
    deny_paths: tuple[str, ...]
    redact: str  # word replaced in request bodies ("" = off)
    callout_prefix: str  # requests under this path first ask `callout`
    callout: Callout | None
    tick_ms: int


def parse(doc: dict[str, Any]) -> Config:
    f = Fields(doc)
    header = f.obj("header", None)
    name = value = ""
    if header is not None:
        name, value = header.str("name"), header.str("value")
        header.done()
    co = f.obj("callout", None)
    callout = None
    prefix = ""
    if co is not None:
        callout = Callout(co.str("cluster"), co.str("path", "/"), co.str("authority", "callout"),
                          co.int("timeout_ms", 1000, min=1, max=60000))
        prefix = co.str("prefix", "/callout")
        co.done()
    cfg = Config(name, value, f.str_list("deny_paths", ()), f.str("redact", ""), prefix, callout,
                 f.int("tick_ms", 0, min=0, max=3_600_000))
    f.done()
    return cfg
