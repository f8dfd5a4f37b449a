"""Shared data (across all VMs of a plugin on one host) with compare-and-swap updates."""

from __future__ import annotations

from collections.abc import Callable

from . import hostcalls as hc
from .abi import Result

_NOT_FOUND = int(Result.NOT_FOUND)
_CAS_MISMATCH = int(Result.CAS_MISMATCH)


def get(key: str) -> tuple[bytes | None, int]:
    return hc.get_shared_data(key)


def set(key: str, value: bytes, cas: int = 0) -> None:
    hc.set_shared_data(key, value, cas)


def update(key: str, fn: Callable[[bytes | None], bytes], retries: int = 32) -> bytes:
    """Apply ``fn`` to the current value and store the result atomically (CAS loop).

    Envoy has no atomic create-if-absent: create the key (e.g. at configure time)
    before workers race to update it.
    """
    k = key.encode()
    h = hc.raw_calls  # direct calls: this often runs on every request
    for _ in range(retries):
        st, value, cas = h.proxy_get_shared_data(k)
        if st not in (0, _NOT_FOUND):
            raise hc._error("proxy_get_shared_data", st)
        new = fn(value)
        st = h.proxy_set_shared_data(k, new, cas or 0)
        if st == 0:
            return new
        if st != _CAS_MISMATCH:
            raise hc._error("proxy_set_shared_data", st)
    raise hc.CasMismatch("proxy_set_shared_data", _CAS_MISMATCH)


class SharedQueue:
    """A named queue; any VM may enqueue, the registering VM's root gets on_queue_ready."""

    def __init__(self, queue_id: int) -> None:
        self.id = queue_id

    @classmethod
    def register(cls, name: str) -> SharedQueue:
        return cls(hc.register_shared_queue(name))

    @classmethod
    def resolve(cls, vm_id: str, name: str) -> SharedQueue | None:
        qid = hc.resolve_shared_queue(vm_id, name)
        return None if qid is None else cls(qid)

    def enqueue(self, data: bytes) -> None:
        hc.enqueue_shared_queue(self.id, data)

    def dequeue(self) -> bytes | None:
        return hc.dequeue_shared_queue(self.id)
