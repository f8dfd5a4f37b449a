"""What every worker knows about a picker's endpoints: one JSON record per cluster in shared data.

``aigw.picker.<cluster>`` maps each endpoint to its last scrape::

    {"10.0.0.1:8000": [try_ms, ok_ms, up, waiting, running, kv_cache, max_lora,
                       [running adapters], [waiting adapters], model, failures,
                       itl_sum, itl_count, itl_ms], ...}

``try_ms`` is when the last finished scrape started, ``ok_ms`` when the last good one answered,
``up`` whether the last one was good. ``itl_sum`` / ``itl_count`` are the pod's
``vllm:time_per_output_token_seconds`` counters at that scrape (-1: not exported) and ``itl_ms`` the
pod's recent time per output token: the mean between two scrapes, smoothed (0: not known yet). Only the lease holder writes (by CAS, per answer); every
worker reads it at most once per ``refresh_ms`` into a per-VM ``View`` (and decodes it only when
its CAS changed), so the per-request cost is usually no host call at all.
"""

from __future__ import annotations

import json

from proxywasm import Counter, shared

from ..request import encode_json as encode
from .affinity import Prefixes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .promtext import ServerMetrics

_FAR_PAST = -(1 << 62)


def key_of(cluster: str) -> str:
    return f"aigw.picker.{cluster}"


def decode(raw: bytes | None) -> dict:
    if not raw:
        return {}
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}  # written by another plugin version, or garbage: start over
    return doc if isinstance(doc, dict) else {}


class Endpoint:
    """One endpoint as this VM last read it, plus this VM's own requests to it."""

    __slots__ = ("adapters", "addr", "bit", "counter", "done", "down", "inflight", "itl", "kv", "max_lora", "model",
                 "ok_ms", "picks", "recent", "running", "running_adapters", "try_ms", "up", "waiting",
                 "waiting_adapters")

    def __init__(self, addr: str, bit: int) -> None:
        self.addr = addr
        self.bit = bit  # this endpoint's bit in the View's prefix table
        self.counter: Counter | None = None  # picks metric, made on first pick
        self.try_ms = self.ok_ms = 0
        self.up = self.down = False  # down: the last scrape failed
        self.waiting = self.running = self.kv = 0.0
        self.max_lora = -1
        self.running_adapters: frozenset = frozenset()
        self.waiting_adapters: frozenset = frozenset()
        self.model = ""
        self.itl = 0.0  # the pod's recent time per output token, ms (0: unknown)
        self.picks = 0  # requests this VM sent here since the last scrape it saw
        self.done = 0  # and of its requests here, those that ended since that scrape
        self.inflight = 0  # this VM's requests here that have not ended
        self.adapters: dict[str, int] = {}  # adapter -> this VM's requests for it here that have not ended
        self.recent: list[str] = []  # adapters this VM sent here, most recent last (a few)

    def load_estimate(self) -> float:
        """Requests at the pod: the scraped running + waiting, plus this VM's picks since, minus its requests
        that ended since; never below this VM's own requests there."""
        return max(self.inflight, self.running + self.waiting + self.picks - self.done)

    def load(self, rec: list) -> None:
        try:
            try_ms, ok_ms, up, waiting, running, kv, max_lora, run_ad, wait_ad, model = rec[:10]
            itl = float(rec[13]) if len(rec) > 13 else 0.0
            fresh_scrape = try_ms != self.try_ms
            self.try_ms, self.ok_ms, self.up = int(try_ms), int(ok_ms), bool(up)
            self.waiting, self.running, self.kv = float(waiting), float(running), float(kv)
            self.max_lora, self.model = int(max_lora), str(model)
            self.running_adapters, self.waiting_adapters = frozenset(run_ad), frozenset(wait_ad)
            self.itl = itl if itl > 0 else 0.0
        except (TypeError, ValueError):
            return
        self.down = not self.up and self.try_ms > 0
        if fresh_scrape:
            self.picks = self.done = 0


