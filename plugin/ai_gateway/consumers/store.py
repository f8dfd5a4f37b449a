"""Where the counters and balances live: ``shared`` (Envoy shared data, one Envoy) or ``redis`` (every replica).

Every operation answers through a callback, at once (shared data) or when Redis replies (Higress's Redis
host calls, or webdis over an HTTP callout on stock Envoy); a failed or late store answers ``None``.

* ``admit(ctx, limits, quota, now_s, done)``: read the counters (and the consumer's balance); when every
  counter is below its limit, count the request in the request counters, atomically.
  ``done((values, balance, admitted))``.
* ``charge(ctx, items, quota, tokens, now_s, done)``: add tokens to counters, take them off the balance.
* ``balance(ctx, name, op, n, done)``: the admin API: ``get``, ``set`` or ``add``.
* ``get(ctx, key, done)`` / ``put(ctx, key, value, ttl_s, slots, done)``: byte values with a TTL (the response
  cache); ``get`` answers the value, ``b""`` when there is none, ``None`` when the store failed. ``shared`` keeps
  at most ``slots`` entries (a new entry takes its key's slot: the older one there is evicted); Redis evicts by
  TTL (and its own maxmemory policy).
"""

from __future__ import annotations

import struct

from proxywasm import CalloutResponse, shared
from proxywasm import hostcalls as hc
from proxywasm.resp import ReplyError, command, reply

from .config import Limit, RedisConfig, Store
from .limits import exceeded, window

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Done = Callable[[Any], None]

_REC = struct.Struct("<qq")  # window index, value
_BAL = struct.Struct("<q")
_ENTRY = struct.Struct("<q32s")  # expiry (s), key; then the value
TTL_SLACK_S = 5  # Redis keys outlive their window a little (replicas' clocks differ)


