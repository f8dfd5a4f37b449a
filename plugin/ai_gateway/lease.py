"""Leases in shared data: one worker at a time does a periodic job (key probes, metric scrapes).

A lease is ``(owner, until_ms)`` under a shared-data key, taken by compare-and-swap: a VM takes it
when it is free, expired or already its own (renewing it), so the holder keeps it while it keeps
ticking and another VM takes over once the holder stops for longer than the lease's length.
"""

from __future__ import annotations

import os
import struct

from proxywasm import HostError, shared

_LEASE = struct.Struct("<IQ")  # owner token, until (ms)

# Identifies this VM: root context ids repeat across Envoy workers.
VM_TOKEN = int.from_bytes(os.urandom(4), "little") >> 1 | 1


def take_lease(key: str, owner: int, now_ms: int, ttl_ms: int) -> bool:
    """Take or renew the lease under ``key`` until ``now_ms + ttl_ms``; False if another VM holds it."""
    raw, cas = shared.get(key)
    if raw and len(raw) == _LEASE.size:
        holder, until = _LEASE.unpack(raw)
        if until > now_ms and holder != owner:
            return False
    try:
        shared.set(key, _LEASE.pack(owner, now_ms + ttl_ms), cas)
    except HostError:  # another VM took it first (CAS)
        return False
    return True
