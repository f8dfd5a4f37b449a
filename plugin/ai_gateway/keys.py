"""Upstream API-key pools: rotation among healthy keys, health shared by all workers.

Each model's pool keeps, in Envoy shared data (``aigw.keys.<model>``), one record per
key: the time (ms) until which it is out of rotation, its consecutive 5xx count and its
ejection count. Every worker reads the record before choosing a key, and changes go
through compare-and-swap, so an ejection made by one worker is honoured by all at once
and concurrent updates are never lost.

Keys never leave this module except in the upstream credential header: logs and
metrics use an 8-hex fingerprint (sha256 prefix).
"""

from __future__ import annotations

import struct
from _sha256 import sha256  # built into the WASI CPython; hashlib would import more

from proxywasm import Counter, Gauge, LogLevel, MetricCache, record, shared
from proxywasm import hostcalls as hc

from .fieldcheck import has_control, header_name, header_value, url_path
from .lease import take_lease
from .metric_names import key_metric

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random

_REC = struct.Struct("<QIII")  # out_until_ms, consecutive 5xx, ejections, held (1: out by the provider's Retry-After)
MAX_RETRY_AFTER_S = 86_400  # up to a day, as cooldown_ms
_COUNTERS = MetricCache(Counter)
_GAUGES = MetricCache(Gauge)


def fingerprint(key: str) -> str:
    return sha256(key.encode()).hexdigest()[:8]


@record
class Probe:
    path: str
    interval_ms: int
    timeout_ms: int


@record
class KeyPoolConfig:
    keys: tuple  # the secrets
    fingerprints: tuple
    header: str
    prefix: str
    selection: str  # round_robin | random
    eject_on: frozenset  # statuses that take a key out at once
    consecutive_5xx: int  # 0 = never eject for 5xx
    cooldown_ms: int
    when_all_out: str  # fail | soonest
    forward_client_credential: bool
    probe: Probe | None

    def __repr__(self) -> str:  # never print the keys
        return f"KeyPoolConfig({len(self.keys)} keys: {', '.join(self.fingerprints)})"


def _decode(raw: bytes | None, n: int) -> list[list[int]]:
    if raw is None or len(raw) != _REC.size * n:
        return [[0, 0, 0, 0] for _ in range(n)]  # new pool, or the key list changed
    return [list(_REC.unpack_from(raw, i * _REC.size)) for i in range(n)]


def _encode(recs: list[list[int]]) -> bytes:
    return b"".join(_REC.pack(*r) for r in recs)