class SharedStore:
    """Envoy shared data: exact across one Envoy's workers (compare-and-swap), separate per replica."""

    prefix = "aigw.c.rl."  # + a limit's counter

    @staticmethod
    def _read(key: str, idx: int) -> int:
        raw, _ = hc.get_shared_data(key)
        if raw is None or len(raw) != _REC.size:
            return 0
        got_idx, v = _REC.unpack(raw)
        return v if got_idx == idx else 0

    @staticmethod
    def _add(key: str, idx: int, n: int, below: int = 0) -> bool:
        """Add ``n`` to the counter of window ``idx``; with ``below``, only while it stays under it."""
        ok = [True]

        def fn(raw: bytes | None) -> bytes:
            v = 0
            if raw is not None and len(raw) == _REC.size:
                got_idx, got = _REC.unpack(raw)
                v = got if got_idx == idx else 0
            if below and v >= below:
                ok[0] = False
                return _REC.pack(idx, v)
            return _REC.pack(idx, v + n)

        shared.update(key, fn)
        return ok[0]

    def admit(self, ctx: Any, limits: list[Limit], quota: str | None, now_s: int, done: Done,
              counting: bool = True) -> None:
        keys = [(self.prefix + lim.counter, now_s // lim.window_s) for lim in limits]
        values = [self._read(k, idx) for k, idx in keys]
        bal = self._balance(quota) if quota is not None else None
        admitted = exceeded(limits, values) < 0 and (bal is None or bal > 0)
        if admitted and counting:  # count the request; a worker that took the last slot meanwhile wins
            taken = []
            for (k, idx), lim in zip(keys, limits, strict=True):
                if lim.kind != "requests":
                    continue
                if not self._add(k, idx, 1, lim.amount):
                    admitted = False
                    break
                taken.append((k, idx))
            if not admitted:
                for k, idx in taken:
                    self._add(k, idx, -1)
        done((values, bal, admitted))

    def charge(self, ctx: Any, items: list[tuple[Limit, int]], quota: str | None, tokens: int, now_s: int,
               done: Done) -> None:
        for lim, n in items:
            if n:
                self._add(self.prefix + lim.counter, now_s // lim.window_s, n)
        if quota is not None and tokens:
            shared.update("aigw.c.q." + quota, lambda raw: _BAL.pack(self._unpack_bal(raw) - tokens))
        done(True)

    @staticmethod
    def _unpack_bal(raw: bytes | None) -> int:
        return _BAL.unpack(raw)[0] if raw is not None and len(raw) == _BAL.size else 0

    def _balance(self, name: str) -> int:
        return self._unpack_bal(hc.get_shared_data("aigw.c.q." + name)[0])

    def balance(self, ctx: Any, name: str, op: str, n: int, done: Done) -> None:
        key = "aigw.c.q." + name
        if op == "get":
            done(self._balance(name))
            return
        new = shared.update(key, lambda raw: _BAL.pack(n if op == "set" else self._unpack_bal(raw) + n))
        done(_BAL.unpack(new)[0])

    # -- byte values with a TTL (the response cache) --

    @staticmethod
    def _slot(key: str, slots: int) -> str:
        return f"aigw.v.{int(key[:12], 16) % slots}"

    def get(self, ctx: Any, key: str, done: Done, slots: int = 1) -> None:
        raw, _ = hc.get_shared_data(self._slot(key, slots))
        if raw is None or len(raw) < _ENTRY.size:
            done(b"")
            return
        expires, got = _ENTRY.unpack_from(raw)
        fresh = got == key.encode()[:32] and expires > hc.now_ns() // 1_000_000_000
        done(raw[_ENTRY.size:] if fresh else b"")

    def put(self, ctx: Any, key: str, value: bytes, ttl_s: int, slots: int, done: Done) -> None:
        expires = hc.now_ns() // 1_000_000_000 + ttl_s
        shared.set(self._slot(key, slots), _ENTRY.pack(expires, key.encode()[:32]) + value)
        done(True)


# Redis: one script per decision, so reading, checking and counting are one atomic step for every replica.
# KEYS: the counters, then the balance (when the consumer has a quota). ARGV: the number of counters,
# then per counter its limit, 1 if it counts requests, its TTL.
_ADMIT = """local n = tonumber(ARGV[1])
local out = {1, 0}
for i = 1, n do
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  out[i + 2] = v
  if v >= tonumber(ARGV[3 * i - 1]) then out[1] = 0 end
end
if #KEYS > n then
  out[2] = tonumber(redis.call('GET', KEYS[n + 1]) or '0')
  if out[2] <= 0 then out[1] = 0 end
end
if out[1] == 1 then
  for i = 1, n do
    if ARGV[3 * i] == '1' then
      redis.call('INCR', KEYS[i])
      redis.call('EXPIRE', KEYS[i], ARGV[3 * i + 1])
    end
  end
end
return out"""
# KEYS: counters, then the balance. ARGV: the number of counters, per counter the tokens and TTL, the tokens.
_CHARGE = """local n = tonumber(ARGV[1])
for i = 1, n do
  redis.call('INCRBY', KEYS[i], ARGV[2 * i])
  redis.call('EXPIRE', KEYS[i], ARGV[2 * i + 1])
end
if #KEYS > n then redis.call('DECRBY', KEYS[n + 1], ARGV[2 * n + 2]) end
return 1"""


def _int(r: Any) -> int | None:
    """An integer reply (webdis re-encodes the integers inside arrays as bulk strings)."""
    if isinstance(r, int):
        return r
    return int(r) if isinstance(r, bytes) and r.lstrip(b"-").isdigit() and len(r) < 20 else None


def _webdis_path(args: tuple[str | bytes | int, ...]) -> str:
    """webdis's command form: words separated by '/', each percent-encoded; ``.raw`` asks for RESP."""
    def enc(a: str | bytes | int) -> str:
        b = a if isinstance(a, bytes) else str(a).encode()
        return "".join(chr(c) if c < 128 and (chr(c).isalnum() or c in b"-_~") else f"%{c:02X}" for c in b)

    return "/".join(enc(a) for a in args) + ".raw"


class RedisStore:
    """Counters in Redis, shared by every replica: through Higress's Redis host calls, or webdis on stock Envoy."""

    def __init__(self, cfg: RedisConfig, timeout_ms: int) -> None:
        self.cfg = cfg
        self.timeout_ms = timeout_ms
        self.ready = False

    def _init(self) -> None:
        cfg = self.cfg
        if cfg.transport == "higress" and not self.ready:
            name = cfg.cluster + (f"?db={cfg.database}" if cfg.database else "")
            hc.redis_init(name, cfg.username, cfg.password, self.timeout_ms)
            self.ready = True

    def call(self, ctx: Any, done: Done, *args: str | bytes | int, failed: Any = None) -> None:
        """Run one command; ``done(reply)`` with the decoded reply, or ``failed`` (None) when Redis failed."""
        cfg = self.cfg

        def value(raw: bytes) -> Any:
            try:
                got = reply(raw)
            except ValueError:
                return failed
            return failed if isinstance(got, ReplyError) else got

        try:
            if cfg.transport == "higress":
                self._init()
                ctx.redis_call(cfg.cluster, command(*args), lambda status, raw: done(value(raw) if status == 0
                                                                                     else failed))
                return
            # The command goes in the path of a GET: webdis 0.1.9 (Debian 12) loses many POST bodies (measured:
            # ~70% of bodies between 100 B and 3 KB never got an answer), never a path.
            headers = [(":method", "GET"), (":path", "/" + _webdis_path(args)), (":authority", cfg.authority)]
            if cfg.password:
                import binascii
                cred = binascii.b2a_base64(f"{cfg.username}:{cfg.password}".encode(), newline=False).decode()
                headers.append(("authorization", "Basic " + cred))

            def answered(resp: CalloutResponse) -> None:
                done(value(resp.body) if resp.status == 200 else failed)

            ctx.http_call(cfg.cluster, headers, b"", callback=answered, timeout_ms=self.timeout_ms)
        except hc.HostError:
            self.ready = False  # e.g. the cluster is unknown: init again next time
            done(failed)

    def _key(self, lim: Limit, now_s: int) -> tuple[str, int]:
        idx, left = window(lim, now_s)
        return f"{self.cfg.prefix}rl:{lim.counter}:{idx}", left + TTL_SLACK_S

    def admit(self, ctx: Any, limits: list[Limit], quota: str | None, now_s: int, done: Done,
              counting: bool = True) -> None:
        keys, argv = [], []
        for lim in limits:
            k, ttl = self._key(lim, now_s)
            keys.append(k)
            argv += [lim.amount, 1 if counting and lim.kind == "requests" else 0, ttl]
        if quota is not None:
            keys.append(self.cfg.prefix + "quota:" + quota)

        def got(r: Any) -> None:
            r = [_int(v) for v in r] if isinstance(r, list) else None
            if r is None or len(r) != len(limits) + 2 or None in r:
                done(None)
                return
            done((r[2:], r[1] if quota is not None else None, r[0] == 1))

        self.call(ctx, got, "EVAL", _ADMIT, len(keys), *keys, len(limits), *argv)

    def charge(self, ctx: Any, items: list[tuple[Limit, int]], quota: str | None, tokens: int, now_s: int,
               done: Done) -> None:
        keys, argv = [], []
        for lim, n in items:
            k, ttl = self._key(lim, now_s)
            keys.append(k)
            argv += [n, ttl]
        if quota is not None:
            keys.append(self.cfg.prefix + "quota:" + quota)
        self.call(ctx, lambda r: done(_int(r) == 1), "EVAL", _CHARGE, len(keys), *keys, len(items), *argv, tokens)

    def balance(self, ctx: Any, name: str, op: str, n: int, done: Done) -> None:
        key = self.cfg.prefix + "quota:" + name

        if op == "get":
            self.call(ctx, lambda r: done(_int(r)), "EVAL", "return redis.call('GET', KEYS[1]) or '0'", 1, key)
        elif op == "set":
            self.call(ctx, lambda r: done(n if r == "OK" else None), "SET", key, n)
        else:
            self.call(ctx, lambda r: done(_int(r)), "INCRBY", key, n)

    def get(self, ctx: Any, key: str, done: Done, slots: int = 1) -> None:
        def got(r: Any) -> None:
            done(r if isinstance(r, bytes) else b"" if r is None else None)

        self.call(ctx, got, "GET", self.cfg.prefix + "v:" + key, failed=False)

    def put(self, ctx: Any, key: str, value: bytes, ttl_s: int, slots: int, done: Done) -> None:
        self.call(ctx, lambda r: done(r == "OK"), "SET", self.cfg.prefix + "v:" + key, value, "EX", ttl_s)


_STORES: dict[int, tuple[Store, SharedStore | RedisStore]] = {}


def store_for(cfg: Store) -> SharedStore | RedisStore:
    """This VM's store for a config (Redis clients are set up once per VM)."""
    got = _STORES.get(id(cfg))
    if got is None or got[0] is not cfg:
        assert cfg.backend == "shared" or cfg.redis is not None
        s = SharedStore() if cfg.backend == "shared" else RedisStore(cfg.redis, cfg.timeout_ms)  # type: ignore[arg-type]
        got = _STORES[id(cfg)] = (cfg, s)
    return got[1]