class View:
    """This VM's copy of one cluster's record."""

    def __init__(self, cluster: str, refresh_ms: int) -> None:
        self.key = key_of(cluster)
        self.refresh_ms = refresh_ms
        self.read_ms = _FAR_PAST
        self.cas: int | None = None
        self.endpoints: dict[str, Endpoint] = {}
        self.rr = 0  # round-robin position (ties)
        self.prefixes = Prefixes()  # where this VM sent which prompt prefixes

    def endpoint(self, addr: str) -> Endpoint:
        e = self.endpoints.get(addr)
        if e is None:
            e = self.endpoints[addr] = Endpoint(addr, 1 << len(self.endpoints))
        return e

    def invalidate(self) -> None:
        self.read_ms = _FAR_PAST

    def refresh(self, now_ms: int) -> None:
        if now_ms - self.read_ms < self.refresh_ms:
            return
        self.read_ms = now_ms
        raw, cas = shared.get(self.key)
        if cas == self.cas:
            return
        self.cas = cas
        for addr, rec in decode(raw).items():
            e = self.endpoints.get(addr)
            if e is not None and isinstance(rec, list):
                e.load(rec)


_VIEWS: dict[str, View] = {}
ITL_SMOOTHING = 0.1  # weight of the newest interval in itl_ms: ~2 s to follow a change at 200 ms scrapes


def itl_ms(before: list, total_s: float, count: float) -> float:
    """The pod's time per output token (ms), smoothed: the mean over the tokens decoded since the previous
    scrape (``before`` = its [itl_sum, itl_count, itl_ms]) blended into the previous value; unchanged when no
    token was decoded in between (or the counters went back: a restarted pod)."""
    try:
        old_sum, old_count, old = float(before[0]), float(before[1]), float(before[2])
    except (TypeError, ValueError, IndexError):
        return 0.0
    if count < 0 or old_count < 0 or count <= old_count or total_s < old_sum:
        return old if count >= 0 and count >= old_count else 0.0
    mean = (total_s - old_sum) / (count - old_count) * 1000
    return mean if old <= 0 else old + ITL_SMOOTHING * (mean - old)


def view_of(cluster: str, refresh_ms: int) -> View:
    v = _VIEWS.get(cluster)
    if v is None:
        v = _VIEWS[cluster] = View(cluster, refresh_ms)
    v.refresh_ms = min(v.refresh_ms, refresh_ms)
    return v


def record(cluster: str, results: list[tuple[str, int, ServerMetrics | None]], now_ms: int,
           known: frozenset) -> dict[str, tuple[bool, int, float]]:
    """Store scrape outcomes ``(endpoint, started_ms, metrics or None)`` in one CAS write; returns, per endpoint,
    (was it up before, its failure count before, its time per output token now).

    An answer older than the one already recorded (a slow scrape overtaken by a newer round) is dropped;
    endpoints no longer configured are forgotten.
    """
    before: dict[str, tuple[bool, int, float]] = {}

    def update(raw: bytes | None) -> bytes:
        doc = decode(raw)
        for gone in [a for a in doc if a not in known]:
            del doc[gone]
        for addr, started_ms, m in results:
            old = doc.get(addr)
            old = old if isinstance(old, list) and len(old) >= 11 else None
            fails = int(old[10]) if old and isinstance(old[10], int) else 0
            before[addr] = (bool(old and old[2]), fails, 0.0)
            if old and isinstance(old[0], int) and old[0] > started_ms:
                continue  # a newer scrape already answered
            speed = old[11:14] if old and len(old) >= 14 else [-1, -1, 0]
            if m is None:
                rec = [*(old[:10] if old else [0, 0, 0, 0, 0, 0, -1, [], [], ""]), fails + 1, *speed]
                rec[0], rec[2] = started_ms, 0
            else:
                rec = [started_ms, now_ms, 1, m.waiting, m.running, m.kv_cache, m.max_lora,
                       list(m.running_adapters), list(m.waiting_adapters), m.model, 0,
                       m.itl_sum, m.itl_count, itl_ms(speed, m.itl_sum, m.itl_count)]
                before[addr] = (before[addr][0], fails, rec[13])
            doc[addr] = rec
        return encode(doc)

    shared.update(key_of(cluster), update)
    v = _VIEWS.get(cluster)
    if v is not None:
        v.invalidate()  # this VM sees its own scrape at once
    return before