class KeyPool:
    """One model's pool as seen by this VM."""

    def __init__(self, model: str, cfg: KeyPoolConfig) -> None:
        self.model = model
        self.cfg = cfg
        self.key = f"aigw.keys.{model}"
        self.lease_key = self.key + ".probe_lease"
        self.rr = 0
        self.gauges_set = False
        self._requests = [_COUNTERS(self._metric(i, "requests")) for i in range(len(cfg.keys))]
        # The records as last decoded, with their CAS: unchanged shared data is not decoded again.
        # (cas, records, keys in rotation, ms when the next cooldown ends)
        self._view: tuple[int, list[list[int]], list[int], int] = (-1, [], [], 0)

    def _metric(self, idx: int, name: str) -> str:
        return key_metric(self.model, self.cfg.fingerprints[idx], name)

    def state(self) -> list[list[int]]:
        raw, cas = shared.get(self.key)
        if cas == self._view[0]:  # cas 0: never written (every key in rotation)
            return self._view[1]
        recs = _decode(raw, len(self.cfg.keys))
        until = min([r[0] for r in recs if r[0]] or [1 << 62])
        self._view = (cas, recs, [i for i, r in enumerate(recs) if not r[0]], until)
        return recs

    def pick(self, now_ms: int, rng: random.Random, exclude: frozenset = frozenset()) -> int | None:
        """A healthy key's index (not in ``exclude``), else per ``when_all_out``; None: fail."""
        recs = self.state()
        _, _, rotation, until = self._view
        if rotation and now_ms < until and not exclude and self.gauges_set and self.cfg.selection != "random":
            # The common case, without scanning the records: no cooldown has ended since they were decoded.
            self.rr += 1
            idx = rotation[self.rr % len(rotation)]
            self._requests[idx].increment()
            return idx
        n = len(recs)
        back = [i for i in range(n) if 0 < recs[i][0] <= now_ms]
        if back or not self.gauges_set:
            self._mark_available(recs, back, now_ms)
        healthy = [i for i in range(n) if recs[i][0] <= now_ms and i not in exclude]
        if healthy:
            if self.cfg.selection == "random":
                idx = rng.choice(healthy)
            else:  # rotate over the healthy keys only, so every healthy key gets an equal share
                self.rr += 1
                idx = healthy[self.rr % len(healthy)]
        elif self.cfg.when_all_out == "soonest" and len(exclude) < n:
            idx = min((i for i in range(n) if i not in exclude), key=lambda i: recs[i][0])
        else:
            return None
        self._requests[idx].increment()
        return idx

    def _mark_available(self, recs: list[list[int]], back: list[int], now_ms: int) -> None:
        """Publish the ``available`` gauges; keys whose cooldown ended are cleared in shared data
        once (by CAS), so the VM that notices first also logs their return."""
        if not self.gauges_set:
            self.gauges_set = True
            for i, rec in enumerate(recs):
                _GAUGES(self._metric(i, "available")).set(int(rec[0] <= now_ms))
        if not back:
            return
        cleared: list[int] = []

        def update(raw: bytes | None) -> bytes:
            cleared.clear()
            cur = _decode(raw, len(self.cfg.keys))
            for i in back:
                if 0 < cur[i][0] <= now_ms:
                    cur[i][0] = cur[i][3] = 0
                    cleared.append(i)
            return _encode(cur)

        shared.update(self.key, update)
        for i in cleared:
            _GAUGES(self._metric(i, "available")).set(1)
            hc.log(LogLevel.INFO, f"key {self.cfg.fingerprints[i]} of {self.model} back in rotation (cooldown over)")

    def credential(self, idx: int) -> tuple[str, str]:
        return self.cfg.header, self.cfg.prefix + self.cfg.keys[idx]

    def report(self, idx: int, status: int, now_ms: int, retry_after: str | None = None) -> bool:
        """Account an answer got with key ``idx``; True if the key was taken out by it."""
        cfg = self.cfg
        eject_ms = held = 0
        if status in cfg.eject_on:
            eject_ms = cfg.cooldown_ms
            secs = (retry_after or "").strip()
            if status == 429 and secs.isascii() and secs.isdigit():  # honour the provider's Retry-After (<= a day)
                eject_ms = (min(int(secs), MAX_RETRY_AFTER_S) if len(secs) <= 9 else MAX_RETRY_AFTER_S) * 1000
                held = 1  # the provider said when: no probe puts the key back earlier
        is_5xx = status >= 500 or status == 0
        if is_5xx or eject_ms:
            _COUNTERS(self._metric(idx, "failures")).increment()
        ejected = False

        def update(raw: bytes | None) -> bytes:
            nonlocal ejected
            recs = _decode(raw, len(cfg.keys))
            rec = recs[idx]
            ejected = False
            if is_5xx:
                rec[1] += 1
            elif rec[1]:
                rec[1] = 0
            out = eject_ms or (cfg.cooldown_ms if cfg.consecutive_5xx and rec[1] >= cfg.consecutive_5xx else 0)
            if out and rec[0] <= now_ms:
                rec[0], rec[1], rec[2], rec[3] = now_ms + out, 0, rec[2] + 1, held
                ejected = True
            return _encode(recs)

        if not (is_5xx or eject_ms):
            # A success writes only to clear a 5xx streak, as seen when this request picked its key (the
            # next read after any change sees it afresh): no shared-data read on the common path.
            recs = self._view[1]
            if recs and not recs[idx][1]:
                return False
        if is_5xx or eject_ms or self.state()[idx][1]:
            shared.update(self.key, update)
        if ejected:
            _COUNTERS(self._metric(idx, "ejections")).increment()
            _GAUGES(self._metric(idx, "available")).set(0)
            hc.log(LogLevel.WARN, f"key {cfg.fingerprints[idx]} of {self.model} out of rotation "
                                  f"after status {status}")
        return ejected

    def restore(self, idx: int) -> bool:
        """Put a key back (a probe succeeded), unless the provider's Retry-After still holds it; True if back."""
        restored = False

        def update(raw: bytes | None) -> bytes:
            nonlocal restored
            recs = _decode(raw, len(self.cfg.keys))
            restored = not recs[idx][3]  # out until the provider's Retry-After: not the probe's to end
            if restored:
                recs[idx][0] = recs[idx][1] = 0
            return _encode(recs)

        shared.update(self.key, update)
        if restored:
            _GAUGES(self._metric(idx, "available")).set(1)
            hc.log(LogLevel.INFO, f"key {self.cfg.fingerprints[idx]} of {self.model} back in rotation")
        return restored

    def take_probe_lease(self, owner: int, now_ms: int) -> bool:
        """One worker probes per interval: a lease in shared data, taken by CAS."""
        assert self.cfg.probe is not None
        return take_lease(self.lease_key, owner, now_ms, self.cfg.probe.interval_ms)


def _key(where: str, raw: str) -> str:
    """One key as configured: a single trailing newline (from a secret file) is removed; the key is never echoed."""
    from proxywasm import ConfigError

    key = raw[:-2] if raw.endswith("\r\n") else raw[:-1] if raw.endswith("\n") else raw
    if not key:
        raise ConfigError(f"{where}: must not be empty")
    if has_control(key):
        raise ConfigError(f"{where}: must not contain control characters (CR, LF, NUL, ...; only one trailing "
                          "newline is removed)")
    if key != key.strip():
        raise ConfigError(f"{where}: must not begin or end with spaces")
    return key


def _env(f: object, i: int, name: str) -> str:
    """A key from the VM's environment (Envoy: vm_config.environment_variables; Higress: vmConfig.env)."""
    import os

    from proxywasm import ConfigError

    value = os.environ.get(name) if name else None
    if value is None:
        raise ConfigError(f"{f.path('keys_env')}[{i}]: environment variable {name!r} is not set in the Wasm VM "
                          "(Envoy: vm_config.environment_variables.host_env_keys; Higress: vmConfig.env)")
    return value


def parse_pool(f: object, model: str, default_header: str = "authorization") -> KeyPoolConfig:
    """Parse ``models[].api_keys`` (``f`` is a proxywasm.Fields); ``default_header``: where the model's provider
    takes its key."""
    from proxywasm import ConfigError

    keys = tuple(_key(f"{f.path('keys')}[{i}]", k) for i, k in enumerate(f.str_list("keys", ())))
    keys += tuple(_key(f"{f.path('keys_env')}[{i}]", _env(f, i, name)) for i, name in enumerate(f.str_list("keys_env", ())))
    if not keys:
        raise ConfigError(f"{f.path('keys')}: must be a non-empty list of non-empty keys (or name them in keys_env)")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{f.path('keys')}: has duplicates")
    header = header_name(f, "header", default_header)
    probe_f = f.obj("probe", None)
    probe = None
    if probe_f is not None:
        probe = Probe(url_path(probe_f.path("path"), probe_f.str("path", "/v1/models")),
                      probe_f.int("interval_ms", 10_000, min=100, max=3_600_000),
                      probe_f.int("timeout_ms", 3000, min=10, max=60_000))
        probe_f.done()
    eject = f.raw("eject_on", [401, 403, 429])
    if not isinstance(eject, list) or not all(type(s) is int and 400 <= s <= 599 for s in eject):
        raise ConfigError(f"{f.path('eject_on')}: must be a list of error statuses (400-599)")
    prefix = f.str("prefix", "Bearer " if header == "authorization" else "", nonempty=False)
    cfg = KeyPoolConfig(
        keys=keys, fingerprints=tuple(fingerprint(k) for k in keys), header=header,
        prefix=header_value(f, "prefix", prefix),
        selection=f.choice("selection", ("round_robin", "random"), "round_robin"),
        eject_on=frozenset(eject), consecutive_5xx=f.int("consecutive_5xx", 3, min=0, max=1000),
        cooldown_ms=f.int("cooldown_ms", 30_000, min=1, max=86_400_000),
        when_all_out=f.choice("when_all_out", ("fail", "soonest"), "fail"),
        forward_client_credential=f.bool("forward_client_credential", False), probe=probe,
    )
    f.done()
    return cfg
